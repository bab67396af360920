"""Random but well-formed pretraining batches, for benchmarks and tests that need no text."""

from __future__ import annotations

import numpy as np


def synthetic_batch(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int,
                    cls_id: int, sep_id: int, pad_id: int = 0, mask_id: int = -1,
                    first_regular_id: int = 5, min_len: int | None = None) -> dict[str, np.ndarray]:
    """`[CLS] A [SEP] B [SEP] [PAD]...` rows of random lengths, int32, with input_mask and segment_ids."""
    min_len = min_len or max(4, seq_len // 2)
    ids = np.full((batch_size, seq_len), pad_id, np.int32)
    mask = np.zeros_like(ids)
    seg = np.zeros_like(ids)
    for b in range(batch_size):
        n = int(rng.integers(min_len, seq_len + 1))
        split = int(rng.integers(2, n - 1))
        ids[b, :n] = rng.integers(first_regular_id, vocab_size, n)
        ids[b, 0], ids[b, split], ids[b, n - 1] = cls_id, sep_id, sep_id
        mask[b, :n] = 1
        seg[b, split + 1:n] = 1
    ids[(mask == 1) & np.isin(ids, [pad_id, mask_id])] = first_regular_id  # no stray [PAD]/[MASK] as text
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg}
