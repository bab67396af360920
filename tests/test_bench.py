"""The benchmark suite runs end to end (tiny config, 2 timed steps, ours and the PyTorch peer) and
writes a well-formed results file that renders into BENCHMARKS.md. Nothing here asserts on speed."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("torch")


# What a GPU machine without TensorFlow looks like, to Python: importing them fails, and the checks
# libraries make first (transformers asks importlib.util.find_spec and importlib.metadata) say absent.
NO_TENSORFLOW = """import importlib.metadata, importlib.util, sys
ABSENT = ("tensorflow", "tensorflow_datasets", "tensorflow-cpu", "tensorflow-datasets", "tf-keras", "keras")
def absent(name):
    return name.split(".")[0] in ABSENT
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if absent(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Absent())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if absent(name) else _find_spec(name, package)
for fn in ("version", "distribution", "metadata"):
    def hidden(name, _real=getattr(importlib.metadata, fn)):
        if absent(name):
            raise importlib.metadata.PackageNotFoundError(name)
        return _real(name)
    setattr(importlib.metadata, fn, hidden)
"""


def _probe_wheel(folder):
    """A one-module wheel, standing in for the ml_collections wheel that launch/gpu_wheels.sh downloads."""
    import zipfile

    folder.mkdir()
    with zipfile.ZipFile(folder / "wheelprobe-1.0-py3-none-any.whl", "w") as z:
        z.writestr("wheelprobe.py", "CARRIED = True\n")
        z.writestr("wheelprobe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: wheelprobe\nVersion: 1.0\n")
        z.writestr("wheelprobe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("wheelprobe-1.0.dist-info/RECORD", "")


@pytest.mark.slow
def test_gpu_benchmark_script_runs_without_tensorflow(tmp_path):
    """launch/bench_gpu.sh as the GPU machine runs it (carried wheels installed into a scratch folder,
    no TensorFlow, a checkout that is not installed, started from another directory), on the smoke
    suite so that a CPU may run it; then its results render into BENCHMARKS.md."""
    blocker = tmp_path / "no_tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    _probe_wheel(tmp_path / "wheels")
    env = {**os.environ, "PYTHONPATH": str(blocker), "PYTHON": sys.executable, "BENCH_SUITE": "smoke",
           "BENCH_WHEELS": str(tmp_path / "wheels"), "BENCH_SITE": str(tmp_path / "site")}
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert check.returncode == 1 and "No module named 'tensorflow'" in check.stderr  # the blocker works
    run = subprocess.run(["bash", str(ROOT / "launch" / "bench_gpu.sh"), "results"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    out_dir = tmp_path / "results"
    assert sorted(p.name for p in out_dir.iterdir()) == ["bench.log", "smoke.json"]  # <= 8 files come back
    assert (tmp_path / "site" / "wheelprobe.py").exists()
    log = (out_dir / "bench.log").read_text()
    assert "installing 1 wheel(s)" in log and "== smoke" in log and "done in" in log
    out = out_dir / "smoke.json"
    record = json.loads(out.read_text())
    assert record["suite"] == "smoke" and record["steps"] == 2 and record["skipped"] == []
    assert {"jax", "flax", "optax", "torch", "transformers"} <= record["versions"].keys()
    impls = {r["impl"]: r for r in record["results"]}
    assert impls.keys() == {"electra-jax", "pytorch-eager"}
    for r in impls.values():
        assert "error" not in r, r
        assert r["step_s"] > 0 and r["sequences_per_s"] > 0 and r["case"] == "tiny@64"
        assert len(r["step_s_all"]) == 2
    ours = impls["electra-jax"]
    assert ours["batch_size"] == 16 and ours["seq_len"] == 64 and ours["compile_s"] > 0
    assert ours["model_tflops_per_s_per_device"] > 0
    [ratio] = record["ratios"]
    assert ratio["what"] == "electra-jax / pytorch-eager"
    assert ratio["speedup"] == pytest.approx(ours["sequences_per_s"] / impls["pytorch-eager"]["sequences_per_s"])

    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\nProse before.\n\n<!-- bench-table:begin -->\nold\n"
                        "<!-- bench-table:end -->\n\nProse after.\n")
    run = subprocess.run([sys.executable, "-m", "electra_jax.cli", "bench-table", str(out), "--markdown",
                          str(markdown)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    text = markdown.read_text()
    assert "Prose before." in text and "Prose after." in text and "\nold\n" not in text
    assert "| tiny@64 | electra-jax | baseline | float32 |" in text
    assert "| tiny@64 | electra-jax / pytorch-eager |" in text


def test_profile_breakdown_by_hand():
    from electra_jax.bench.profile import breakdown, category, part

    names = {  # instruction -> JAX name, as XLA records them
        "dot.1": "transpose(jvp(Electra.discriminator_logits))/discriminator/encoder/layer_3/output/dot_general",
        "dot.2": "jvp(Electra.discriminator_logits)/discriminator/encoder/layer_4/output/dot_general",
        "dot.3": "jvp(Electra.discriminator_logits)/discriminator/encoder/layer_5/output/dot_general",
        "rng.1": "jvp(Electra.generator_logits)/generator/encoder/layer_0/Dropout_0/jit(_bernoulli)/jit(_uniform)/add",
        "s.1": "jvp()/sampling/reduce_sum",
        "m.1": "jvp(masking)/jit(_gumbel)/jit(_uniform)/add",
        "adam.1": "optimizer/mul",
    }
    assert [category(names[k]) for k in names] == [
        "matmul", "matmul", "matmul", "random bits", "sampling", "random bits", "optimizer"]
    assert [part(names[k]) for k in names] == [
        "discriminator backward", "discriminator forward", "discriminator forward", "generator forward", "sampling", "masking",
        "optimizer"]
    times = {"dot.1": 4e9, "dot.2": 1e9, "dot.3": 1e9, "rng.1": 1e9, "s.1": 1e9, "m.1": 1e9, "adam.1": 1e9, "copy.7": 2e9}
    result = breakdown(times, names, steps=2, step_s=4.0)
    assert result["op_s"] == 6.0 and result["busy_cores"] == 1.5
    assert result["by_category"] == {"matmul": 3.0, "random bits": 1.0, "other": 1.0, "sampling": 0.5,
                                     "optimizer": 0.5}
    # layer numbers fold, so the same op of different layers adds up
    layers = "/discriminator/encoder/layer_*/output/dot_general"
    assert result["top_ops"]["jvp(Electra.discriminator_logits)" + layers] == 1.0
    assert result["top_ops"]["transpose(jvp(Electra.discriminator_logits))" + layers] == 2.0


@pytest.mark.slow
def test_profile_command_traces_and_breaks_down_the_tiny_step(tmp_path):
    results = tmp_path / "r.jsonl"
    run = subprocess.run([sys.executable, "-m", "electra_jax.cli", "bench", "--config", "configs/tiny.py",
                          "--steps", "1", "--warmup", "1", "--profile", str(tmp_path / "trace"),
                          "--results", str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "by category" in run.stdout
    profile = json.loads(results.read_text())["profile"]
    assert profile["by_category"]["matmul"] > 0 and profile["by_category"]["random bits"] > 0
    assert sum(profile["by_category"].values()) == pytest.approx(profile["op_s"], rel=1e-3)
    assert {"generator forward", "discriminator backward", "optimizer"} <= profile["by_part"].keys()
    assert list((tmp_path / "trace").glob("**/*.xplane.pb"))


def test_accelerator_runs_put_each_case_first_and_stop_starting_at_the_budget(tmp_path):
    from electra_jax.bench.suite import _job_groups, run_suite

    order = [(case.name, kind, label) for [(case, kind, label, _)] in
             _job_groups("gpu", None, True, True, None, interleave=False)]
    tiers = [0 if (kind, label) == ("ours", "baseline") else 1 if kind == "peer" else 2
             for _, kind, label in order]
    assert tiers == sorted(tiers)  # every case's own step, then the peers, then the variants
    assert [name for name, _, label in order[:6]] == ["small@128", "small@512", "base@128", "base@512",
                                                      "large@128", "large@512"]
    base_variants = {label for name, kind, label in order if name == "base@128" and kind == "ours"}
    assert {"rng rbg", "rng unsafe_rbg", "fused attention (dropout 0)", "Gumbel sampler"} <= base_variants
    # On a CPU the smoke case's runners stay together (interleaved).
    [group] = list(_job_groups("smoke", None, True, True, None, interleave=True))
    assert [(kind, label) for _, kind, label, _ in group] == [("ours", "baseline"), ("peer", "eager")]

    record = run_suite("smoke", str(tmp_path / "s.json"), peers=False, budget_s=0.0)
    assert record["results"] == [] and record["skipped"] == [
        {"case": "tiny@64", "variant": "baseline", "impl": "electra-jax"}]
    assert json.loads((tmp_path / "s.json").read_text())["skipped"] == record["skipped"]
