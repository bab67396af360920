"""A CPU-sized ELECTRA for tests and the demo: 2 x 64, 2 heads, embeddings 32, generator 1/2, seq 64.
Special ids are those of a tokenizer trained by `electra-jax tokenizer` ([PAD]=0 [UNK]=1 [CLS]=2
[SEP]=3 [MASK]=4)."""

from electra_jax.config import default_config


def get_config():
    c = default_config()
    c.model.update(vocab_size=2048, embedding_size=32, hidden_size=64, num_layers=2, num_heads=2,
                   intermediate_size=256, max_position_embeddings=128, generator_hidden_fraction=0.5)
    c.model.dtype = "float32"
    c.tokens.update(pad_id=0, cls_id=2, sep_id=3, mask_id=4)
    c.data.seq_len = 64
    c.batch_size = 16
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 20
    c.num_train_steps = 1000
    c.train.update(log_every=50, eval_every=250, eval_batches=20, save_every=500)
    return c
