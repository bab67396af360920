"""Stopping a training loop on request without losing it: SIGTERM (a TPU maintenance event, Slurm,
`kill`) and the first Ctrl-C ask the loop to save its step and return; a second Ctrl-C stops at once
(KeyboardInterrupt, nothing more saved).

    with StopRequest() as stop:
        while ...:
            step()
            if stop.requested:  # "SIGTERM" or "Ctrl-C"
                save(); break
"""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    def __init__(self, enabled: bool = True):
        """`enabled=False`: install nothing (multi-host jobs, where JAX's coordination service turns
        SIGTERM into a step every host agrees on, and a handler here would let hosts stop apart)."""
        self.enabled = enabled
        self.requested: str | None = None
        self._previous = {}

    def _on_term(self, *_):
        self.requested = self.requested or "SIGTERM"

    def _on_int(self, *_):
        self.requested = self.requested or "Ctrl-C"
        print("Ctrl-C: saving this step, then stopping (Ctrl-C again: stop at once, without saving)",
              file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def install(self) -> None:
        if self.enabled and threading.current_thread() is threading.main_thread():  # where Python allows it
            self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_term),
                              signal.SIGINT: signal.signal(signal.SIGINT, self._on_int)}

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
