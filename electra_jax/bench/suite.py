"""The benchmark suite: our step and the PyTorch peer on the same batch in one process, per case;
optimisation variants measured against their baseline; one JSON results file.

    electra-jax bench --suite cpu --out bench/cpu.json
    python -m electra_jax.cli bench --suite gpu --out DIR/gpu.json   # uninstalled checkout

Needs no TensorFlow (accelerator images often lack it). Suites:
  smoke  tiny, 2 timed steps, ours + peer eager (CI runs it: the file must be well formed)
  cpu    tiny and Small at 128 in fp32, dropout on; peers eager and compiled; PRNG and attention variants
  gpu    Small/Base/Large at 128 and 512 in bf16; peers eager and compiled; variants (fused attention,
         fp32, remat, scan)
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "configs")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # e.g. "small@128"
    config: str  # a file in configs/
    batch: int
    seq_len: int
    peers: tuple[str, ...] = ()  # "eager", "compile", "eager-gathered", "compile-gathered"
    overrides: tuple[str, ...] = ()
    # Variants: (label, extra overrides), each timed like the baseline; the ratio is baseline / variant.
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()


_FP32 = ("--config.model.dtype=float32",)
_BF16 = ("--config.model.dtype=bfloat16",)
_PEERS = ("eager", "compile", "eager-gathered", "compile-gathered")
_RNG = (("rng rbg", ("--config.rng_impl=rbg",)), ("rng unsafe_rbg", ("--config.rng_impl=unsafe_rbg",)))
# Fused attention drops attention-probability dropout, so it is compared with the XLA path at rate 0.
_NO_ATTN_DROPOUT = ("--config.model.attention_dropout_rate=0",)
_FUSED = (("attention dropout 0", _NO_ATTN_DROPOUT),
          ("fused attention (dropout 0)", _NO_ATTN_DROPOUT + ("--config.model.attention=fused",)))

SUITES = {
    "smoke": (
        Case("tiny@64", "tiny.py", 16, 64, ("eager",), _FP32),
    ),
    "cpu": (
        Case("tiny@64", "tiny.py", 16, 64, _PEERS, _FP32, _RNG),
        Case("small@128", "small.py", 16, 128, _PEERS, _FP32,
             _RNG + _FUSED + (("dropout off", ("--config.model.dropout_rate=0",) + _NO_ATTN_DROPOUT),
                              ("bfloat16", _BF16), ("scan", ("--config.model.scan_layers=true",)))),
    ),
    "gpu": (
        Case("small@128", "small.py", 128, 128, _PEERS, _BF16,
             _RNG + _FUSED + (("float32", _FP32),)),
        Case("small@512", "small.py", 32, 512, ("compile-gathered",), _BF16),
        Case("base@128", "base.py", 128, 128, ("eager", "compile", "compile-gathered"), _BF16,
             _RNG + _FUSED + (("float32", _FP32),)),
        Case("base@512", "base.py", 32, 512, ("compile-gathered",), _BF16, _FUSED),
        Case("large@128", "large.py", 64, 128, (), _BF16),
        Case("large@512", "large.py", 16, 512, (), _BF16 + ("--config.model.scan_layers=true",),
             (("remat dots", ("--config.model.remat_policy=dots",)),)),
    ),
}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _config(case: Case, extra: tuple[str, ...] = ()):
    from electra_jax.config import load_config

    return load_config(os.path.join(CONFIGS, case.config), [
        f"--config.batch_size={case.batch}", f"--config.data.seq_len={case.seq_len}",
        *case.overrides, *extra])


def _ours(case: Case, label: str, extra: tuple[str, ...], steps: int, warmup: int) -> dict:
    from electra_jax.bench.step import run

    result = run(_config(case, extra), steps=steps, warmup=warmup)
    return {"case": case.name, "impl": "electra-jax", "variant": label, "overrides": list(extra),
            **result}


def _peer(case: Case, mode: str, steps: int, warmup: int) -> dict:
    from electra_jax import config as config_lib
    from electra_jax.bench.peer import time_peer
    from electra_jax.data.synthetic import synthetic_batch

    c = _config(case)
    t = c.tokens
    batch = synthetic_batch(np.random.default_rng(c.seed), c.batch_size, c.data.seq_len,
                            c.model.vocab_size, t.cls_id, t.sep_id, t.pad_id, t.mask_id)
    result = time_peer(config_lib.model_spec(c), config_lib.objective_spec(c), batch,
                       mode=mode.split("-")[0], gather=mode.endswith("gathered"), steps=steps,
                       warmup=warmup, learning_rate=c.optim.learning_rate,
                       weight_decay=c.optim.weight_decay, dtype=c.model.dtype)
    return {"case": case.name, "variant": "baseline", "dtype": c.model.dtype,
            "batch_size": c.batch_size, "seq_len": c.data.seq_len, "steps": steps, **result}


def _attempt(fn, *args) -> dict:
    """One measurement; a failure (out of memory, a missing compiler) is recorded, not fatal."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - recorded in the results, the suite goes on
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]}
    finally:
        gc.collect()


