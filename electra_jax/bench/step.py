"""Our jitted, sharded train step as a benchmark Runner; `run` times it alone (`electra-jax bench
--config`), the suite times it beside the PyTorch peer.

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
from electra_jax.bench.timing import Runner, measure, summarize_times
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


def config_batch(c: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The synthetic batch every benchmark of config `c` uses (ours and the peer time the same one)."""
    t = c.tokens
    return synthetic_batch(np.random.default_rng(c.seed), c.batch_size, c.data.seq_len,
                           c.model.vocab_size, t.cls_id, t.sep_id, t.pad_id, t.mask_id)


def _compiled_bytes(compiled) -> int | None:
    """XLA's own accounting of a compiled step (arguments + outputs + temporaries - donated aliases);
    available on every backend, CPU included, so memory can be estimated without the device."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def prepare(config: ml_collections.ConfigDict, peak: float | None = None,
            checkpoint_dir: str | None = None) -> tuple[dict, Runner | None]:
    """Compile the sharded step from abstract shapes: (a record of what was compiled, with compile time
    and XLA's memory estimate; a Runner). Nothing is allocated until the Runner's first step, so a
    caller that only wants the record (compile-only benchmarks) never holds a train state."""
    s = setup(config)
    _, train_rng = s.rngs()
    c = config
    batch = jax.device_put(config_batch(c), s.batch_sharding)

    t0 = time.perf_counter()
    compiled = s.step.lower(s.abstract_state(), batch, train_rng).compile()
    compile_s = time.perf_counter() - t0
    device = jax.devices()[0]
    n_dev = s.mesh.size
    record = {
        "impl": "electra-jax",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.device_kind,
        "platform": device.platform,
        "num_devices": n_dev,
        "mesh": dict(s.mesh.shape),
        "jax": jax.__version__,
        "dtype": c.model.dtype,
        "rng_impl": s.rng_impl,
        "dropout": c.model.dropout_rate,
        "attention": c.model.attention,
        "scan_layers": c.model.scan_layers,
        "remat_policy": c.model.remat_policy,
        "batch_size": c.batch_size,
        "seq_len": c.data.seq_len,
        "hidden_size": c.model.hidden_size,
        "num_layers": c.model.num_layers,
        "compile_s": round(compile_s, 3),
        "compiled_memory_bytes": _compiled_bytes(compiled),
    }
    live = {}

    def step():
        if "state" not in live:
            live["state"] = s.init(s.rngs()[0])
        live["state"], live["metrics"] = compiled(live["state"], batch, train_rng)
        jax.block_until_ready(live["metrics"])

    def finish(times: list[float]) -> dict:
        result = {**record, "steps": len(times), **summarize_times(times, c.batch_size, c.data.seq_len)}
        spec = config_lib.model_spec(c)
        flops = train_flops_per_sequence(spec, c.data.seq_len, config_lib.max_predictions_per_seq(c))
        tflops = flops * c.batch_size / result["step_s"] / n_dev / 1e12
        device_peak = peak or peak_tflops(device.device_kind)
        result.update({
            "model_tflops_per_s_per_device": tflops,
            "mfu": tflops / device_peak if device_peak else None,
            "peak_memory_bytes": (device.memory_stats() or {}).get("peak_bytes_in_use"),
            "final_loss": float(live["metrics"]["loss"]),
        })
        if checkpoint_dir:
            result.update(time_checkpoint(live["state"], checkpoint_dir))
        live.clear()  # free the state: the next runner may need the memory
        return result

    return record, Runner(step, finish, compiled)


def run(config: ml_collections.ConfigDict, steps: int = 10, warmup: int = 2,
        peak: float | None = None, checkpoint_dir: str | None = None, profile_dir: str | None = None
        ) -> dict:
    """Compile, then time `steps` steps after `warmup` (steps=0: compile only); with `profile_dir`,
    then trace `steps` more and add where their time went (`bench.profile`)."""
    record, runner = prepare(config, peak, checkpoint_dir)
    if steps == 0:
        return {**record, "steps": 0}
    if profile_dir is None:
        return measure([runner], steps, warmup)[0]
    from electra_jax.bench.profile import profile

    breakdown = profile(runner, profile_dir, steps, warmup)
    return {**measure([runner], steps, 0)[0], "profile": breakdown}


def report(result: dict) -> str:
    if "profile" in result:
        from electra_jax.bench.profile import report as profile_report

        return report({k: v for k, v in result.items() if k != "profile"}) + "\n" + profile_report(
            result["profile"])
    compiled = result["compiled_memory_bytes"]
    head = (f"{result['device']} x{result['num_devices']}  batch {result['batch_size']} x seq "
            f"{result['seq_len']}  {result['dtype']}  rng {result['rng_impl']}\n"
            f"  compile {result['compile_s']:.1f} s   compiled step needs "
            f"{'n/a' if compiled is None else f'{compiled / 2**30:.3f} GiB'}")
    if "step_s" not in result:
        return head
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (no peak for this device)"
    mem = result["peak_memory_bytes"]
    return (head + f"   step {1e3 * result['step_s']:.1f} ms   {result['steps_per_s']:.2f} steps/s   "
            f"{result['sequences_per_s']:.1f} seq/s   {result['tokens_per_s']:.0f} tokens/s\n"
            f"  {result['model_tflops_per_s_per_device']:.3f} model TFLOP/s per device   MFU {mfu}   "
            f"peak memory {'n/a' if mem is None else f'{mem / 2**30:.2f} GiB'}"
            + (f"\n  checkpoint {result['checkpoint_bytes'] / 2**20:.0f} MiB: training held "
               f"{result['checkpoint_blocking_s']:.2f} s, committed after {result['checkpoint_total_s']:.2f} s"
               if "checkpoint_bytes" in result else ""))


def append_result(result: dict, path: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")
