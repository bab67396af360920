"""Input: tokenizer, example builder, tf.data reader, and the shipped sample corpus."""

import os

# King James Bible, public domain; see corpus/README.md.
SAMPLE_CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "kjv.txt.gz")
# A 2,048-token WordPiece vocabulary trained on it (`electra-jax tokenizer --vocab-size 2048`), the
# size configs/tiny.py expects, so the demo needs no tokenizer step.
SAMPLE_TOKENIZER = os.path.join(os.path.dirname(__file__), "corpus", "tokenizer")
