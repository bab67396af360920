"""Where a run's numbers go: a JSON-lines file (the record of truth, read by `plot` and `export`) and
TensorBoard event files (`tensorboard --logdir WORKDIR/tensorboard`). Only process 0 writes. Files go
through tf.io.gfile, so a gs:// workdir works like a local one."""

from __future__ import annotations

import io
import json
import os
import sys
import time

from electra_jax.fs import host_tf, write_text_atomic


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

    @staticmethod
    def drop_after(workdir: str, step: int) -> int:
        """Remove metrics.jsonl records past `step` (a rerun resuming there writes them again), so the
        file holds each step once; returns how many were dropped. TensorBoard's event files are left:
        they are append-only (TensorBoard shows the rerun's points beside the old ones)."""
        records = read_metrics(workdir)
        keep = [r for r in records if r.get("step", 0) <= step]
        if len(keep) < len(records):
            write_text_atomic(os.path.join(workdir, "metrics.jsonl"),
                              "".join(json.dumps(r) + "\n" for r in keep))
        return len(records) - len(keep)


class Progress:
    """Progress of a loop of steps: a tqdm bar on a terminal; in a log file (no terminal), a plain line
    at most every `every_s` seconds, since a redrawn bar there is one endless line. The clock starts at
    `start()`, called after the first step has compiled, so the rate and ETA are training's."""

    def __init__(self, total: int, enabled: bool = True, every_s: float = 30.0, unit: str = "step"):
        self.total, self.enabled, self.every_s, self.unit = total, enabled, every_s, unit
        self.terminal = enabled and sys.stderr.isatty()
        self.bar, self.step, self.started, self.last_line = None, 0, None, 0.0
        self.start_step = 0

    def start(self, step: int) -> None:
        from tqdm import tqdm

        self.step = self.start_step = step
        self.started = self.last_line = time.perf_counter()
        if self.terminal:
            self.bar = tqdm(total=self.total, initial=step, unit=self.unit, dynamic_ncols=True)

    def update(self, step: int, **postfix: str) -> None:
        """At `step`; `postfix` (e.g. loss) is shown beside the bar, or in the next log line."""
        if self.started is None:
            self.start(step)
            return
        if self.bar is not None:
            self.bar.update(step - self.step)
            if postfix:
                self.bar.set_postfix(postfix)
        self.step = step
        now = time.perf_counter()
        if self.enabled and not self.terminal and postfix and (
                now - self.last_line >= self.every_s or step == self.total):
            rate = (step - self.start_step) / max(now - self.started, 1e-9)
            fields = ", ".join(f"{k} {v}" for k, v in postfix.items())
            speed = f", {rate:.2f} {self.unit}/s, ETA {(self.total - step) / rate / 60:.1f} min" if rate > 0 else ""
            print(f"step {step}/{self.total}: {fields}{speed}", flush=True)
            self.last_line = now

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        elif self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        if ax.lines:  # a panel with no records has nothing to label
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
