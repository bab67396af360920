"""Timing shared by our step and the PyTorch peer: a `Runner` is one compiled training step, ready.

Several runners timed together take turns in short blocks, so a slow minute on a shared machine slows
all of them alike and their ratios stay fair; each runner reports the median of its own steps.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass
class Runner:
    step: Callable[[], None]  # one training step, waited for
    finish: Callable[[list[float]], dict]  # its step times (s) -> the result record
    compiled: Any = None  # the XLA executable, where there is one (ours), for profiles


def summarize_times(times: list[float], batch_size: int, seq_len: int) -> dict:
    step_s = float(np.median(times))
    return {
        "step_s": step_s,
        "step_s_mean": float(np.mean(times)),
        "step_s_all": [round(t, 5) for t in times],
        "steps_per_s": 1 / step_s,
        "sequences_per_s": batch_size / step_s,
        "tokens_per_s": batch_size * seq_len / step_s,
    }


def measure(runners: list[Runner], steps: int, warmup: int, block: int = 1) -> list[dict]:
    """Warm every runner up, then take turns: in each round every runner runs one untimed step (it
    absorbs the previous runner's leftovers: threads still spinning, caches) and then `block` timed
    steps, until each has `steps` timed steps. One runner alone: `steps` timed steps, no extra ones."""
    for runner in runners:
        for _ in range(warmup):
            runner.step()
    times = [[] for _ in runners]
    while len(times[0]) < steps:
        for runner, own in zip(runners, times):
            if len(runners) > 1:
                runner.step()
            for _ in range(min(block, steps - len(own))):
                t0 = time.perf_counter()
                runner.step()
                own.append(time.perf_counter() - t0)
    return [runner.finish(own) for runner, own in zip(runners, times)]
