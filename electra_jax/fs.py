"""Paths and files, below every other module: local paths resolved once, TensorFlow's gfile (local and
gs:// alike) kept off the accelerators, and files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import sys

from electra_jax.errors import UserError


class PathError(UserError, OSError):
    """An output location that cannot be written; says which and what to do."""


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
    if not is_remote(path):  # no TensorFlow import for a local file (a CLI error comes in a blink)
        with open(path, encoding="utf-8") as f:
            return f.read()
    with host_tf().io.gfile.GFile(path) as f:
        return f.read()


def write_text_atomic(path: str, text: str) -> None:
    """Write `path` under a temporary name and rename it into place, so a reader never sees half."""
    gfile = host_tf().io.gfile
    tmp = f"{path}.tmp-{os.getpid()}"
    with gfile.GFile(tmp, "w") as f:
        f.write(text)
    gfile.rename(tmp, path, overwrite=True)


def writable_dir(path: str, flag: str = "--out", keep: bool = True) -> None:
    """Prove a file can be written in directory `path` (created if needed; with `keep=False` what was
    created is removed again): an output location that cannot take the result fails before the work,
    not after it. Remote paths are probed through gfile."""
    if is_remote(path):
        gfile = host_tf().io.gfile
        probe = f"{path.rstrip('/')}/.write-test-{os.getpid()}"
        try:
            gfile.makedirs(path)
            with gfile.GFile(probe, "w") as f:
                f.write("ok")
            gfile.remove(probe)
        except Exception as e:  # tf raises NotFound, PermissionDenied, ... with the server's reason
            raise PathError(f"cannot write to {flag} {path}: {str(e)[:300]}; check the bucket name and this "
                            "machine's credentials (gcloud auth application-default login, or the VM's "
                            "service account scopes)") from None
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise PathError(f"{flag} {path} is a file; give a directory")
    missing = path
    while not os.path.exists(os.path.dirname(missing)) and os.path.dirname(missing) != missing:
        missing = os.path.dirname(missing)  # the outermost directory this call creates
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PathError(f"cannot write to {flag} {path}: {e.strerror or e}; choose a writable directory") from None
    if created and not keep:
        import shutil

        shutil.rmtree(missing)
