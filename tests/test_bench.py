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
