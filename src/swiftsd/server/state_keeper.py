"""``--state FILE``: the decoder's learned state restored at start, saved every interval and at shutdown.

Saves are taken on the engine's worker thread (its ``tick``), between decoding
steps, because that thread is the only one that touches the decoder: the state is
never read half-updated. The final save at shutdown runs after the worker has
stopped. After a SIGKILL the file holds the last periodic save, so at most one
interval of learning is lost.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import StateFileError
from ..persist.identity import ModelIdentity
from ..persist.state_file import check_state_file, load_state, save_state
from .metrics import Metrics

log = logging.getLogger("swiftsd.server")


def say(msg: str) -> None:
    """One line for the operator, on stderr."""
    print(f"swiftsd: {msg}", file=sys.stderr, flush=True)


def _reset_hint(exc: StateFileError) -> StateFileError:
    return StateFileError(f"{exc} (or pass --state-reset to start fresh)")


def check_before_load(path: str | Path, reset: bool) -> None:
    """Refuse a broken --state file before the model is loaded (its identity is checked after)."""
    if reset or not Path(path).exists():
        return
    try:
        check_state_file(path)
    except StateFileError as exc:
        raise _reset_hint(exc) from None


class StateKeeper:
    """Owns the state file of one server."""

    def __init__(self, decoder: Any, path: str | Path, identity: ModelIdentity, interval: float,
                 metrics: Metrics) -> None:
        self.decoder, self.path, self.identity = decoder, Path(path), identity
        self.interval, self.metrics = interval, metrics
        self._last = time.monotonic()
        self._dirty = False  # the decoder decoded since the last save

    def restore(self, reset: bool) -> None:
        """At start: load the file into the decoder, or say why the server starts fresh."""
        if reset:
            say(f"--state-reset: starting with a fresh state; {self.path} will be overwritten at the first save")
            return
        if not self.path.exists():
            when = f"every {self.interval:g} s and at shutdown" if self.interval else "at shutdown"
            say(f"no state file at {self.path} yet: starting fresh; it is saved {when}")
            return
        try:
            state = load_state(self.path, self.identity)
        except StateFileError as exc:
            raise _reset_hint(exc) from None
        self.decoder.load_state_dict(state)
        opt = self.decoder.optimizer
        learned = (f" (optimizer: {opt.state.phase}, {opt.state.iterations} proposals scored over "
                   f"{opt.state.requests} requests)") if opt is not None else ""
        say(f"restored the learned state from {self.path}{learned}")

    def tick(self, worked: bool) -> None:
        """On the worker thread, after a step (``worked``) or when idle: save once the interval has
        passed, if the decoder has decoded since the last save."""
        self._dirty = self._dirty or worked
        if self._dirty and self.interval and time.monotonic() - self._last >= self.interval:
            self.save()

    def save(self) -> bool:
        """Write the decoder's state now (call only from the thread that runs the decoder)."""
        self._last, self._dirty = time.monotonic(), False
        try:
            save_state(self.path, self.decoder.state_dict(), self.identity)
        except Exception:  # noqa: BLE001 - a failed save must not stop the server; the next one may succeed
            log.exception("could not save the learned state to %s", self.path)
            self.metrics.add("state_saves", "error")
            return False
        self.metrics.add("state_saves", "ok")
        return True