def ratios(results: list[dict]) -> list[dict]:
    """Ours (baseline) / each peer, and baseline / each variant, in sequences per second."""
    out = []
    for case in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == case and "error" not in r]
        base = next((r for r in rows if r["impl"] == "electra-jax" and r["variant"] == "baseline"), None)
        if base is None:
            continue
        for r in rows:
            if r is base:
                continue
            if r["impl"] == "electra-jax":
                out.append({"case": case, "what": f"{r['variant']} / baseline",
                            "speedup": r["sequences_per_s"] / base["sequences_per_s"]})
            else:
                out.append({"case": case, "what": f"electra-jax / {r['impl']}",
                            "speedup": base["sequences_per_s"] / r["sequences_per_s"]})
    return out


def run_suite(name: str, out: str, steps: int | None = None, warmup: int = 2,
              cases: list[str] | None = None, peers: bool = True, variants: bool = True,
              command: str | None = None) -> dict:
    """Run every case of suite `name`; the results file is rewritten after each measurement, so a run
    cut short (a GPU window closing) keeps what it measured."""
    import jax

    if name not in SUITES:
        raise SystemExit(f"--suite {name!r}: one of {', '.join(SUITES)}")
    steps = steps or (2 if name == "smoke" else 10)
    device = jax.devices()[0]
    record = {
        "suite": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.device_kind, "platform": device.platform, "num_devices": jax.device_count(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "versions": versions(),
        "command": command or " ".join(sys.argv),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "steps": steps, "warmup": warmup,
        "results": [], "ratios": [],
    }

    def save():
        record["ratios"] = ratios(record["results"])
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(out + ".tmp", out)

    for case in SUITES[name]:
        if cases and case.name not in cases:
            continue
        jobs = [("ours", "baseline", ())]
        jobs += [("peer", mode, ()) for mode in case.peers if peers]
        jobs += [("ours", label, extra) for label, extra in case.variants if variants]
        for kind, label, extra in jobs:
            t0 = time.perf_counter()
            if kind == "ours":
                r = _attempt(_ours, case, label, extra, steps, warmup)
            else:
                r = _attempt(_peer, case, label, steps, warmup)
            r.setdefault("case", case.name)
            r.setdefault("impl", "electra-jax" if kind == "ours" else f"pytorch-{label}")
            r.setdefault("variant", label if kind == "ours" else "baseline")
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            record["results"].append(r)
            print(summary_line(r), flush=True)
            save()
    save()
    for q in record["ratios"]:
        print(f"{q['case']:>10}  {q['what']:<42} {q['speedup']:.2f}x")
    return record


def summary_line(r: dict) -> str:
    head = f"{r['case']:>10}  {r['impl']:<30} {r['variant']:<28}"
    if "error" in r:
        return f"{head} FAILED {r['error']}"
    mfu = f"  MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
    compile_s = r.get("compile_s", r.get("first_step_s"))
    return (f"{head} {1e3 * r['step_s']:9.1f} ms  {r['sequences_per_s']:8.1f} seq/s  "
            f"compile {compile_s:.1f} s{mfu}")
