"""`electra-jax plan`: the real train step compiled for TPU (and GPU) targets on this CPU machine.

Compiles need libtpu (the `tpu` extra, installed by the README's test command) or the CUDA plugin
(`plan-gpu`); without them those tests are skipped and the one-line refusal is tested instead.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from electra_jax.plan import PlanError, collectives, parse_target

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA_PLUGIN = (importlib.util.find_spec("jax_plugins") is not None
                   and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]')")

# Tiny preset's parameters counted by hand (E=32, H=64, L=2, I=256, V=2048, P=128, T=2; generator 32 wide,
# FFN 128, no embedding projection since E equals its width):
EMBEDDINGS = 2048 * 32 + 128 * 32 + 2 * 32 + 2 * 32
DISC_LAYER = 4 * (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256 + 256 * 64 + 64) + 2 * 64
DISCRIMINATOR = (32 * 64 + 64) + 2 * DISC_LAYER + (64 * 64 + 64) + (64 + 1)
GEN_LAYER = 4 * (32 * 32 + 32) + 2 * 32 + (32 * 128 + 128 + 128 * 32 + 32) + 2 * 32
GENERATOR = 2 * GEN_LAYER + (32 * 32 + 32) + 2 * 32 + 2048
TINY_PARAMS = EMBEDDINGS + DISCRIMINATOR + GENERATOR  # 204,641


def _plan(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TPU_ACCELERATOR_TYPE"}
    return subprocess.run([sys.executable, "-m", "electra_jax.cli", "plan", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_targets_are_named_as_cloud_tpu_names_them():
    assert (parse_target("v4-8").chips, parse_target("v4-8").topology) == (4, "v4:2x2x1")  # TensorCores
    assert (parse_target("v5p-512").chips, parse_target("v5p-512").topology) == (256, "v5p:4x8x8")
    assert (parse_target("v5e-256").chips, parse_target("v5e-256").topology) == (256, "v5e:16x16")  # chips
    assert parse_target("v5litepod-8").topology == "v5e:2x4"
    assert parse_target("v6e-8", slices=4).chips == 32
    assert (parse_target("h100x8", slices=2).chips, parse_target("h100x8", slices=2).topology) == (16, "1x2x8")
    for bad, says in (("v5e-7", "sizes"), ("tpu9-8", "not a known target"), ("h100x3", "1, 2, 4 or 8"),
                      ("v4-5", "sizes")):
        with pytest.raises(PlanError, match=says):
            parse_target(bad)


def test_a_gpu_plan_must_fit_in_what_the_launch_scripts_give_xla():
    """A GPU run gets XLA_PYTHON_CLIENT_MEM_FRACTION of the HBM (launch/gpu.sh, slurm.sbatch), so a plan
    that fits the whole HBM but not that share would run out of memory there."""
    import re

    from electra_jax.plan import GPU_MEM_FRACTION

    root = os.path.join(os.path.dirname(__file__), "..", "launch")
    for script in ("gpu.sh", "slurm.sbatch"):
        text = open(os.path.join(root, script)).read()
        assert re.search(r'XLA_PYTHON_CLIENT_MEM_FRACTION:-([0-9.]+)', text).group(1) == str(GPU_MEM_FRACTION)
    assert parse_target("h100x8").budget_bytes == int(84_942_979_072 * 0.92)  # XLA's H100 SXM memory size
    assert parse_target("v5e-8").budget_bytes == 16 * 2**30  # a TPU run has the whole HBM


def test_collectives_count_loop_bodies_by_their_trip_count():
    hlo = """HloModule m

%body (p: (s32[], f32[256,128])) -> (s32[], f32[256,128]) {
  %p = (s32[], f32[256,128]{1,0}) parameter(0)
  %ar = f32[256,128]{1,0} all-reduce(f32[256,128]{1,0} %x), replica_groups={}, to_apply=%add
  ROOT %t = (s32[], f32[256,128]{1,0}) tuple(%i, %ar)
}

%cond.1 (q: (s32[], f32[64])) -> pred[] {
  %constant.7 = s32[]{:T(128)} constant(3)
  %q = (s32[], f32[64]) parameter(0)
  %i = s32[] get-tuple-element(%q), index=0
  ROOT %lt = pred[] compare(%i, %constant.7), direction=LT
}

%body.2 (q: (s32[], f32[64])) -> (s32[], f32[64]) {
  %g = f32[64]{0:T(128)} all-reduce(%y), replica_groups=mesh['axis_0'=4], to_apply=%add
}

