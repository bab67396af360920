"""Will a run fit, and how does it shard? Compile the real train step for a TPU slice or GPU node on
this machine, ahead of time, and read the answer off the compiled program.

XLA compiles for TPU (libtpu) and GPU targets without the hardware: the topology API gives the target's
devices, `train.setup` builds the mesh and shardings over them exactly as a run would, and the step is
lowered from abstract shapes (nothing is allocated) and compiled. The compiled program states its
per-chip memory; a program over the chip's HBM is refused by the TPU compiler itself. What is measured
(memory, collectives in the optimized HLO, compile time) is kept apart from what is estimated (the
roofline step-time bound).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable

import ml_collections

from electra_jax.config import (ConfigError, max_predictions_per_seq, mesh_shape, model_spec, resolve_rng_impl,
                                validate)
from electra_jax.errors import UserError

GiB = 2**30


class PlanError(UserError):
    """A target, mesh or sharding that cannot be planned; said before any compile."""


@dataclasses.dataclass(frozen=True)
class Chip:
    family: str
    device_kind: str  # as jax names it
    hbm_bytes: int
    peak_tflops: float  # dense bf16
    hbm_gbytes_per_s: float
    ici_gbytes_per_s: float  # chip-to-chip, both directions together, as vendors state it (ICI; NVLink)


# Vendors' published figures (per chip): Cloud TPU system-architecture pages (ICI: v4 2,400 Gbps, v5e
# 1,600 = 400 GB/s both ways, v5p 4,800, v6e 3,584); NVIDIA H100 SXM / H200 data sheets (NVLink 900 GB/s).
# The GPU memory sizes are those XLA's target configs state.
CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GiB, 275.0, 1200.0, 300.0),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GiB, 197.0, 819.0, 400.0),
    "v5p": Chip("v5p", "TPU v5", 95 * GiB, 459.0, 2765.0, 600.0),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GiB, 918.0, 1640.0, 448.0),
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 84_942_979_072, 989.0, 3352.0, 900.0),
    "h200": Chip("h200", "NVIDIA H200 141GB HBM3e", 151_397_597_184, 989.0, 4800.0, 900.0),
}
# launch/gpu.sh and launch/slurm.sbatch set XLA_PYTHON_CLIENT_MEM_FRACTION to this (the rest of a GPU is
# the CUDA context's, cuDNN's and NCCL's), so a GPU plan must fit in it, not in the whole HBM.
GPU_MEM_FRACTION = 0.92
# Chips -> the slice's torus, as Cloud TPU builds them (and MaxText / AXLearn name them for AOT).
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
# Cloud TPU names v4 and v5p slices by TensorCores (2 per chip, one megacore device), v5e/v6e by chips.
_CORES_PER_CHIP_IN_NAME = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
TARGET_HELP = ("v4-8 .. v4-1024 and v5p-8 .. v5p-8192 (TensorCores, 2 per chip, as Cloud TPU names them), "
               "v5e-1 .. v5e-256 (or v5litepod-N) and v6e-1 .. v6e-256 (chips), h100xN / h200xN (GPUs per node)")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    chip: Chip
    chips_per_slice: int  # per node for GPUs
    slices: int  # TPU slices over the data-centre network, or GPU nodes
    topology: str

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.slices

    @property
    def platform(self) -> str:
        return "cuda" if self.chip.family.startswith("h") else "tpu"

    @property
    def budget_bytes(self) -> int:
        """What a run may use per chip: all of a TPU's HBM; on a GPU the share our launch scripts give
        XLA's allocator (XLA_PYTHON_CLIENT_MEM_FRACTION)."""
        return int(self.chip.hbm_bytes * (GPU_MEM_FRACTION if self.platform == "cuda" else 1.0))

    def describe(self) -> str:
        unit = ("node" if self.platform == "cuda" else "slice")
        many = f" x {self.slices} {unit}s" if self.slices > 1 else ""
        return f"{self.name}{many}: {self.chips} x {self.chip.device_kind} ({self.topology})"


