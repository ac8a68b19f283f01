"""swiftsd: SWIFT on-the-fly self-speculative decoding for Hugging Face LLMs."""

from .config import OptimizerConfig, SamplingParams, SwiftConfig
from .core.decoder import GenerationResult, GenerationStream, SwiftDecoder
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
from .persist.identity import ModelIdentity, model_identity
from .stats import GenerationStats

__version__ = "0.1.0"


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
