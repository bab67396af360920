"""The parity experiment: its statistics by hand, and the command end to end at a tiny budget."""

import json
import os

import numpy as np
import pytest

from electra_jax.experiments.parity import compare


def test_windows_compare_the_means_against_the_seed_noise():
    same = lambda loss: {"loss": loss, "mlm_loss": loss, "disc_loss": loss}
    runs = {"ours": [same([1, 1, 2, 2]), same([3, 3, 2, 2])],
            "theirs": [same([2, 2, 10, 10]), same([2, 2, 10.2, 10.2])]}
    rows = [r for r in compare(runs, window=2) if r["loss"] == "loss"]
    # Window 1: means (1, 3) vs (2, 2): difference 0, noise sqrt(2/2 + 0/2) = 1.
    assert rows[0]["steps"] == "1-2" and rows[0]["difference"] == 0 and rows[0]["noise"] == pytest.approx(1)
    assert rows[0]["ours"] == {"median": 2, "min": 1, "max": 3} and rows[0]["within_noise"]
    # Window 2: (2, 2) vs (10, 10.2): difference -8.1, noise sqrt(0 + 0.02/2) = 0.1: a real difference.
    assert rows[1]["difference"] == pytest.approx(-8.1) and rows[1]["noise"] == pytest.approx(0.1)
    assert not rows[1]["within_noise"]


def test_the_parity_command_runs_both_implementations(kjv64, tmp_path):
    pytest.importorskip("torch")
    from electra_jax.cli import main

    out = tmp_path / "parity"
    out.mkdir()
    os.symlink(kjv64, out / "data")  # the experiment reuses a build it finds in OUT/data
    assert main(["experiment", "parity", "--out", str(out), "--seeds", "2", "--window", "2",
                 "--config.num_train_steps=4", "--config.batch_size=8"]) == 0
    result = json.loads((out / "parity.json").read_text())
    assert [len(r["loss"]) for impl in ("ours", "theirs") for r in result["runs"][impl]] == [4] * 4
    for impl in ("ours", "theirs"):  # untrained generators: the first MLM loss is about ln(vocabulary)
        first = [r["mlm_loss"][0] for r in result["runs"][impl]]
        assert np.allclose(first, np.log(2048), rtol=0.05), (impl, first)
    assert len(result["comparison"]) == 2 * 3 and (out / "parity.png").stat().st_size > 0


def test_one_seed_is_refused_before_anything_runs(tmp_path, capsys):
    from electra_jax.cli import main

    assert main(["experiment", "parity", "--out", str(tmp_path / "p"), "--seeds", "1"]) == 2
    assert "--seeds >= 2 (the noise is the spread over seeds)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