def parse_target(text: str, slices: int = 1) -> Target:
    """`v5e-256`, `v4-8`, `h100x8`, ... -> Target; PlanError naming what is allowed otherwise."""
    if slices < 1:
        raise PlanError(f"--slices/--nodes {slices} must be >= 1")
    name = text.strip().lower().replace("v5litepod", "v5e")
    gpu = re.fullmatch(r"(h100|h200)x(\d+)", name)
    if gpu:
        count = int(gpu.group(2))
        if count not in (1, 2, 4, 8):
            raise PlanError(f"--target {text}: a node holds 1, 2, 4 or 8 GPUs")
        # XLA's CUDA topology: <partitions> x <hosts per partition> x <devices per host>
        return Target(text, CHIPS[gpu.group(1)], count, slices, f"1x{slices}x{count}")
    tpu = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)
    if not tpu:
        raise PlanError(f"--target {text!r} is not a known target: {TARGET_HELP}")
    family, size = tpu.group(1), int(tpu.group(2))
    per_chip = _CORES_PER_CHIP_IN_NAME[family]
    chips = size // per_chip
    torus = (_TORUS_3D if per_chip == 2 else _TORUS_2D).get(chips) if size % per_chip == 0 else None
    if torus is None:
        sizes = [c * per_chip for c in (_TORUS_3D if per_chip == 2 else _TORUS_2D)]
        raise PlanError(f"--target {text}: {family} slices come in sizes {', '.join(map(str, sizes))}")
    return Target(text, CHIPS[family], chips, slices, f"{family}:{torus}")


