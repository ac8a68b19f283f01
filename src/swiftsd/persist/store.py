"""Layer-set store: tuned skip sets in one JSON file, keyed by model identity and task.

Layout (version 1)::

    {"version": 1,
     "entries": {"<model key>": {"<task>": {"skip_set": {"attn": [...], "mlp": [...]},
                                            "matchness": 0.81, "date": "2026-11-24T01:00:00+00:00",
                                            "num_layers": 24, ...extra fields...}}}}

The model key is the ``name`` of :func:`swiftsd.persist.identity.model_identity` (the
packaged short name, or the path / hub id a model was loaded from); an entry
written from an optimiser also records the identity's revision and dtype. Writes
replace the file atomically, so a reader never sees half a store.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.skipset import SkipSet
from ..errors import InvalidArgumentError, InvalidSkipSetError
from .identity import model_identity

if TYPE_CHECKING:
    from ..optimize.optimizer import SkipOptimizer

STORE_VERSION = 1


@dataclass(frozen=True)
class StoreEntry:
    """One tuned set with what is known about it."""

    skip_set: SkipSet
    matchness: float | None
    date: str
    num_layers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"skip-set store {str(path)!r} is not valid JSON ({exc.msg}, line {exc.lineno}); "
            "fix it or point to a new file") from exc
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read skip-set store {str(path)!r}: {exc.strerror}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise InvalidArgumentError(
            f"{str(path)!r} is not a swiftsd skip-set store (expected an object with an 'entries' map); "
            "write one with `swiftsd tune --out FILE`")
    if data.get("version", STORE_VERSION) > STORE_VERSION:
        raise InvalidArgumentError(f"skip-set store {str(path)!r} has version {data['version']}; "
                                   f"this swiftsd reads up to {STORE_VERSION}: upgrade swiftsd")
    return data


def read_store(path: str | Path, missing_ok: bool = True) -> dict[str, Any]:
    """The whole store as a dict (an empty store when the file does not exist and ``missing_ok``)."""
    p = Path(path)
    if not p.exists():
        if missing_ok:
            return {"version": STORE_VERSION, "entries": {}}
        raise InvalidArgumentError(f"skip-set store {str(p)!r} does not exist; create one with "
                                   "`swiftsd tune --model M --data FILE --out FILE`")
    return _read(p)


def load_entry(path: str | Path, model_key: str, task: str, missing_ok: bool = False) -> StoreEntry | None:
    """The stored entry for (model, task), or None when there is none."""
    raw = read_store(path, missing_ok=missing_ok)["entries"].get(model_key, {}).get(task)
    if raw is None:
        return None
    try:
        skip = SkipSet.from_dict(raw["skip_set"])
    except (KeyError, TypeError, InvalidSkipSetError) as exc:
        raise InvalidArgumentError(f"skip-set store {str(path)!r}: entry {model_key!r}/{task!r} is malformed "
                                   f"({exc}); re-run `swiftsd tune` for it") from exc
    known = {"skip_set", "matchness", "date", "num_layers"}
    return StoreEntry(skip, raw.get("matchness"), str(raw.get("date", "")), raw.get("num_layers"),
                      {k: v for k, v in raw.items() if k not in known})


def load_skip_set(path: str | Path, model_key: str, task: str, missing_ok: bool = False) -> SkipSet | None:
    """The stored skip set for (model, task), or None. A missing file is an error unless ``missing_ok``."""
    entry = load_entry(path, model_key, task, missing_ok=missing_ok)
    return entry.skip_set if entry is not None else None


def save_skip_set(path: str | Path, model_key: str, task: str, skip_set: SkipSet, matchness: float | None,
                  num_layers: int | None = None, **extra: Any) -> None:
    """Add or replace the entry for (model, task), keeping every other entry; dated now (UTC)."""
    p = Path(path)
    data = read_store(p, missing_ok=True)
    entry = {"skip_set": skip_set.to_dict(), "matchness": matchness,
             "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "num_layers": num_layers, **extra}
    data["version"] = STORE_VERSION
    data["entries"].setdefault(model_key, {})[task] = entry
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_key(model: Any) -> str:
    """The store key of a loaded model (its packaged short name, path or hub id)."""
    return model_identity(model).name


def resolve_start_set(path: str | Path | None, model: Any, task: str = "default",
                      missing_ok: bool = False) -> SkipSet | None:
    """For ``--skip-set-store FILE --task T``: the stored set for this model and task, checked
    against the model's layer count; None when ``path`` is None or nothing is stored.

    Pass the result as ``SwiftDecoder(model, tok, skip_set=...)``: the optimiser starts
    from it. ``missing_ok=True`` (a server that will write the store on shutdown) treats
    a missing file as empty.
    """
    if path is None:
        return None
    entry = load_entry(path, model_key(model), task, missing_ok=missing_ok)
    if entry is None:
        return None
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layers is not None:
        try:
            entry.skip_set.validate(int(layers))
        except InvalidSkipSetError as exc:
            raise InvalidSkipSetError(f"stored skip set for {model_key(model)!r}/{task!r} in {str(path)!r} "
                                      f"does not fit this model: {exc}") from exc
    return entry.skip_set


def save_optimizer_result(path: str | Path, model: Any, task: str, optimizer: "SkipOptimizer") -> bool:
    """Store the optimiser's best set for (model, task); False (nothing written) if it was never scored."""
    skip, matchness = optimizer.best()
    if matchness is None:
        return False
    d = optimizer.status()
    ident = model_identity(model)
    save_skip_set(path, ident.name, task, skip, matchness, num_layers=optimizer.num_layers,
                  revision=ident.revision, dtype=ident.dtype,
                  objective=d["objective"], predicted_speedup=d["predicted_speedup"],
                  measured_speedup=d["measured_speedup"], iterations=d["iterations"],
                  draft_cost=d["draft_cost"], phase=d["phase"])
    return True
