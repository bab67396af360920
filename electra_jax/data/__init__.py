"""Input: synthetic batches now; tokenizer, example builder and tf.data reader arrive with the pipeline."""
