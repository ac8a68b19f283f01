"""swiftsd: SWIFT on-the-fly self-speculative decoding for Hugging Face LLMs.

The names that need torch (the decoder, its results, model identity) are imported on first use,
so ``import swiftsd`` and every ``swiftsd ... --help`` stay instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import OptimizerConfig, SamplingParams, SwiftConfig
from .errors import (
    ContextLengthError,
    InvalidArgumentError,
    InvalidSkipSetError,
    MissingPackageError,
    ModelNotFoundError,
    SlowDtypeWarning,
    StateFileError,
    SwiftSDError,
    UnsupportedModelError,
)
from .engine.skipset import SkipSet
from .stats import GenerationStats

if TYPE_CHECKING:
    from .core.decoder import GenerationResult, GenerationStream, SwiftDecoder
    from .persist.identity import ModelIdentity, model_identity

_LAZY = {"GenerationResult": ".core.decoder", "GenerationStream": ".core.decoder", "SwiftDecoder": ".core.decoder",
         "ModelIdentity": ".persist.identity", "model_identity": ".persist.identity"}

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported when first asked for (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def load(name_or_path: str, dtype=None, device=None):
    """Load ``(model, tokenizer)`` from a packaged short name, a directory, a .gguf file or a hub id.

    ``model_identity(model)`` names what was loaded (name, revision or content hash, dtype).
    """
    from .loading import load as _load

    return _load(name_or_path, dtype=dtype, device=device)


__all__ = [
    "ContextLengthError", "GenerationResult", "GenerationStats", "GenerationStream", "InvalidArgumentError",
    "InvalidSkipSetError", "MissingPackageError", "ModelIdentity", "ModelNotFoundError", "OptimizerConfig",
    "SamplingParams", "SkipSet", "SlowDtypeWarning", "StateFileError", "SwiftConfig", "SwiftDecoder", "SwiftSDError",
    "UnsupportedModelError", "load", "model_identity",
]
