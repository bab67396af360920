"""Model FLOPs for MFU: 6 x matmul parameters per token, the attention term 12 L S H (bidirectional, not
halved), and the generator's vocabulary projection only at the N masked slots. Embedding lookups,
LayerNorms, softmaxes and the optimizer are not counted, as in MaxText/PaLM-style MFU."""

from __future__ import annotations

from electra_jax.config import EncoderSpec, ModelSpec

# Dense bf16 peak TFLOP/s per chip, matched against `device.device_kind` (first match wins).
PEAK_TFLOPS = (
    ("TPU v6", 918.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("TPU v3", 123.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("B200", 2250.0),
    ("L4", 121.0),
)


def peak_tflops(device_kind: str) -> float | None:
    for name, peak in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def _encoder(enc: EncoderSpec, embedding_size: int, seq_len: int) -> float:
    h, i, layers = enc.hidden_size, enc.intermediate_size, enc.num_layers
    per_token = 6 * layers * (4 * h * h + 2 * h * i) + 12 * layers * seq_len * h
    if embedding_size != h:
        per_token += 6 * embedding_size * h
    return per_token * seq_len


def train_flops_per_sequence(spec: ModelSpec, seq_len: int, num_predictions: int) -> float:
    """Forward + backward FLOPs of one pretraining example (generator + discriminator; with the "mlm"
    objective the full-size masked LM alone; with a uniform generator the discriminator alone)."""
    d, g, e, v = spec.discriminator, spec.generator, spec.embedding_size, spec.vocab_size
    # A uniform generator runs nothing: its logits are constants.
    gen = 0 if spec.uniform_generator else _encoder(g, e, seq_len) + num_predictions * 6 * (g.hidden_size * e + e * v)
    if spec.objective == "mlm":
        return float(gen)
    disc = _encoder(d, e, seq_len) + seq_len * 6 * (d.hidden_size * d.hidden_size + d.hidden_size)
    return float(disc + gen)