def target_devices(target: Target) -> list:
    """The target's devices from XLA's topology API (no hardware needed)."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        import importlib.util

        if importlib.util.find_spec("libtpu") is None:
            raise PlanError("compiling for TPU needs libtpu on this machine: pip install -c constraints.txt "
                            "-e '.[tpu]' (about 140 MB; no TPU needed)")
        megacore = target.chip.family in ("v4", "v5p")
        bounds = (1, 1, 1) if target.chips_per_slice == 1 else (2, 2, 1)
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=target.topology, num_slices=target.slices,
            chip_config_name="megacore" if megacore else "default", chips_per_host_bounds=bounds)
        return list(desc.devices)
    return gpu_devices(target)


_GPU_SPECS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}  # XLA's GpuTargetConfigProto, from openxla/xla


def gpu_devices(target: Target) -> list:
    """GPU devices from the CUDA plugin's topology API and XLA's target description of the chip; the
    compile needs ptxas (nvidia-cuda-nvcc-cu12), not a GPU or a driver."""
    import importlib.util
    import pathlib

    from jax.experimental import topologies

    if importlib.util.find_spec("jax_plugins") is None or importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        raise PlanError("compiling for GPUs needs the CUDA compiler plugin on this machine: pip install -c "
                        "constraints.txt -e '.[plan-gpu]' (about 600 MB; no GPU needed)")
    spec = pathlib.Path(__file__).with_name("gpu_specs") / _GPU_SPECS[target.chip.family]
    desc = topologies.get_topology_desc("plan", "cuda", target_config=spec.read_text(), topology=target.topology)
    return list(desc.devices)


# ----------------------------------------------------------------------------- the optimized HLO

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r"|f8e\w+)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$")
_CALLEE = re.compile(r"\b(body|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONDITION = re.compile(r"\bcondition=%([\w.\-]+)")
_CONSTANT = re.compile(r"\bs32\[\]\S*\s+constant\((\d+)\)")


def _array_bytes(text: str) -> list[int]:
    return [math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES.get(dtype, 1)
            for dtype, dims in _ARRAY.findall(text)]


def collectives(hlo: str) -> dict[str, dict[str, float]]:
    """{kind: {"count", "bytes"}} per step and chip from a compiled module's text: each collective's
    result buffer (for async `-start` pairs the destination), times how often it runs: a collective
    inside a loop body with a known trip count (scanned layers, micro-batches) counts that many times."""
    bodies: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            bodies[current] = []
            entry = current if m.group(1) else entry
        elif current is not None:
            bodies[current].append(line)
    counts = {k: {"count": 0, "bytes": 0.0} for k in COLLECTIVES}

    def visit(name: str, times: int, depth: int = 0) -> None:
        if depth > 32 or name not in bodies:
            return
        for line in bodies[name]:
            m = _INSTRUCTION.match(line)
            if m:
                sizes = _array_bytes(m.group(1))
                size = sizes[1] if m.group(3) and len(sizes) > 1 else sum(sizes)
                counts[m.group(2)]["count"] += times
                counts[m.group(2)]["bytes"] += times * size
                continue
            for kind, callee in _CALLEE.findall(line):
                if kind != "to_apply" and not callee.startswith("fused_computation"):
                    visit(callee, times * (trip_count(line) if kind == "body" else 1), depth + 1)

    def trip_count(line: str) -> int:
        """XLA's annotation, or the bound in the loop condition `i < N` (scan's loops count 0..N-1)."""
        known = _TRIP_COUNT.search(line)
        if known:
            return int(known.group(1))
        condition = _CONDITION.search(line)
        body = bodies.get(condition.group(1), []) if condition else []
        bounds = [int(c) for x in body for c in _CONSTANT.findall(x)]
        return bounds[0] if len(bounds) == 1 and any("direction=LT" in x for x in body) else 1

    if entry:
        visit(entry, 1)
    return {k: v for k, v in counts.items() if v["count"]}


def has_loops(hlo: str) -> bool:
    return " while(" in hlo


# ----------------------------------------------------------------------------- one compile


@dataclasses.dataclass
class Compiled:
    """One compile of the train step for the target: measured numbers, or why XLA refused."""

    batch_size: int
    fits: bool
    compile_s: float
    peak_bytes: int | None = None  # arguments + outputs - donated aliases + temporaries, per chip
    temp_bytes: int | None = None
    param_bytes: int = 0  # per chip, from the shardings
    opt_bytes: int = 0
    error: str | None = None  # XLA's message when it refused
    needed_bytes: int | None = None  # what XLA said the program needs, when it said so
    hlo: str | None = None
    cost: dict | None = None
    mesh: dict | None = None


_HBM_ERROR = re.compile(r"memory required for (?:HLO temporaries|\w[\w ]*?) \((\d+(?:\.\d+)?)([KMGT])\)"
                        r" exceeds available HBM \((\d+(?:\.\d+)?)([KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def compile_step(config: ml_collections.ConfigDict, devices: list, hbm_bytes: int,
                 keep_hlo: bool = True) -> Compiled:
    """Lower the real train step of `config` over `devices` from abstract shapes and compile it."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from electra_jax import train
    from electra_jax.sharding import bytes_per_device

    s = train.setup(config, devices=devices)
    abstract = s.abstract_state()
    batch = train.abstract_batch(config, s.batch_sharding)
    key = jax.eval_shape(lambda: jax.random.key(0, impl=s.rng_impl))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(s.mesh, PartitionSpec()))
    result = Compiled(config.batch_size, False, 0.0, mesh=dict(s.mesh.shape),
                      param_bytes=bytes_per_device(abstract.params, s.state_shardings.params),
                      opt_bytes=bytes_per_device(abstract.opt_state, s.state_shardings.opt_state))
    start = time.perf_counter()
    try:
        compiled = s.step.lower(abstract, batch, rng).compile()
    except Exception as e:  # XLA's refusal (JaxRuntimeError RESOURCE_EXHAUSTED) is an answer, not a crash
        result.compile_s = time.perf_counter() - start
        text = str(e)
        if "cuDNN not found" in text:
            raise PlanError("attention=fused on a GPU is cuDNN's kernel, and JAX asks the cuDNN library for its "
                            "version while lowering it: pip install nvidia-cudnn-cu12==9.28.0.42 (about 1 GB) "
                            "on this machine, or plan with --config.model.attention=xla") from None
        if not train.out_of_memory(e):
            raise
        result.error = text.strip().splitlines()[0][:400]
        m = _HBM_ERROR.search(text)
        if m:
            temp = float(m.group(1)) * _UNITS[m.group(2)]
            result.needed_bytes = int(temp + result.param_bytes + result.opt_bytes)
        return result
    result.compile_s = time.perf_counter() - start
    result.peak_bytes = train.peak_bytes(compiled)
    result.temp_bytes = compiled.memory_analysis().temp_size_in_bytes
    result.fits = result.peak_bytes <= hbm_bytes
    cost = compiled.cost_analysis()
    result.cost = {k: float(v) for k, v in (cost or {}).items() if k in ("flops", "bytes accessed")}
    result.hlo = compiled.as_text() if keep_hlo else None
    return result


