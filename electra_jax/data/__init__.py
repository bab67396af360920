"""Input: tokenizer, example builder, tf.data reader, and the shipped sample corpus."""

import os

# King James Bible, public domain; see corpus/README.md.
SAMPLE_CORPUS = os.path.join(os.path.dirname(__file__), "corpus", "kjv.txt.gz")
