"""GGUF weights into a cached dense model: assemble chunks, dequantise once, save."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingPackageError, ModelNotFoundError, UnsupportedModelError
from ..progress import Ticker, hf_bars
from .model_cache import _install_entry, _read_marker, _say, cache_dir
from .packaged import PackagedModel


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