ENTRY %main (a: bf16[64,32]) -> f32[] {
  %ag = (bf16[64,32]{1,0}, bf16[512,32]{1,0}) all-gather-start(bf16[64,32]{1,0} %a), dimensions={0}
  %w = (s32[], f32[256,128]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %w2 = (s32[], f32[64]{0}) while(%init2), condition=%cond.1, body=%body.2, metadata={op_name="scan"}
  ROOT %r = f32[] all-reduce(f32[] %s), to_apply=%add
}
"""
    got = collectives(hlo)
    # TPU's loops carry no trip count: the bound of the condition's `i < 3` is used
    assert got["all-reduce"] == {"count": 12 + 3 + 1, "bytes": 12 * 256 * 128 * 4 + 3 * 64 * 4 + 4}
    assert got["all-gather"] == {"count": 1, "bytes": 512 * 32 * 2}  # the async pair's destination


def _collective_arrays(hlo: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(kind, dtype, shape) of every array each collective in a compiled module produces."""
    import re

    from electra_jax.plan import COLLECTIVES

    out = []
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
        if m:
            out += [(m.group(2), dtype, tuple(int(d) for d in dims.split(",") if d))
                    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", m.group(1))]
    return out


@needs_libtpu
def test_fsdp_step_on_a_tpu_moves_bf16_weights_and_no_activations(tiny_config):
    """The tiny step compiled for a v5e-8 on a data 2 x fsdp 4 mesh in bf16. Weights are gathered in bf16
    (cast on each chip's shard) and no activation, token id or mask crosses chips: no collective result
    has the sequence length (40) but the position table's first rows, and nothing is all-to-all'd. Before
    the activation constraints XLA gathered the whole batch's float32 [16, 40, 32] embedding gradient on
    every chip, all-gathered the token ids and moved the embeddings by an all-to-all.
    (Compiled for TPU: XLA's CPU backend computes bf16 in float32, so its collectives show no bf16.)"""
    from electra_jax.plan import compile_step, target_devices

    tiny_config.mesh.update(data=2, fsdp=4)
    tiny_config.model.dtype = "bfloat16"
    tiny_config.data.seq_len, tiny_config.batch_size = 40, 16
    result = compile_step(tiny_config, target_devices(parse_target("v5e-8")), 16 * 2**30)
    arrays = _collective_arrays(result.hlo)
    gathers = [(dtype, shape) for kind, dtype, shape in arrays if kind == "all-gather"]
    assert gathers and all(dtype != "f32" for dtype, _ in gathers), gathers
    assert any(dtype == "bf16" and len(shape) >= 2 for dtype, shape in gathers)
    # Only the position table's first 40 rows (a weight, [40, 32]) may have the sequence length.
    moved = [(kind, dtype, shape) for kind, dtype, shape in arrays if 40 in shape and shape != (40, 32)]
    assert not moved, moved
    assert not [kind for kind, _, _ in arrays if kind == "all-to-all"]


@needs_libtpu
@pytest.mark.slow
def test_fused_attention_compiled_for_a_tpu_is_the_splash_kernel(tiny_config):
    """attention=fused on a TPU is Pallas' Splash kernel (a tpu_custom_call per kernel: forward and
    backward, each layer of each tower), laid out per shard; before, it was XLA's own attention."""
    from electra_jax.plan import compile_step, target_devices

    tiny_config.mesh.update(data=2, fsdp=4)
    tiny_config.model.update(dtype="bfloat16", attention="fused", attention_dropout_rate=0.0)
    tiny_config.data.seq_len, tiny_config.batch_size = 128, 16
    result = compile_step(tiny_config, target_devices(parse_target("v5e-8")), 16 * 2**30)
    assert result.fits and result.hlo.count("tpu_custom_call") >= 2 * 2 * 2  # fwd + bwd, 2 layers, 2 towers


@pytest.mark.skipif(not HAS_CUDA_PLUGIN or importlib.util.find_spec("nvidia.cudnn") is None,
                    reason="needs the CUDA plugin and cuDNN's wheel (pip install nvidia-cudnn-cu12==9.28.0.42)")
def test_fused_attention_compiled_for_an_h100_is_cudnns_kernel(tiny_config):
    """attention=fused on a GPU is cuDNN's fused attention (its forward and backward custom calls in
    the compiled program), with the padding given as lengths; before, it was XLA's own attention."""
    import re

    from electra_jax.plan import compile_step, target_devices

    tiny_config.model.update(dtype="bfloat16", attention="fused", attention_dropout_rate=0.0)
    tiny_config.data.seq_len, tiny_config.batch_size = 128, 8
    result = compile_step(tiny_config, target_devices(parse_target("h100x1")), 80 * 2**30)
    targets = set(re.findall(r'custom_call_target="([^"]*)"', result.hlo))
    assert {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"} <= targets, targets


@needs_libtpu
def test_state_bytes_per_chip_match_a_hand_count_and_halve_under_fsdp(tiny_config):
    from electra_jax import train
    from electra_jax.plan import target_devices
    from electra_jax.sharding import bytes_per_device

    devices = target_devices(parse_target("v5e-4"))
    assert devices[0].device_kind == "TPU v5 lite" and len(devices) == 4
    assert TINY_PARAMS == 204_641
    per_chip = {}
    for fsdp in (1, 2):
        tiny_config.mesh.update(data=-1, fsdp=fsdp)
        s = train.setup(tiny_config, devices=devices)
        a = s.abstract_state()
        per_chip[fsdp] = (bytes_per_device(a.params, s.state_shardings.params),
                          bytes_per_device(a.opt_state, s.state_shardings.opt_state))
    params, opt = per_chip[1]
    assert params == 4 * TINY_PARAMS  # float32, replicated on every chip
    assert opt == 2 * 4 * TINY_PARAMS + 2 * 4  # Adam's two moments and two int32 step counts
    # Every matrix and table carries an 'embed' dimension split 2 ways; only small vectors stay whole.
    assert 0.5 * params <= per_chip[2][0] <= 0.52 * params
    assert 0.5 * opt <= per_chip[2][1] <= 0.52 * opt


@needs_libtpu
@pytest.mark.slow
def test_tiny_compiled_for_v5e_2x2_fits_from_another_directory(tmp_path):
    results = tmp_path / "plans.jsonl"
    r = _plan("--config", "tiny", "--target", "v5e-4", "--results", "plans.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "FITS" in r.stdout and "data 1 x fsdp 4 x tensor 1" in r.stdout
    assert "all-reduce" in r.stdout  # the gradients' mean over the data axis
    assert "error" not in r.stderr.lower() and "TPU_WORKER_HOSTNAMES" not in r.stderr  # libtpu kept quiet
    import json

    row = json.loads(results.read_text())
    # FSDP by default: each chip holds about a quarter of the float32 parameters (small vectors whole).
    assert row["fits"] and row["chips"] == 4 and row["param_gib"] <= round(4 * TINY_PARAMS / 2**30 / 4 * 1.1, 4)
    assert row["collectives"]["all-reduce"]["count"] >= 1


@needs_libtpu
@pytest.mark.slow
def test_a_run_over_hbm_does_not_fit_and_says_by_how_much():
    # 2M x 1024 float32 embeddings: 7.6 GiB of parameters, 15.3 GiB of Adam moments per chip, replicated
    r = _plan("--config", "tiny", "--target", "v5e-4", "--config.model.vocab_size=2000000",
              "--config.model.embedding_size=1024", "--no-suggest")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DOES NOT FIT" in r.stdout and "GiB over" in r.stdout and "exceeds available HBM" in r.stdout


@needs_libtpu
@pytest.mark.parametrize("args, says", [
    # an FSDP rule over 256 chips that the 32-wide embeddings cannot be split by
    (("--target", "v5e-256", "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.batch_size=256"),
     "cannot be split as the sharding rules ask on 256 chips"),
    (("--target", "v5e-8", "--config.mesh.tensor=3"), "mesh"),  # 3 does not divide 8 chips
    (("--target", "v5e-256",), "batch_size: 16 is not divisible"),  # 16 rows over 256 data shards
    (("--target", "v5e-8", "--slices", "2", "--config.mesh.dcn_data=4"), "dcn_data=4"),
    (("--target", "v5e-9",), "sizes"),
])
def test_plans_that_cannot_work_are_refused_in_one_line_before_compiling(args, says):
    r = _plan("--config", "tiny", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    # (the CUDA plugin, when installed for plan-gpu, logs that this machine has no GPU when jax loads)
    lines = [x for x in r.stderr.strip().splitlines() if "cudart_stub" not in x and "InitializeLog" not in x]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "compiling" not in r.stdout


def test_without_libtpu_one_line_says_what_to_install(monkeypatch):
    import electra_jax.plan as plan

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(PlanError, match=r"pip install .*\.\[tpu\]"):
        plan.target_devices(parse_target("v5e-8"))


def test_libtpu_without_a_tpu_keeps_other_commands_on_the_cpu(monkeypatch):
    from electra_jax import cli

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "libtpu" else real(name, *a))
    monkeypatch.setattr("glob.glob", lambda pattern: [])  # no /dev/accel*, no /dev/vfio: not a TPU VM
    cli._no_tpu_probe()
    assert os.environ["JAX_PLATFORMS"] in ("cpu", "cuda,cpu")


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="CUDA plugin not installed (pip install -e '.[plan-gpu]')")
@pytest.mark.slow
def test_tiny_compiled_for_eight_h100s():
    r = _plan("--config", "tiny", "--target", "h100x8")
    assert r.returncode == 0, r.stderr
    assert "8 x NVIDIA H100 80GB HBM3" in r.stdout and "FITS" in r.stdout and "all-reduce" in r.stdout
