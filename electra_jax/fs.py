"""Paths and files, below every other module: local paths resolved once, TensorFlow's gfile (local and
gs:// alike) kept off the accelerators, and files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import sys


def is_remote(path: str) -> bool:
    """gs://, s3://, ram://, ...: paths that go through tf.io.gfile instead of the local filesystem."""
    return "://" in path


def resolve(path: str | None) -> str | None:
    """An absolute local path (`~` expanded), or a remote path untouched.

    Done once where a path enters (the CLI, the library's entry points): orbax refuses relative
    checkpoint paths, and a path that stays relative means something else after a chdir."""
    if not path or is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def split_step(path: str) -> tuple[str, int | None]:
    """`WORKDIR:step` -> (WORKDIR, step); a path without a numeric suffix (gs://x) -> (path, None)."""
    head, sep, tail = path.rpartition(":")
    if sep and tail.isdigit() and head:
        return head, int(tail)
    return path, None


def host_tf():
    """TensorFlow for host work (tf.data, tf.io.gfile, summaries), kept off the accelerators.

    TensorFlow must not claim accelerator memory that JAX needs; it only feeds the host. Its native
    start-up lines (oneDNN, absl::InitializeLog) are silenced: they ignore TF_CPP_MIN_LOG_LEVEL, and an
    import failure still raises with its message."""
    if "tensorflow" not in sys.modules:
        with _native_stderr_silenced():
            import tensorflow  # noqa: F401
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # already initialised: too late to change, and then it was set before
    return tf


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 points at /dev/null inside the block (C++ logging bypasses sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def exists(path: str) -> bool:
    return host_tf().io.gfile.exists(path) if is_remote(path) else os.path.exists(path)


def read_text(path: str) -> str:
    with host_tf().io.gfile.GFile(path) as f:
        return f.read()


def write_text_atomic(path: str, text: str) -> None:
    """Write `path` under a temporary name and rename it into place, so a reader never sees half."""
    gfile = host_tf().io.gfile
    tmp = f"{path}.tmp-{os.getpid()}"
    with gfile.GFile(tmp, "w") as f:
        f.write(text)
    gfile.rename(tmp, path, overwrite=True)
