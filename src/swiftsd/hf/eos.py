"""The end-of-sequence token ids of a request: one resolver for the decoder, server, bench and CLI.

``model.generate`` stops at ``generation_config.eos_token_id`` (an id or a list of
ids); so does swiftsd, unless the caller names its own. Resolving it in one place
keeps every edge stopping where plain decoding stops.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

from ..errors import InvalidArgumentError

__all__ = ["eos_ids", "resolve_eos"]


def resolve_eos(model: Any, eos_token_id: int | Sequence[int] | None = None) -> set[int]:
    """The ids that end a generation: ``eos_token_id`` if given, else the model's generation config's.

    An empty set means the generation only ends at its token budget.
    """
    return eos_ids(eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def eos_ids(eos_token_id: Any, default: Any) -> set[int]:
    """``eos_token_id`` (an id, ids, or None for ``default``) as a checked set of ids."""
    if eos_token_id is None:
        eos_token_id = default
    if eos_token_id is None:
        return set()
    ids = _as_ids(eos_token_id)
    if ids is None or any(i < 0 for i in ids):
        raise InvalidArgumentError(f"eos_token_id must be a token id or a list of token ids (integers >= 0), "
                                   f"got {str(eos_token_id)[:80]!r}")
    return set(ids)


def _as_ids(value: Any) -> list[int] | None:
    """An id (int, NumPy integer, 0-d tensor) or an iterable of them, as ints; None if it is neither."""
    try:
        return [_one_id(value)]
    except TypeError:
        pass
    try:
        return [_one_id(v) for v in value]
    except TypeError:
        return None


def _one_id(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, never a token id here
        raise TypeError("bool")
    return operator.index(value)
