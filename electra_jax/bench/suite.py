"""The benchmark suite: our step and the PyTorch peer on the same batch in one process, per case;
optimisation variants measured against their baseline; one JSON results file.

    electra-jax bench --suite cpu --out bench/cpu.json
    python -m electra_jax.cli bench --suite gpu --out DIR/gpu.json   # uninstalled checkout

Needs no TensorFlow (accelerator images often lack it). Suites:
  smoke  tiny, 2 timed steps, ours + peer eager (CI runs it: the file must be well formed)
  cpu    tiny and Small at 128 in fp32, dropout on; peers eager and compiled; PRNG and attention variants
  gpu    Small/Base/Large at 128 and 512 in bf16; peers eager and compiled; variants (fused attention,
         fp32, remat, scan)
  memory compile only (any backend): XLA's memory estimate at two batch sizes per model and length,
         so the largest batch per device follows; remat for Large at 512; Large compile time
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from electra_jax.bench.timing import measure

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
    compile_only: bool = False  # compile time and XLA's memory estimate, nothing run


def _memory_cases():
    """Compile-only, one device: XLA's memory for two batch sizes per model and length (a line through
    them gives the largest batch that fits a given device), remat policies for Large at 512, and the
    compile time of Large with and without nn.scan."""
    remat = tuple((f"remat {p}", (f"--config.model.remat_policy={p}",)) for p in ("dots", "full"))
    cases = []
    for model, batches in (("small", (8, 32)), ("base", (4, 16)), ("large", (2, 8))):
        for seq in (128, 512):
            for b in batches:
                cases.append(Case(f"{model}@{seq} b{b}", f"{model}.py", b, seq, (),
                                  _BF16 + ("--config.model.scan_layers=true",),
                                  remat if (model, seq) == ("large", 512) else (), compile_only=True))
    cases.append(Case("large@128 b2 unrolled", "large.py", 2, 128, (), _BF16, compile_only=True))
    return tuple(cases)


_FP32 = ("--config.model.dtype=float32",)
_BF16 = ("--config.model.dtype=bfloat16",)
_PEERS = ("eager", "compile", "eager-gathered", "compile-gathered")
_RNG = (("rng rbg", ("--config.rng_impl=rbg",)), ("rng unsafe_rbg", ("--config.rng_impl=unsafe_rbg",)))
# Fused attention drops attention-probability dropout, so it is compared with the XLA path at rate 0.
_NO_ATTN_DROPOUT = ("--config.model.attention_dropout_rate=0",)
# The original's sampler, against our default inverse CDF (a ratio below 1: the default is faster).
_GUMBEL = (("Gumbel sampler", ("--config.objective.sampler=gumbel",)),)
_FUSED = (("attention dropout 0", _NO_ATTN_DROPOUT),
          ("fused attention (dropout 0)", _NO_ATTN_DROPOUT + ("--config.model.attention=fused",)))

SUITES = {
    "smoke": (
        Case("tiny@64", "tiny.py", 16, 64, ("eager",), _FP32),
    ),
    "cpu": (
        Case("tiny@64", "tiny.py", 16, 64, _PEERS, _FP32, _RNG),
        Case("small@128", "small.py", 16, 128, _PEERS, _FP32,
             _GUMBEL + _FUSED + (("dropout off", ("--config.model.dropout_rate=0",) + _NO_ATTN_DROPOUT),
                                 ("bfloat16", _BF16))),
    ),
    # Sized for about 6 minutes on one H100 (torch.compile dominates); peers where the targets need them.
    "gpu": (
        Case("small@128", "small.py", 128, 128, ("eager", "compile", "compile-gathered"), _BF16,
             _FUSED + (("float32", _FP32),)),
        Case("small@512", "small.py", 32, 512, (), _BF16),
        Case("base@128", "base.py", 128, 128, ("eager", "compile", "compile-gathered"), _BF16,
             _GUMBEL + _FUSED + _RNG),
        Case("base@512", "base.py", 32, 512, ("compile-gathered",), _BF16, _FUSED),
        Case("large@128", "large.py", 64, 128, (), _BF16 + ("--config.model.scan_layers=true",)),
        Case("large@512", "large.py", 16, 512, (), _BF16 + ("--config.model.scan_layers=true",),
             (("remat dots", ("--config.model.remat_policy=dots",)),)),
    ),
    "memory": _memory_cases(),
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


def _ours(case: Case, label: str, extra: tuple[str, ...]):
    from electra_jax.bench.step import prepare

    record, runner = prepare(_config(case, extra))
    return {"overrides": list(extra), **record}, (None if case.compile_only else runner)


def _peer(case: Case, mode: str):
    from electra_jax import config as config_lib
    from electra_jax.bench.peer import prepare_peer
    from electra_jax.bench.step import config_batch

    c = _config(case)
    return prepare_peer(config_lib.model_spec(c), config_lib.objective_spec(c), config_batch(c),
                        mode=mode.split("-")[0], gather=mode.endswith("gathered"),
                        learning_rate=c.optim.learning_rate, weight_decay=c.optim.weight_decay,
                        dtype=c.model.dtype)


def _error(e: Exception) -> dict:
    """A failed measurement (out of memory, a missing compiler) is recorded; the suite goes on."""
    traceback.print_exc()
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]}


def _timed(runners: list[tuple[dict, object]], steps: int, warmup: int) -> list[dict]:
    """Time runners together (each takes its steps in turn); a failure is recorded for all."""
    try:
        results = measure([runner for _, runner in runners], steps, warmup, block=2)
    except Exception as e:  # noqa: BLE001
        results = [_error(e)] * len(runners)
    gc.collect()
    return [{**labels, **result} for (labels, _), result in zip(runners, results)]


def ratios(results: list[dict]) -> list[dict]:
    """Ours (baseline) / each peer, and baseline / each variant, in sequences per second."""
    out = []
    for case in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == case and "sequences_per_s" in r]
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


def largest_batches(results: list[dict], memory_gib: float = 80.0) -> list[dict]:
    """From compile-only results at two batch sizes: XLA's memory as fixed + per-sequence bytes, and
    the largest per-device batch within `memory_gib` (a line through two points: an estimate)."""
    groups = {}
    for r in results:
        if r.get("compiled_memory_bytes") and "step_s" not in r:
            key = (r["case"].split(" ")[0], r["variant"])
            groups.setdefault(key, {})[r["batch_size"]] = r["compiled_memory_bytes"]
    out = []
    for (case, variant), points in groups.items():
        if len(points) < 2:
            continue
        (b1, m1), (b2, m2) = sorted(points.items())[:2]
        per_seq = (m2 - m1) / (b2 - b1)
        fixed = m1 - per_seq * b1
        out.append({"case": case, "variant": variant, "fixed_gib": fixed / 2**30,
                    "per_sequence_gib": per_seq / 2**30, "memory_gib": memory_gib,
                    "largest_batch": int((memory_gib * 2**30 - fixed) // per_seq) if per_seq > 0 else None})
    return out


def _write(record: dict, out: str) -> None:
    record["ratios"] = ratios(record["results"])
    record["largest_batch"] = largest_batches(record["results"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(out + ".tmp", out)


def _print_summary(record: dict) -> None:
    for q in record["ratios"]:
        print(f"{q['case']:>10}  {q['what']:<42} {q['speedup']:.2f}x")
    for q in record["largest_batch"]:
        print(f"{q['case']:>10}  {q['variant']:<14} {q['fixed_gib']:.2f} GiB + {q['per_sequence_gib']:.3f} "
              f"GiB/sequence: largest batch in {q['memory_gib']:.0f} GiB = {q['largest_batch']}")


def _job_groups(name: str, cases, peers: bool, variants: bool, only: str | None, interleave: bool):
    """The suite's measurements as (case, "ours" | "peer", label, overrides), in groups timed together.
    Interleaved (CPU): one group per case. Otherwise one measurement at a time, ordered so that a run cut
    short by its budget has the most important numbers: every case's own step first, then the PyTorch
    peers, then the variants."""
    tiers = [[], [], []]
    for case in SUITES[name]:
        if cases and case.name not in cases:
            continue
        jobs = [[(case, "ours", "baseline", ())],
                [(case, "peer", mode, ()) for mode in case.peers if peers],
                [(case, "ours", label, extra) for label, extra in case.variants if variants]]
        if only:
            jobs = [[j for j in tier if (j[1] == "ours") == (only == "ours")] for tier in jobs]
        if interleave:
            yield [j for tier in jobs for j in tier]
        else:
            for all_cases, tier in zip(tiers, jobs):
                all_cases += tier
    if not interleave:
        for tier in tiers:
            for job in tier:
                yield [job]


def run_suite(name: str, out: str, steps: int | None = None, warmup: int = 2,
              cases: list[str] | None = None, peers: bool = True, variants: bool = True,
              command: str | None = None, interleave: bool | None = None, only: str | None = None,
              budget_s: float | None = None) -> dict:
    """Run every case of suite `name`; the results file is rewritten after each measurement, so a run
    cut short (a GPU window closing) keeps what it measured. `only`: "ours" or "peers". `budget_s`:
    start no measurement after that many seconds; those left are listed under "skipped"."""
    import jax

    deadline = None if budget_s is None else time.monotonic() + budget_s

    if name not in SUITES:
        raise SystemExit(f"--suite {name!r}: one of {', '.join(SUITES)}")
    steps = steps or (2 if name == "smoke" else 10)
    device = jax.devices()[0]
    # On a CPU, runners share a machine whose speed drifts: interleave them. On an accelerator each
    # runner runs alone so that its memory is free for the next (JAX and torch share the device).
    interleave = device.platform == "cpu" if interleave is None else interleave
    record = {
        "suite": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.device_kind, "platform": device.platform, "num_devices": jax.device_count(),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "versions": versions(),
        "command": command or " ".join(sys.argv),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "steps": steps, "warmup": warmup, "interleaved": interleave,
        "results": [], "ratios": [], "largest_batch": [], "skipped": [],
    }
    if only is None and peers and device.platform == "cpu":
        # Each framework in a process of its own, ours first: once torch has run in a process, the
        # XLA:CPU step there is ~20% slower (measured), which would flatter the peer.
        record["separate_processes"] = True
        for part in ("ours", "peers"):
            part_out = f"{out}.{part}"
            subprocess.run([sys.executable, "-m", "electra_jax.cli", "bench", "--suite", name, "--out",
                            part_out, "--only", part, "--steps", str(steps), "--warmup", str(warmup),
                            *(["--cases", *cases] if cases else []),
                            *([] if variants else ["--no-variants"]),
                            *([] if budget_s is None else ["--budget-s", str(max(0.0, deadline - time.monotonic()))])],
                           check=True)
            with open(part_out) as f:
                part_record = json.load(f)
            record["results"] += part_record["results"]
            record["skipped"] += part_record["skipped"]
            os.remove(part_out)
        _write(record, out)
        _print_summary(record)
        return record

    def add(result: dict):
        record["results"].append(result)
        print(summary_line(result), flush=True)
        _write(record, out)

    for group in _job_groups(name, cases, peers, variants, only, interleave):
        interleaved = []  # (labels, runner)
        for case, kind, label, extra in group:
            labels = {"case": case.name, "variant": label if kind == "ours" else "baseline",
                      "impl": "electra-jax" if kind == "ours" else f"pytorch-{label}"}
            if deadline is not None and time.monotonic() > deadline:
                record["skipped"].append(labels)
                continue
            try:
                rec, runner = _ours(case, label, extra) if kind == "ours" else _peer(case, label)
            except Exception as e:  # noqa: BLE001
                rec, runner = _error(e), None
            if runner is None:  # compile only, or it failed to build
                add({**labels, **rec})
            elif interleave:
                interleaved.append((labels, runner))
            else:
                for result in _timed([(labels, runner)], steps, warmup):
                    add(result)
        for result in _timed(interleaved, steps, warmup) if interleaved else ():
            add(result)
    if record["skipped"]:
        print(f"skipped (over the {budget_s:.0f} s budget): "
              + ", ".join(f"{r['case']} {r['impl']} {r['variant']}" for r in record["skipped"]), flush=True)
    _write(record, out)
    _print_summary(record)
    return record


def summary_line(r: dict) -> str:
    head = f"{r['case']:>10}  {r['impl']:<30} {r['variant']:<28}"
    if "error" in r:
        return f"{head} FAILED {r['error']}"
    mfu = f"  MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
    compile_s = r.get("compile_s", r.get("first_step_s"))
    if "step_s" not in r:  # compile only
        return f"{head} compile {compile_s:.1f} s  XLA memory {r['compiled_memory_bytes'] / 2**30:.2f} GiB"
    return (f"{head} {1e3 * r['step_s']:9.1f} ms  {r['sequences_per_s']:8.1f} seq/s  "
            f"compile {compile_s:.1f} s{mfu}")
