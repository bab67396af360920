"""Checkpoints with orbax: the train state (sharded, async, keep-N, atomic) plus, beside each step, every
host's data-reader position, so a resumed run continues with exactly the batches it would have seen.

Layout under the workdir:  checkpoints/<step>/{state, meta}  (orbax)  and  data_state/<step>/host-<i>.
A step directory appears only once orbax has committed it, so a crash mid-save leaves the previous
step as the latest. The workdir may be local or gs://.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from electra_jax.errors import UserError
from electra_jax.fs import host_tf, resolve


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used here; the message says why and what to do."""


class Checkpoints:
    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, best=None):
        """`best(metrics) -> float`: keep the `keep` highest-scoring steps instead of the latest."""
        self.workdir = resolve(workdir)  # orbax refuses relative paths (and only in its save thread)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.saving: int | None = None  # the step of a save not yet known to have finished
        self.failed = False
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save,
                                                 best_fn=best, best_mode="max"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        """True on every host once any host got a preemption notice (orbax's multi-host sync point)."""
        return self.manager.reached_preemption(step)

    def _reader_path(self, step: int) -> str:
        return os.path.join(self.workdir, "data_state", str(step), f"host-{jax.process_index()}")

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, meta: dict, reader=None, metrics: dict | None = None) -> None:
        """Start an async save of `state` (and write the reader position now, it is small). A previous
        save still running is waited for first, and its failure raised (orbax would raise it bare)."""
        self.wait()
        if reader is not None:
            host_tf().io.gfile.makedirs(os.path.dirname(self._reader_path(step)))
            reader.save(self._reader_path(step))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)
        self.saving = step
        self._drop_stale_reader_positions(keep={step, *self.all_steps()})

    def _drop_stale_reader_positions(self, keep: set[int]) -> None:
        if jax.process_index() != 0:  # one host cleans the shared workdir; several would race
            return
        root = os.path.join(self.workdir, "data_state")
        gfile = host_tf().io.gfile
        for name in gfile.listdir(root) if gfile.isdir(root) else []:
            name = name.rstrip("/")
            if name.isdigit() and int(name) not in keep:
                gfile.rmtree(os.path.join(root, name))

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state: Any, reader=None) -> Any:
        """The state at `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        if reader is not None:
            path = self._reader_path(step)
            if step == 0 and not host_tf().io.gfile.exists(path + ".index"):
                return restored["state"]  # an imported model: no batch read yet, start the data fresh
            if not host_tf().io.gfile.exists(path + ".index"):
                raise CheckpointError(f"{path}: no data-reader position for step {step}; the run cannot "
                                      "resume its data order exactly (was it saved by another version?)")
            reader.restore(path)
        return restored["state"]

    def check(self) -> None:
        """Raise CheckpointError if the last async save failed; call it every step (it does not
        block while the save runs). orbax only logs such a failure in its thread, so without this a
        run would train on, saving nothing, until the next save or the end."""
        if self.saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Block until the last save is committed; CheckpointError naming the step if it failed."""
        step, self.saving = self.saving, None
        if self.failed:  # already reported; orbax would raise the same error again
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # orbax re-raises whatever its save thread hit
            if step is None:
                raise
            self.failed = True
            raise CheckpointError(
                f"saving step {step} to {os.path.join(self.directory, str(step))} failed: "
                f"{type(e).__name__}: {str(e)[:300]}. Nothing of step {step} was kept; the latest "
                f"complete checkpoint is step {self.latest_step()}. Fix the cause (disk space, "
                "permissions, the bucket) and rerun the same command to resume from there.") from None

    def close(self) -> None:
        """Finish the pending save and release orbax's threads; after a failed save, only release."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # the failure already surfaced (orbax re-raises it on close)
                if not self.failed:
                    raise
