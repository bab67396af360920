"""The benchmark suite runs end to end (tiny config, 2 timed steps, ours and the PyTorch peer) and
writes a well-formed results file that renders into BENCHMARKS.md. Nothing here asserts on speed."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def test_smoke_suite_writes_results_and_table(tmp_path):
    out = tmp_path / "smoke.json"
    run = subprocess.run([sys.executable, "-m", "electra_jax.cli", "bench", "--suite", "smoke", "--out",
                          str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["suite"] == "smoke" and record["steps"] == 2
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
                          str(markdown)], capture_output=True, text=True)
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
