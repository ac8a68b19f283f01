"""The decoder's learned state on disk: one JSON file, written atomically, refused when it is not ours.

``save_state(path, decoder.state_dict(), model_identity(model))`` and, after a restart,
``decoder.load_state_dict(load_state(path, model_identity(model)))``. The file::

    {"format": "swiftsd-state", "version": 1,
     "model": {"name": ..., "revision": ..., "dtype": ...},
     "saved": "2026-12-01T08:00:00+00:00", "sha256": "<of the state's canonical JSON>",
     "state": {...what SwiftDecoder.state_dict() returned...}}

A write goes to a temporary file in the same folder, is fsynced and renamed over
the old one (then the folder is fsynced), so a crash at any moment leaves either
the old file or the new one, never half of one. A load refuses, with one line that
says what to do: a file that is not JSON or is cut short, a digest that does not
match, another model's state, or a newer format version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, StateFileError
from .identity import ModelIdentity

__all__ = ["STATE_FILE_FORMAT", "STATE_FILE_VERSION", "check_state_file", "load_state", "save_state",
           "write_atomically"]

STATE_FILE_FORMAT = "swiftsd-state"
STATE_FILE_VERSION = 1


def _canonical(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False)


def save_state(path: str | Path, state: dict[str, Any], identity: ModelIdentity) -> Path:
    """Write ``state`` (plain JSON data) for the model ``identity`` to ``path``, atomically."""
    p = Path(path)
    if not isinstance(state, dict):
        raise InvalidArgumentError(f"the state to save must be a dict (SwiftDecoder.state_dict()), got "
                                   f"{type(state).__name__}")
    try:
        body = _canonical(state)
    except (TypeError, ValueError) as exc:  # a tensor, a set, NaN ...: a bug in whoever built the state
        raise StateFileError(f"cannot save the state to {p}: it is not plain JSON ({exc})") from None
    head = {"format": STATE_FILE_FORMAT, "version": STATE_FILE_VERSION, "model": identity.to_dict(),
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": hashlib.sha256(body.encode()).hexdigest()}
    text = json.dumps(head)[:-1] + ', "state": ' + body + "}\n"
    return write_atomically(p, text)


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the
    folder: a crash at any moment leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); where a folder cannot be opened, the rename still was atomic."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(path: str | Path, identity: ModelIdentity) -> dict[str, Any]:
    """The state saved in ``path`` for the model ``identity``; StateFileError when it cannot be used."""
    p = Path(path)
    saved, state = _read(p)
    diff = saved.mismatch(identity)
    if diff is not None:
        raise StateFileError(f"state file {p} was learned on {saved}, not on this model, {identity} ({diff}); "
                             "load the model it was saved with, or use another state file")
    return state


def check_state_file(path: str | Path) -> ModelIdentity:
    """The identity of the model ``path``'s state was learned on, once the file checks out as whole
    (so a command can refuse a broken file before it spends time loading a model)."""
    return _read(Path(path))[0]


def _read(p: Path) -> tuple[ModelIdentity, dict[str, Any]]:
    try:
        doc = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise StateFileError(f"state file {p} does not exist") from None
    except OSError as exc:
        raise StateFileError(f"cannot read state file {p}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise StateFileError(f"state file {p} is corrupt or truncated{where}; delete it to start afresh") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FILE_FORMAT:
        raise StateFileError(f"{p} is not a swiftsd state file (no \"format\": \"{STATE_FILE_FORMAT}\"); "
                             "point to the file swiftsd saved, or delete it to start afresh")
    version = doc.get("version")
    if isinstance(version, int) and version > STATE_FILE_VERSION:
        raise StateFileError(f"state file {p} has format version {version}, newer than this swiftsd reads "
                             f"({STATE_FILE_VERSION}): upgrade swiftsd")
    state = doc.get("state")
    if version != STATE_FILE_VERSION or not isinstance(state, dict) or not _digest_matches(doc, state):
        raise StateFileError(f"state file {p} is corrupt (its contents do not match its digest); "
                             "delete it to start afresh")
    try:
        saved = ModelIdentity.from_dict(doc.get("model"))
    except InvalidArgumentError:
        raise StateFileError(f"state file {p} is corrupt (no model identity); delete it to start afresh") from None
    return saved, state


def _digest_matches(doc: dict[str, Any], state: dict[str, Any]) -> bool:
    try:
        return hashlib.sha256(_canonical(state).encode()).hexdigest() == doc.get("sha256")
    except (TypeError, ValueError):
        return False
