"""On-disk cache of quantized draft weights, next to the dense model cache.

Quantizing and packing every projection of qwen2.5-coder-1.5b takes tens of seconds on
a 2-core CPU; reading the packed tensors back takes a few. Layout::

    <cache>/quant/<model>-<digest>.pt    one file per (model identity, precision, group,
                                         activation dtype, torch version, device kind)

The key includes the torch version and the device kind (the CPU's vector width, or the
GPU's compute capability) because the int4 layout is the kernel's own: PyTorch packs
64-wide blocks on AVX-512 and 32-wide on AVX2, so a file packed elsewhere would compute
garbage. A file is written to a temporary name and renamed into place (a crash leaves no
half-written file). On load, the key, a digest of every tensor's bytes and every entry's
shapes and dtypes are checked against the model; a file that fails any check (corrupt,
truncated, another model, another torch) is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.quant import DEFAULT_GROUP, QuantizedWeights, check_settings, covered_modules
from ..engine.quant_pack import PackedLinear, refusal
from ..persist.identity import model_identity
from .model_cache import _say, cache_dir

QUANT_FORMAT = 1


class UnusableCacheFile(ValueError):
    """A cache file that loads but does not fit this model and setting."""


def device_kind(device: torch.device) -> str:
    """What the packed int4 layout depends on: the CPU's vector ISA, or the GPU's architecture."""
    if device.type == "cpu":
        return f"cpu-{torch.backends.cpu.get_cpu_capability()}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}" + ("-hip" if torch.version.hip else "")
    return device.type


def cache_key(model: nn.Module, precision: str, group: int, compute_dtype: torch.dtype) -> dict[str, Any]:
    device = model.lm_head.weight.device
    return {"format": QUANT_FORMAT, "identity": model_identity(model).to_dict(), "precision": precision,
            "group": group if precision == "int4" else 0, "compute_dtype": str(compute_dtype),
            "torch": str(torch.__version__), "device": device_kind(device)}


def cache_path(key: dict[str, Any]) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key["identity"]["name"]).name)[:60] or "model"
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    return cache_dir() / "quant" / f"{name}-{key['precision']}-{digest}.pt"


def load_or_build(model: nn.Module, precision: str, group: int = DEFAULT_GROUP,
                  compute_dtype: torch.dtype = torch.bfloat16, use_cache: bool = True) -> QuantizedWeights:
    """The model's quantized draft weights: read from the cache when a valid file is there, else
    built (and then cached; a cache that cannot be written only costs the next load a rebuild)."""
    check_settings(precision, group)
    key = cache_key(model, precision, group, compute_dtype)
    path = cache_path(key)
    if use_cache and path.exists():
        try:
            return from_state(model, torch.load(path, map_location=model.lm_head.weight.device, weights_only=True),
                              key, compute_dtype)
        except UnusableCacheFile as exc:
            _say(f"rebuilding the quantized draft weights in {path.name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt, never trusted
            _say(f"rebuilding the quantized draft weights in {path.name}: the file cannot be read "
                 f"({type(exc).__name__})")
    t0 = time.perf_counter()
    qw = QuantizedWeights.build(model, precision, group, compute_dtype)
    if use_cache:
        try:
            _atomic_save(to_state(qw, key), path)
        except OSError as exc:
            _say(f"could not cache the quantized draft weights at {path}: {exc}")
    _say(f"quantized draft weights built in {time.perf_counter() - t0:.1f} s: {qw.summary()}")
    return qw


def to_state(qw: QuantizedWeights, key: dict[str, Any]) -> dict[str, Any]:
    entries = {qw.names[m]: {"precision": p.precision, "group": p.group, "weight": p.weight, "scales": p.scales}
               for m, p in qw.packed.items()}
    fallback_names = sorted(n for m, n in qw.names.items() if m not in qw.packed)
    return {"key": key, "entries": entries, "fallback_names": fallback_names, "fallbacks": list(qw.fallbacks),
            "digest": _digest(entries)}


def from_state(model: nn.Module, state: dict[str, Any], key: dict[str, Any], compute_dtype: torch.dtype
               ) -> QuantizedWeights:
    """Rebuild the weights from a loaded file; UnusableCacheFile on anything that does not fit this model."""
    if not isinstance(state, dict) or state.get("key") != key:
        raise UnusableCacheFile("the file was written for another model, setting, torch version or device")
    entries = state["entries"]
    if state.get("digest") != _digest(entries):
        raise UnusableCacheFile("its tensors do not match their digest (a corrupt file)")
    targets, routed, _ = covered_modules(model)
    names = {m: n for n, m in model.named_modules()}
    by_name = {names[m]: m for m in targets}
    if set(entries) | set(state["fallback_names"]) != set(by_name) or set(entries) & set(state["fallback_names"]):
        raise UnusableCacheFile("its matrices are not this model's")
    packed = {}
    for name, e in entries.items():
        mod = by_name[name]
        p = PackedLinear(e["precision"], int(e["group"]), e["weight"], e["scales"], mod.bias, mod.out_features,
                         mod.in_features, compute_dtype)
        _check_entry(p, key, mod.weight.device)
        packed[mod] = p
    qw = QuantizedWeights(key["precision"], key["group"], compute_dtype, packed, {m: names[m] for m in targets},
                          frozenset(routed), model.lm_head, tuple(state["fallbacks"]),
                          sum(m.weight.nbytes for m in targets))
    qw.warn_fallbacks()
    return qw


def _check_entry(p: PackedLinear, key: dict[str, Any], device: torch.device) -> None:
    n, k = p.out_features, p.in_features
    allowed = ("int4", "int8") if key["precision"] == "int4" else ("int8",)
    if p.precision not in allowed or refusal(p.precision, n, k, key["group"], device) is not None:
        raise UnusableCacheFile(f"an entry of precision {p.precision!r} that this setting or shape cannot have")
    if p.weight.device != device or p.scales.dtype != p.compute_dtype:
        raise UnusableCacheFile("an entry on another device or in another dtype")
    if p.precision == "int8":
        ok = p.weight.dtype == torch.int8 and p.weight.shape == (n, k) and p.scales.shape == (n,)
    else:
        ok = (p.group == key["group"] and p.weight.nbytes == n * k // 2
              and p.weight.dtype in (torch.uint8, torch.int32) and p.scales.shape == (k // p.group, n, 2))
    if not ok:
        raise UnusableCacheFile("an entry whose shapes do not fit its matrix")


def _digest(entries: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(entries):
        e = entries[name]
        h.update(f"{name}:{e['precision']}:{e['group']}".encode())
        for t in (e["weight"], e["scales"]):
            h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
            h.update(memoryview(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
