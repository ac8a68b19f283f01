"""Which model a piece of learned state belongs to, computed from the model itself.

Tuned skip sets (the store) and saved decoder state are only valid for the model
they were learned on. :func:`model_identity` says which model that is from what
the model carries anyway (its ``config``, its weights, its dtype), so nothing
has to be written onto ``model.config`` (it would leak into ``save_pretrained``).

* ``name``: the packaged short name (``smollm2-135m``), else the path or hub id
  ``from_pretrained`` read (``config._name_or_path``), else the class name;
* ``revision``: ``rev:<commit>`` for a hub download, else ``sha256:<16 hex>``
  of the config and a sample of every weight tensor, so two different local
  models never share an identity even if they share a path;
* ``dtype``: ``float32`` / ``bfloat16`` / ``float16``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["ModelIdentity", "model_identity"]

CACHE_MARKER = "swiftsd-cache.json"  # written by swiftsd.loading next to a cached (dequantised) model
_SAMPLES = 64  # values read from each weight tensor for the fingerprint
# config keys that say where or how a model was loaded, not which model it is
_VOLATILE = {"_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
             "_attn_implementation_autoset", "attn_implementation", "use_cache", "quantization_config"}


@dataclass(frozen=True)
class ModelIdentity:
    """Name, revision (or content hash) and dtype of one loaded model."""

    name: str
    revision: str
    dtype: str

    def __str__(self) -> str:
        return f"{self.name} ({self.revision}, {self.dtype})"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelIdentity":
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("name", "revision", "dtype")):
            raise InvalidArgumentError(f"a model identity is an object with string fields name, revision, dtype; "
                                       f"got {str(d)[:120]!r}")
        return cls(d["name"], d["revision"], d["dtype"])

    def mismatch(self, other: "ModelIdentity") -> str | None:
        """What differs from ``other``, in words (None when they are the same model)."""
        diffs = [f"{field} {getattr(other, field)!r} here, {getattr(self, field)!r} there"
                 for field in ("name", "revision", "dtype") if getattr(self, field) != getattr(other, field)]
        return "; ".join(diffs) or None


def model_identity(model: Any) -> ModelIdentity:
    """The identity of a loaded model (a few milliseconds: it samples, not hashes, the weights)."""
    config = getattr(model, "config", None)
    source = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or ""
    name = _packaged_name(str(source)) or str(source) or type(model).__name__
    commit = getattr(config, "_commit_hash", None)
    revision = f"rev:{commit}" if commit else f"sha256:{_content_hash(model, config)}"
    dtype = getattr(model, "dtype", None)
    return ModelIdentity(name, revision, str(dtype).replace("torch.", "") if dtype is not None else "unknown")


def _packaged_name(source: str) -> str | None:
    """A model loaded from swiftsd's cache is named by what the cache entry was built from."""
    if not source:
        return None
    marker = Path(source) / CACHE_MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name else Path(source).name  # an entry is named after its source


def _content_hash(model: Any, config: Any) -> str:
    h = hashlib.sha256()
    if config is not None and hasattr(config, "to_dict"):
        cfg = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    named = getattr(model, "named_parameters", None)
    if named is not None:
        with torch.no_grad():
            for pname, p in named():
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // _SAMPLES)
                sample = flat[::step][:_SAMPLES].float().cpu()
                h.update(f"{pname}:{tuple(p.shape)}:{p.dtype}".encode())
                h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
