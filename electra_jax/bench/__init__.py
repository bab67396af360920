"""Benchmarks: our jitted step (`step`), the PyTorch peer (`peer`), the suite that runs both in one
process and records JSON (`suite`), and the BENCHMARKS.md table (`table`).

Nothing here imports TensorFlow, so the suite runs on accelerator images that lack it."""
