"""Where a run's numbers go: a JSON-lines file (the record of truth, read by `plot` and `export`) and
TensorBoard event files (`tensorboard --logdir WORKDIR/tensorboard`). Only process 0 writes. Files go
through tf.io.gfile, so a gs:// workdir works like a local one."""

from __future__ import annotations

import io
import json
import os

from electra_jax.data.reader import host_tf


class MetricWriter:
    """write(step, split, {name: value}) -> WORKDIR/metrics.jsonl and WORKDIR/tensorboard/<split>."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard_dir = os.path.join(workdir, "tensorboard")
        self.enabled = enabled
        self._tb = {}

    def _summary_writer(self, split: str):
        if split not in self._tb:
            self._tb[split] = host_tf().summary.create_file_writer(os.path.join(self.tensorboard_dir, split))
        return self._tb[split]

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        tf = host_tf()
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **scalars}) + "\n")
        with self._summary_writer(split).as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
        self._tb[split].flush()

    def close(self) -> None:
        for writer in self._tb.values():
            writer.close()


def read_metrics(workdir: str) -> list[dict]:
    """The records of WORKDIR/metrics.jsonl; a line cut short by a crash is ignored."""
    gfile = host_tf().io.gfile
    path = os.path.join(workdir, "metrics.jsonl")
    if not gfile.exists(path):
        return []
    records = []
    with gfile.GFile(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# (title, [(split, metric)]) per panel of `electra-jax plot`.
PANELS = (
    ("loss (generator MLM + 50 x discriminator)", [("train", "loss")]),
    ("generator MLM loss", [("train", "mlm_loss"), ("eval", "masked_lm_loss")]),
    ("discriminator loss", [("train", "disc_loss"), ("eval", "disc_loss")]),
    ("generator accuracy", [("train", "mlm_accuracy"), ("eval", "masked_lm_accuracy")]),
    ("discriminator accuracy / AUC", [("train", "disc_accuracy"), ("eval", "disc_accuracy"),
                                      ("eval", "disc_auc")]),
    ("learning rate", [("train", "learning_rate")]),
)


def plot(workdir: str, out: str | None = None) -> str:
    """A PNG of the loss and accuracy curves from WORKDIR/metrics.jsonl; returns its path."""
    records = read_metrics(workdir)
    if not records:
        raise FileNotFoundError(f"{workdir}: no metrics.jsonl records yet; is this a pretrain --workdir?")
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'electra-jax[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, series) in zip(axes.ravel(), PANELS):
        for split, name in series:
            points = [(r["step"], r[name]) for r in records if r.get("split") == split and name in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if split == "eval" else None, label=f"{split} {name}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(workdir)
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    with host_tf().io.gfile.GFile(out, "wb") as f:  # a gs:// workdir gets its plot beside its metrics
        f.write(png.getvalue())
    return out
