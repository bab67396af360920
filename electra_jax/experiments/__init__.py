"""Recorded experiments: each writes its data, numbers and plots into one output directory."""
