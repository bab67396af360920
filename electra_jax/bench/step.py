"""Time the jitted, sharded train step after warm-up; print and append a JSON line of results.

Synthetic batches (same shape as real ones) so the number is the device's, not the input pipeline's.
"""

from __future__ import annotations

import datetime
import json
import time

import jax
import ml_collections
import numpy as np

from electra_jax import config as config_lib
from electra_jax.data.synthetic import synthetic_batch
from electra_jax.flops import peak_tflops, train_flops_per_sequence
from electra_jax.train import setup


def time_checkpoint(state, directory: str) -> dict:
    """Seconds a training loop is held by an async orbax save (device -> host copy) and until the save
    is committed, for the state just trained."""
    import shutil

    from electra_jax.checkpoint import Checkpoints

    shutil.rmtree(directory, ignore_errors=True)
    checkpoints = Checkpoints(directory, keep=1, async_save=True)
    t0 = time.perf_counter()
    checkpoints.save(1, state, {"bench": True})
    blocking = time.perf_counter() - t0
    checkpoints.wait()
    total = time.perf_counter() - t0
    checkpoints.close()
    return {"checkpoint_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)),
            "checkpoint_blocking_s": round(blocking, 3), "checkpoint_total_s": round(total, 3)}


def run(config: ml_collections.ConfigDict, steps: int = 10, warmup: int = 2,
        peak: float | None = None, checkpoint_dir: str | None = None) -> dict:
    s = setup(config)
    init_rng, train_rng = s.rngs()
    state = s.init(init_rng)
    c = config
    batch = synthetic_batch(np.random.default_rng(c.seed), c.batch_size, c.data.seq_len,
                            c.model.vocab_size, c.tokens.cls_id, c.tokens.sep_id, c.tokens.pad_id,
                            c.tokens.mask_id)
    batch = jax.device_put(batch, s.batch_sharding)

    t0 = time.perf_counter()
    compiled = s.step.lower(state, batch, train_rng).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, _ = compiled(state, batch, train_rng)
    jax.block_until_ready(state)
    times = []  # each step waited for: the median resists a noisy neighbour on a shared machine
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, train_rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))

    device = jax.devices()[0]
    n_dev = s.mesh.size
    spec = config_lib.model_spec(c)
    flops = train_flops_per_sequence(spec, c.data.seq_len, config_lib.max_predictions_per_seq(c))
    tflops_per_device = flops * c.batch_size / step_s / n_dev / 1e12
    peak = peak or peak_tflops(device.device_kind)
    stats = device.memory_stats() or {}
    # XLA's own accounting of the compiled step; available on every backend, CPU included.
    analysis = compiled.memory_analysis()
    compiled_bytes = None if analysis is None else (
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    saved = time_checkpoint(state, checkpoint_dir) if checkpoint_dir else {}
    return {
        **saved,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.device_kind,
        "platform": device.platform,
        "num_devices": n_dev,
        "mesh": dict(s.mesh.shape),
        "jax": jax.__version__,
        "dtype": c.model.dtype,
        "rng_impl": c.rng_impl,
        "dropout": c.model.dropout_rate,
        "batch_size": c.batch_size,
        "seq_len": c.data.seq_len,
        "hidden_size": c.model.hidden_size,
        "num_layers": c.model.num_layers,
        "steps": steps,
        "compile_s": round(compile_s, 3),
        "step_s": step_s,
        "step_s_mean": float(np.mean(times)),
        "step_s_all": [round(t, 5) for t in times],
        "steps_per_s": 1 / step_s,
        "sequences_per_s": c.batch_size / step_s,
        "tokens_per_s": c.batch_size * c.data.seq_len / step_s,
        "model_tflops_per_s_per_device": tflops_per_device,
        "mfu": tflops_per_device / peak if peak else None,
        "peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "compiled_memory_bytes": compiled_bytes,
        "final_loss": float(metrics["loss"]),
    }


def report(result: dict) -> str:
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no peak for this device)"
    mem = result["peak_memory_bytes"]
    compiled = result["compiled_memory_bytes"]
    return (f"{result['device']} x{result['num_devices']}  batch {result['batch_size']} x seq "
            f"{result['seq_len']}  {result['dtype']}  rng {result['rng_impl']}\n"
            f"  compile {result['compile_s']:.1f} s   step {1e3 * result['step_s']:.1f} ms   "
            f"{result['steps_per_s']:.2f} steps/s   {result['sequences_per_s']:.1f} seq/s   "
            f"{result['tokens_per_s']:.0f} tokens/s\n"
            f"  {result['model_tflops_per_s_per_device']:.3f} model TFLOP/s per device   MFU {mfu}   "
            f"peak memory {'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'}   "
            f"compiled step needs {'n/a' if compiled is None else f'{compiled / 2**30:.3f} GiB'}"
            + (f"\n  checkpoint {result['checkpoint_bytes'] / 2**20:.0f} MiB: training held "
               f"{result['checkpoint_blocking_s']:.2f} s, committed after {result['checkpoint_total_s']:.2f} s"
               if "checkpoint_bytes" in result else ""))


def append_result(result: dict, path: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")
