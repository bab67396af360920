"""Where the step's time goes: trace a few steps with jax.profiler and add up each compiled op's time
by what it does, using the names XLA keeps from the model (module paths, the objective's named scopes).

    electra-jax bench --config configs/small.py --profile /tmp/trace --steps 5

On an accelerator only the device's ops are counted; on a CPU, the ops on all of XLA's threads (so the
total can exceed the wall time: that ratio is how many cores the step keeps busy). The trace stays in
the directory for TensorBoard's profile plugin or XProf.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import time

import jax

# (category, pattern searched in the op's JAX name); the first match wins, so the order matters:
# random bits drawn for dropout count as random bits, the matmuls of attention as matmuls. Scopes
# appear as "masking/..." or, under autodiff, "jvp(masking)/...".
CATEGORIES = tuple((name, re.compile(pattern)) for name, pattern in (
    ("random bits", r"_uniform|_bernoulli|threefry|random_bits|rng_bit_generator"),
    ("optimizer", r"\boptimizer\b"),
    ("matmul", r"dot_general"),
    ("dropout (apply)", r"Dropout"),
    ("layer norm", r"layer_norm"),
    ("attention softmax and mask", r"\battention/"),
    ("gelu", r"erf|gelu|tanh"),
    ("sampling", r"\bsampling\b"),
    ("masking", r"\bmasking\b"),
    ("losses", r"\b(mlm_loss|disc_loss)\b"),
))
PARTS = tuple((name, re.compile(pattern)) for name, pattern in (
    ("generator", r"generator_logits"), ("discriminator", r"discriminator_logits"),
    ("optimizer", r"\boptimizer\b"), ("sampling", r"\bsampling\b"), ("masking", r"\bmasking\b"),
    ("losses", r"\b(mlm_loss|disc_loss)\b"),
))


def op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the JAX name XLA recorded for it (metadata op_name) in a compiled module."""
    pattern = re.compile(r'^\s*(?:ROOT )?%(\S+) = .*?metadata=\{op_name="([^"]*)"', re.M)
    return {name: op.split("/", 1)[-1] for name, op in pattern.findall(hlo_text)}


def category(op: str) -> str:
    return next((name for name, pattern in CATEGORIES if pattern.search(op)), "other")


def part(op: str) -> str:
    """generator / discriminator (forward or backward), optimizer, sampling, masking, losses, other."""
    for name, pattern in PARTS:
        if pattern.search(op):
            if name in ("generator", "discriminator"):
                return f"{name} {'backward' if op.startswith('transpose(') else 'forward'}"
            return name
    return "other"


def short(op: str) -> str:
    """An op's name with layer numbers folded, so the twelve layers' copies add up."""
    return re.sub(r"layer_\d+", "layer_*", op)


def op_times(trace_file: str, module: str) -> tuple[collections.Counter, bool]:
    """Nanoseconds per compiled instruction of `module`, summed over the trace; and whether they came
    from an accelerator's planes (True) or the host's threads (False)."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(trace_file)
    planes = list(data.planes)
    device = [p for p in planes if p.name.startswith("/device:") and "CPU" not in p.name]
    times = collections.Counter()
    for plane in device or planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    times[stats["hlo_op"]] += event.duration_ns
    return times, bool(device)


def breakdown(times: collections.Counter, names: dict[str, str], steps: int, step_s: float,
              top: int = 12) -> dict:
    """Per-step seconds by category, by part of the model, and the heaviest ops."""
    by_category, by_part, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    for instruction, ns in times.items():
        op = names.get(instruction, instruction)
        by_category[category(op)] += ns
        by_part[part(op)] += ns
        by_op[short(op)] += ns
    per_step = lambda c: {k: round(v / steps / 1e9, 5) for k, v in c.most_common()}
    total = sum(times.values()) / steps / 1e9
    return {"step_s": step_s, "op_s": total, "busy_cores": total / step_s,
            "by_category": per_step(by_category), "by_part": per_step(by_part),
            "top_ops": per_step(collections.Counter(dict(by_op.most_common(top))))}


def profile(runner, trace_dir: str, steps: int = 5, warmup: int = 2, module: str = "jit_train_step"
            ) -> dict:
    """Trace `steps` steps of our prepared runner (`bench.step.prepare`) into `trace_dir` and break
    their time down (see `breakdown`)."""
    for _ in range(warmup):
        runner.step()
    os.makedirs(trace_dir, exist_ok=True)
    before = set(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    with jax.profiler.trace(trace_dir):
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        step_s = (time.perf_counter() - t0) / steps
    new = set(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)) - before
    if not new:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    times, on_device = op_times(max(new, key=os.path.getmtime), module)
    result = breakdown(times, op_names(runner.compiled.as_text()), steps, step_s)
    result.update({"on_device": on_device, "trace_dir": trace_dir, "profiled_steps": steps})
    return result


def report(result: dict) -> str:
    where = "device" if result["on_device"] else "XLA's CPU threads"
    lines = [f"step {1e3 * result['step_s']:.1f} ms (traced); ops on {where}: "
             f"{1e3 * result['op_s']:.1f} ms per step = {result['busy_cores']:.2f} x the step"]
    for title, key in (("by category", "by_category"), ("by part", "by_part"), ("heaviest ops", "top_ops")):
        lines.append(f"  {title}:")
        for name, s in result[key].items():
            lines.append(f"    {1e3 * s:9.1f} ms  {100 * s / result['op_s']:5.1f}%  {name}")
    return "\n".join(lines)