# ----------------------------------------------------------------------------- the plan


def _with(config: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def check_before_compile(config: ml_collections.ConfigDict, target: Target) -> None:
    """Everything that can be refused without compiling: the config over the target's chip count (mesh,
    batch divisibility, slices) and sharding rules that do not divide a parameter at this size."""
    if int(config.mesh.get("dcn_data", 1)) not in (1, target.slices):
        raise PlanError(f"config.mesh.dcn_data={config.mesh.dcn_data} but the target has {target.slices} "
                        f"slice(s)/node(s); set --slices (or --nodes) {config.mesh.dcn_data}")
    try:
        validate(config, num_devices=target.chips)
    except ConfigError as e:
        raise PlanError(f"{e} (on {target.chips} chips)") from None


def undivided_parameters(config: ml_collections.ConfigDict, devices: list) -> list[str]:
    from electra_jax import train
    from electra_jax.config import logical_rules
    from electra_jax.sharding import undivided

    s = train.setup(config, devices=devices)
    return undivided(s.logical_state.params, s.mesh, logical_rules(config))


@dataclasses.dataclass
class Plan:
    target: Target
    config: ml_collections.ConfigDict
    main: Compiled
    model_flops_per_step: float
    suggestions: list[tuple[str, Compiled]] = dataclasses.field(default_factory=list)
    largest: tuple[int, int | None, int] | None = None  # (largest fitting batch, smallest failing, compiles)
    replicated: list[str] = dataclasses.field(default_factory=list)


def model_flops(config: ml_collections.ConfigDict) -> float:
    from electra_jax.flops import train_flops_per_sequence

    return train_flops_per_sequence(model_spec(config), config.data.seq_len,
                                    max_predictions_per_seq(config)) * config.batch_size


def wire_bytes(coll: dict) -> float:
    """Bytes a chip sends per step for `collectives(...)`, as rings move them: an all-reduce about twice
    its buffer (reduce-scatter, then all-gather), every other kind about its result buffer once."""
    return sum(v["bytes"] * (2 if kind == "all-reduce" else 1) for kind, v in coll.items())


def roofline(plan: Plan) -> dict[str, Any]:
    """A step-time lower bound from the chip's peak FLOP/s and HBM bandwidth: an estimate, never a
    measurement. Compute: the larger of the model's FLOPs and XLA's (XLA's include remat and softmax,
    but count a loop body once, so they are used only for loop-free programs). Memory: XLA's bytes
    accessed for loop-free programs, else the train state read and written once. Collectives: their wire
    bytes at half the chip's stated (two-way) interconnect bandwidth. Each term assumes the others fully
    overlapped with it, so the largest is a lower bound."""
    chip, c = plan.target.chip, plan.main
    per_chip_model = plan.model_flops_per_step / plan.target.chips
    loops = has_loops(c.hlo or "")
    xla_flops = None if loops or not c.cost else c.cost.get("flops")
    flops = max(per_chip_model, xla_flops or 0.0)
    state_traffic = 2 * (c.param_bytes * 3 + c.opt_bytes)  # params, grads, moments: read + written
    accessed = state_traffic if loops or not c.cost else max(c.cost.get("bytes accessed", 0.0), state_traffic)
    compute_s = flops / (chip.peak_tflops * 1e12)
    memory_s = accessed / (chip.hbm_gbytes_per_s * 1e9)
    network_s = wire_bytes(collectives(c.hlo or "")) / (chip.ici_gbytes_per_s / 2 * 1e9)
    bound = max(compute_s, memory_s, network_s)
    return {"model_flops_per_chip": per_chip_model, "xla_flops_per_chip": xla_flops,
            "compute_s": compute_s, "memory_s": memory_s, "network_s": network_s, "bound_s": bound,
            "mfu_at_bound": per_chip_model / (bound * chip.peak_tflops * 1e12) if bound else None}


def _fix_candidates(config: ml_collections.ConfigDict, shards: int) -> list[tuple[str, dict]]:
    """Changes that lower per-chip memory, cheapest first; each is compiled, none is guessed."""
    m, out = config.model, []
    if m.remat_policy == "none":
        out.append(("--config.model.remat_policy=full", {"model__remat_policy": "full"}))
    mesh = config.mesh
    if int(mesh.fsdp) == 1 and int(mesh.tensor) == 1:
        dcn = int(mesh.get("dcn_data", 1))
        out.append((f"--config.mesh.data={dcn} --config.mesh.fsdp=-1 (FSDP: parameters and optimizer "
                    "state sharded over the slice)", {"mesh__data": dcn, "mesh__fsdp": -1}))
    per_shard = config.batch_size // shards
    for k in (2, 4, 8):
        if per_shard % (config.micro_batches * k) == 0:
            mb = config.micro_batches * k
            out.append((f"--config.micro_batches={mb}", {"micro_batches": mb}))
            if m.remat_policy == "none":
                out.append((f"--config.micro_batches={mb} --config.model.remat_policy=full",
                            {"micro_batches": mb, "model__remat_policy": "full"}))
    if config.batch_size // 2 >= shards and (config.batch_size // 2) % shards == 0:
        out.append((f"--config.batch_size={config.batch_size // 2}", {"batch_size": config.batch_size // 2}))
    return out


def largest_batch(config: ml_collections.ConfigDict, devices: list, hbm: int, first: Compiled,
                  log: Callable[[str], None], max_compiles: int = 6) -> tuple[int, int | None, int]:
    """(largest fitting global batch found, smallest failing one, compiles spent): a line through two
    compiles' memory (peak = fixed + per-example x batch) predicts the limit, then bisection between a
    batch that fitted and one that did not, in steps of the data-parallel shards x micro-batches,
    until they are one step (or 1/16) apart."""
    sizes = mesh_shape(config, len(devices))
    unit = sizes["data"] * sizes["fsdp"] * config.micro_batches
    known = {first.batch_size: first}

    def trial(batch: int) -> Compiled:
        if batch not in known:
            known[batch] = compile_step(_with(config, batch_size=batch), devices, hbm, keep_hlo=False)
            r = known[batch]
            log(f"  batch {batch}: {'fits' if r.fits else 'does not fit'}"
                f"{f', {r.peak_bytes / GiB:.2f} GiB' if r.peak_bytes else ''} ({r.compile_s:.0f} s)")
        return known[batch]

    def used(r: Compiled) -> int | None:
        return r.peak_bytes if r.peak_bytes is not None else r.needed_bytes

    trial(first.batch_size * 2 if first.fits else max(unit, (first.batch_size // 2) // unit * unit))
    points = sorted((b, used(r)) for b, r in known.items() if used(r) is not None)
    guess = None
    if len(points) == 2 and points[1][1] > points[0][1]:
        (b0, m0), (b1, m1) = points
        per_example = (m1 - m0) / (b1 - b0)
        guess = int((hbm - (m0 - per_example * b0)) / per_example) // unit * unit
    if guess and guess >= unit and len(known) < max_compiles:
        trial(guess)
    while len(known) < max_compiles:
        fit = [b for b, r in known.items() if r.fits]
        fail = [b for b, r in known.items() if not r.fits]
        lo, hi = (max(fit) if fit else 0), (min(fail) if fail else None)
        if hi is None:
            nxt = lo * 2
        elif hi - lo <= max(unit, lo // 16):
            break
        else:
            nxt = (lo + hi) // 2 // unit * unit
            if nxt <= lo:
                break
        if nxt < unit:
            break
        trial(nxt)
    fit = [b for b, r in known.items() if r.fits]
    fail = [b for b, r in known.items() if not r.fits and b > max(fit, default=0)]
    return (max(fit) if fit else 0), (min(fail) if fail else None), len(known)


def make_plan(config: ml_collections.ConfigDict, target: Target, *, search_batch: bool = False,
              suggest: bool = True, allow_replicated: bool = False,
              log: Callable[[str], None] = print) -> Plan:
    check_before_compile(config, target)
    devices = target_devices(target)
    main, tried = None, {}
    if config.model.remat_policy == "auto":
        from electra_jax.train import fitting_remat, with_remat

        def peak(c):
            tried[c.model.remat_policy] = compile_step(c, devices, target.budget_bytes)
            return tried[c.model.remat_policy].peak_bytes

        log(f"remat_policy auto: compiling the step for {target.describe()} with none, dots, full until one "
            "fits in 95% of a chip:")
        config = with_remat(config, fitting_remat(config, devices, target.budget_bytes, peak, log))
        main = tried.get(config.model.remat_policy)
    replicated = undivided_parameters(config, devices)
    if replicated and not allow_replicated:
        raise PlanError(f"{len(replicated)} parameter dimension(s) cannot be split as the sharding rules ask on "
                        f"{target.chips} chips: {replicated[0]}" + (f" (and {len(replicated) - 1} more)" if
                        len(replicated) > 1 else "") + "; change config.sharding_rules or the mesh, pad the "
                        "dimension, or pass --allow-replicated")
    if main is None:
        log(f"compiling the train step for {target.describe()} ...")
        main = compile_step(config, devices, target.budget_bytes)
    plan = Plan(target, config, main, model_flops(config), replicated=replicated)
    if not main.fits and suggest:
        sizes = mesh_shape(config, target.chips)
        log("it does not fit; compiling changes that lower memory:")
        for label, changes in _fix_candidates(config, sizes["data"] * sizes["fsdp"]):
            r = compile_step(_with(config, **changes), devices, target.budget_bytes, keep_hlo=False)
            log(f"  {label}: {_fit_text(r, target)}")
            plan.suggestions.append((label, r))
    if search_batch and main.fits:
        log("searching the largest batch that fits:")
        plan.largest = largest_batch(config, devices, target.budget_bytes, main, log)
    return plan


def _fit_text(r: Compiled, target: Target) -> str:
    hbm = target.budget_bytes / GiB
    if r.peak_bytes is not None:
        word = "fits" if r.fits else "does not fit"
        return f"{word}: {r.peak_bytes / GiB:.2f} of {hbm:.0f} GiB per chip ({r.compile_s:.0f} s to compile)"
    need = f" (needs ~{r.needed_bytes / GiB:.2f} GiB)" if r.needed_bytes else ""
    return f"does not fit{need}: XLA refused in {r.compile_s:.0f} s"


def report(plan: Plan) -> str:
    t, c, cfg = plan.target, plan.main, plan.config
    hbm = t.budget_bytes
    usable = (f", {hbm / GiB:.1f} GiB of it for XLA (XLA_PYTHON_CLIENT_MEM_FRACTION={GPU_MEM_FRACTION}, as "
              "launch/gpu.sh sets)" if hbm != t.chip.hbm_bytes else "")
    lines = [f"target   {t.describe()}, {t.chip.hbm_bytes / GiB:.0f} GiB HBM per chip{usable}",
             f"run      {cfg.model.num_layers} x {cfg.model.hidden_size}, batch {cfg.batch_size} x seq "
             f"{cfg.data.seq_len}, micro_batches {cfg.micro_batches}, {cfg.model.dtype}, scan_layers "
             f"{cfg.model.scan_layers}, remat {cfg.model.remat_policy}",
             f"mesh     {' x '.join(f'{k} {v}' for k, v in (c.mesh or {}).items())}"
             + (f" (data spans {t.slices} slices over DCN)" if t.slices > 1 else ""),
             f"compile  {c.compile_s:.1f} s on this machine"]
    state = c.param_bytes + c.opt_bytes
    lines.append(f"state    parameters {c.param_bytes / GiB:.3f} GiB + optimizer {c.opt_bytes / GiB:.3f} GiB "
                 "per chip")
    if c.peak_bytes is not None:
        lines.append(f"memory   {c.peak_bytes / GiB:.2f} GiB per chip (state {state / GiB:.2f}, temporaries "
                     f"{c.temp_bytes / GiB:.2f}): {'FITS' if c.fits else 'DOES NOT FIT'}, "
                     f"{(hbm - c.peak_bytes) / GiB:+.2f} GiB headroom")
    else:
        over = f", ~{(c.needed_bytes - hbm) / GiB:.2f} GiB over" if c.needed_bytes else ""
        lines.append(f"memory   DOES NOT FIT{over}: {c.error}")
    for replicated in plan.replicated:
        lines.append(f"replicated  {replicated}")
    if c.hlo:
        coll = collectives(c.hlo)
        text = ", ".join(f"{k} {v['count']} x ({v['bytes'] / 2**20:.1f} MiB)" for k, v in coll.items()) or "none"
        lines.append(f"collectives per step per chip: {text}")
        r = roofline(plan)
        xla = (f"{r['xla_flops_per_chip']:.3g}" if r["xla_flops_per_chip"] is not None
               else "not given for this target" if not c.cost else "not comparable (XLA counts a loop body once)")
        lines.append(f"flops    model {r['model_flops_per_chip']:.3g} per chip per step; XLA {xla}")
        lines.append(f"roofline step >= {r['bound_s'] * 1e3:.1f} ms (compute {r['compute_s'] * 1e3:.1f} ms at "
                     f"{t.chip.peak_tflops:g} TFLOP/s, memory {r['memory_s'] * 1e3:.1f} ms at "
                     f"{t.chip.hbm_gbytes_per_s:g} GB/s, collectives {r['network_s'] * 1e3:.1f} ms at "
                     f"{t.chip.ici_gbytes_per_s / 2:g} GB/s each way): an estimate, MFU <= "
                     f"{100 * r['mfu_at_bound']:.0f}%")
    if plan.largest:
        best, fail, n = plan.largest
        lines.append(f"largest batch that fits: {best}" + (f" ({fail} does not)" if fail else "")
                     + f", found in {n} compiles (a line through two compiles' memory, then bisection)")
    if plan.suggestions:
        fixes = [label for label, r in plan.suggestions if r.fits]
        lines.append("to make it fit: " + ("; or ".join(fixes) if fixes else
                                           "none of the single changes tried fits: combine them, or use "
                                           "a larger slice"))
    return "\n".join(lines)


def record(plan: Plan) -> dict:
    """The plan as one JSON-able row (BENCHMARKS.md's plan table is made from these)."""
    import datetime
    import os
    import platform

    import jax

    c, cfg = plan.main, plan.config
    row = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "jax": jax.__version__,
           "target": plan.target.name, "slices": plan.target.slices, "chips": plan.target.chips,
           "device_kind": plan.target.chip.device_kind, "hbm_gib": plan.target.chip.hbm_bytes / GiB,
           "layers": cfg.model.num_layers, "hidden": cfg.model.hidden_size, "batch_size": cfg.batch_size,
           "seq_len": cfg.data.seq_len, "micro_batches": cfg.micro_batches, "scan_layers": cfg.model.scan_layers,
           "remat_policy": cfg.model.remat_policy, "dtype": cfg.model.dtype, "mesh": c.mesh,
           "attention": cfg.model.attention,
           "rng_impl": resolve_rng_impl(cfg, "tpu" if plan.target.platform == "tpu" else "gpu"),
           "cast_params": cfg.model.get("cast_params", True),
           "activation_constraints": cfg.model.get("activation_constraints", True),
           "param_norm": cfg.train.get("param_norm", True),
           "xla_flags": os.environ.get("LIBTPU_INIT_ARGS" if plan.target.platform == "tpu" else "XLA_FLAGS", ""),
           "fits": c.fits, "compile_s": round(c.compile_s, 1), "peak_gib": _gib(c.peak_bytes),
           "temp_gib": _gib(c.temp_bytes), "param_gib": _gib(c.param_bytes), "opt_gib": _gib(c.opt_bytes),
           "needed_gib": _gib(c.needed_bytes), "error": c.error}
    if c.hlo:
        row["collectives"] = collectives(c.hlo)
        row["roofline"] = roofline(plan)
    if plan.largest:
        row["largest_batch"], row["smallest_failing_batch"], row["search_compiles"] = plan.largest
    row["suggestions"] = [{"change": label, "fits": r.fits, "peak_gib": _gib(r.peak_bytes)}
                          for label, r in plan.suggestions]
    return row


def _gib(n: int | None) -> float | None:
    return None if n is None else round(n / GiB, 3)


def append_record(plan: Plan, path: str) -> None:
    import json

    with open(path, "a") as f:
        f.write(json.dumps(record(plan)) + "\n")


def layout_text(row: dict) -> str:
    """The switches a plan row was compiled with, short; rows from before a switch existed say so by
    leaving it out."""
    mesh = row.get("mesh") or {}
    parts = ["FSDP" if mesh.get("fsdp", 1) > 1 else "DP", "scan" if row["scan_layers"] else "unscanned",
             f"remat {row['remat_policy']}"]
    if "attention" in row:
        parts.append(f"attn {row['attention']}")
        parts.append(f"rng {row['rng_impl']}")
        parts += [name for key, name in (("cast_params", "bf16 cast"), ("activation_constraints", "constrained"),
                                         ("param_norm", "param_norm")) if row.get(key)]
        parts.append("flags" if row.get("xla_flags") else "no flags")
    return ", ".join(parts)


def _roofline_cell(row: dict) -> str:
    """The row's bound with its three terms; the collectives' term recomputed from the row's collectives
    and the chip's interconnect (rows written before that term existed have both)."""
    roof = row.get("roofline")
    if not roof:
        return "-"
    chip = next((c for c in CHIPS.values() if c.device_kind == row["device_kind"]), None)
    network = wire_bytes(row.get("collectives") or {}) / (chip.ici_gbytes_per_s / 2 * 1e9) if chip else 0.0
    terms = (roof["compute_s"], roof["memory_s"], network)
    return f"**{max(terms) * 1e3:.1f}** ({' / '.join(f'{t * 1e3:.1f}' for t in terms)})"


def markdown_table(rows: list[dict]) -> str:
    """BENCHMARKS.md's plan table from `plan --results` rows: `python -m electra_jax.plan FILE...`
    (rows in file order). Collective MiB are each kind's result buffers per step and chip."""
    head = ("| model | target | batch x seq | layout | mesh (data x fsdp x tensor) | fits | GiB/chip | largest batch "
            "| compile s | all-reduce MiB | all-gather MiB | reduce-scatter MiB | all-to-all MiB | roofline ms (compute / "
            "memory / collectives) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    names = {(12, 256): "Small", (12, 768): "Base", (24, 1024): "Large"}  # the paper's sizes
    for r in rows:
        mesh = " x ".join(str(v) for v in (r.get("mesh") or {}).values())
        gib = r["peak_gib"] if r["peak_gib"] is not None else ("needs ~%s" % r["needed_gib"] if r["needed_gib"] else "-")
        coll = r.get("collectives") or {}
        mib = lambda kind: "-" if "collectives" not in r else round(coll.get(kind, {}).get("bytes", 0) / 2**20, 1)
        target = r["target"] + (" x %d slices" % r["slices"] if r["slices"] > 1 else "")
        size = f"{r['layers']} x {r['hidden']}"
        cells = [names.get((r["layers"], r["hidden"]), size), target, f"{r['batch_size']} x {r['seq_len']}",
                 layout_text(r), mesh, "yes" if r["fits"] else "**no**", gib, r.get("largest_batch", "-"),
                 r["compile_s"], mib("all-reduce"), mib("all-gather"), mib("reduce-scatter"), mib("all-to-all"),
                 _roofline_cell(r)]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys

    print(markdown_table([json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]))
