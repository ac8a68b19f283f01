"""swiftsd's on-disk cache of dense models: one protocol for every entry.

An entry is built in a private work dir, its marker written last, and renamed into place
(so a crashed load leaves no broken entry); a lock file makes concurrent loads build it
once. See the layout in :mod:`swiftsd.loading`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from ..persist.identity import CACHE_MARKER

CACHE_ENV = "SWIFTSD_CACHE_DIR"
CACHE_FORMAT = 1
MARKER = CACHE_MARKER  # swiftsd.persist.identity reads its "name" to name a model loaded from the cache
STALE_TMP_SECONDS = 24 * 3600


def _say(msg: str) -> None:
    print(f"swiftsd: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Root of swiftsd's cache: $SWIFTSD_CACHE_DIR, else the user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # declared dependency; fall back to the XDG default
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "swiftsd"
    return Path(user_cache_dir("swiftsd"))


def _read_marker(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    return data


def _clean_stale_tmp(root: Path) -> None:
    tmp = root / "tmp"
    if not tmp.is_dir():
        return
    now = time.time()
    for child in tmp.iterdir():
        try:
            if now - child.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        except OSError:
            pass


def _install_entry(
    final: Path,
    build: Callable[[Path, Path], dict[str, Any]],
    is_current: Callable[[dict[str, Any] | None], bool] = lambda marker: marker is not None,
) -> Path:
    """Build a cache entry in a private work dir and rename it into place.

    ``build(out, work)`` writes the entry into ``out`` (``work`` is scratch space
    for it, e.g. for an assembled GGUF) and returns what to record in the marker.
    The marker is written last, and ``out`` only becomes ``final`` by an atomic
    rename, so an interrupted build never leaves a half-written entry; the work
    dir, assembled GGUF included, is removed either way. An existing entry for
    which ``is_current(marker)`` is false (broken, or built from another
    source) is replaced; if a concurrent load installed a current one first,
    that one is kept. Concurrent loads of one entry build it once: the others wait
    on a lock file and then use what the first built.
    """
    root = final.parent.parent
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final):
        if is_current(_read_marker(final)):  # another process built it while this one waited
            return final
        return _build_entry(final, build, is_current)


@contextlib.contextmanager
def _build_lock(final: Path) -> Iterator[None]:
    """An exclusive lock on ``final``'s build, in ``<cache>/locks/`` (POSIX flock; none elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: concurrent builds stay safe, only wasteful
        yield
        return
    locks = final.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{final.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(f"waiting for another swiftsd process that is building {final.name} in the cache")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_entry(
    final: Path, build: Callable[[Path, Path], dict[str, Any]], is_current: Callable[[dict[str, Any] | None], bool]
) -> Path:
    root = final.parent.parent
    _clean_stale_tmp(root)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}-", dir=root / "tmp"))
    try:
        out = work / "out"
        out.mkdir()
        info = build(out, work)
        marker = {"format": CACHE_FORMAT, "created": time.time(), **info}
        (out / MARKER).write_text(json.dumps(marker, indent=2, default=str))
        if final.exists() and not is_current(_read_marker(final)):  # broken or outdated: move aside
            try:
                os.rename(final, work / f"old-{uuid.uuid4().hex}")
            except OSError:
                pass
        try:
            os.rename(out, final)
        except OSError:
            if not is_current(_read_marker(final)):  # nobody else installed a good one meanwhile
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
