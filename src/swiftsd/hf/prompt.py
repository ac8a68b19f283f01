"""Turn whatever a user passes as a prompt into a flat list of token ids.

``SwiftDecoder.generate`` / ``stream`` take a prompt in every form a Hugging Face
workflow produces: text, a list of ids, a ``[n]`` or ``[1, n]`` tensor, or the
``BatchEncoding`` / dict that ``tokenizer(...)`` and, since transformers 5,
``tokenizer.apply_chat_template(..., return_tensors="pt")`` return. swiftsd
decodes one sequence at a time, so a batch, or a padded attention mask, is
refused with a message that says what to do instead.

Error messages describe a bad value by its type, shape and dtype and show at
most a few ids: a prompt can be thousands of tokens, and a message that dumps
it hides the one line that matters.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["parse_prompt", "describe"]

SHOWN_IDS = 5  # ids an error message may quote
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_FORMS = ("a string, a list of token ids, a LongTensor [n] or [1, n], "
          "or the BatchEncoding / dict with 'input_ids' that a tokenizer returns")


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message: never its full contents."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # numpy and friends
        return f"a {type(value).__name__} of shape {tuple(shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {sorted(map(str, value))[:SHOWN_IDS]}"
    return f"a {type(value).__name__}"


def _shown(ids: Sequence[int]) -> str:
    head = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    return f"[{head}{', ...' if len(ids) > SHOWN_IDS else ''}]"


def _from_tensor(t: torch.Tensor, what: str) -> list[int]:
    given = t
    if t.dim() == 2:
        if t.shape[0] != 1:
            raise InvalidArgumentError(
                f"swiftsd decodes one sequence at a time; {what} is a batch of {t.shape[0]} "
                f"({describe(t)}). Call generate once per prompt.")
        t = t[0]
    if t.dim() != 1 or t.dtype not in _INT_DTYPES:
        raise InvalidArgumentError(f"{what} must be a LongTensor (integer ids) [n] or [1, n], got {describe(given)}")
    return t.tolist()


def _from_sequence(seq: Sequence[Any], what: str) -> list[int]:
    if len(seq) == 1 and isinstance(seq[0], (list, tuple, torch.Tensor)):  # a batch of one: [[ids]]
        return _ids_from(seq[0], what)
    if seq and isinstance(seq[0], (list, tuple, torch.Tensor)):
        raise InvalidArgumentError(
            f"swiftsd decodes one sequence at a time; {what} is a batch of {len(seq)} sequences. "
            "Call generate once per prompt.")
    out: list[int] = []
    for pos, item in enumerate(seq):
        if isinstance(item, bool):
            raise InvalidArgumentError(f"{what} must hold token ids (integers); item {pos} is a bool")
        try:
            out.append(operator.index(item))
        except TypeError:
            raise InvalidArgumentError(
                f"{what} must hold token ids (integers); item {pos} is {describe(item)}") from None
    return out


def _ids_from(value: Any, what: str) -> list[int]:
    """Token ids from a tensor, an array or a (possibly batch-of-one) sequence."""
    if isinstance(value, torch.Tensor):
        return _from_tensor(value, what)
    if hasattr(value, "__array__") and hasattr(value, "dtype") and not isinstance(value, (list, tuple)):
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgumentError(f"{what} must be token ids, got {describe(value)}") from None
        return _from_tensor(tensor, what)
    if isinstance(value, (list, tuple)):
        return _from_sequence(value, what)
    raise InvalidArgumentError(f"{what} must be token ids ({_FORMS}), got {describe(value)}")


def _check_mask(mask: Any, n: int) -> None:
    """Refuse an attention mask that hides tokens: swiftsd would attend to the padding."""
    if mask is None:
        return
    flags = _ids_from(mask, "attention_mask")
    if len(flags) != n:
        raise InvalidArgumentError(
            f"attention_mask has {len(flags)} entries but input_ids has {n} tokens; pass the two from the "
            "same tokenizer call")
    zeros = sum(1 for f in flags if f == 0)
    if zeros:
        raise InvalidArgumentError(
            f"the attention_mask masks {zeros} of {n} tokens (padding); swiftsd decodes one unpadded sequence: "
            "strip the padding (keep input_ids where attention_mask is 1), or tokenize without padding")


def parse_prompt(input_ids: Any, tokenizer: Any, vocab_size: int) -> list[int]:
    """The prompt's token ids, checked against the vocabulary ``[0, vocab_size)``.

    ``input_ids`` may be text (needs ``tokenizer``), token ids as a list, a
    ``[n]`` / ``[1, n]`` integer tensor or array, or a mapping (``BatchEncoding``,
    dict) with ``input_ids`` and optionally an ``attention_mask`` without padding.
    Raises InvalidArgumentError with a one-line reason otherwise.
    """
    if input_ids is None:
        raise InvalidArgumentError(f"no prompt given: pass {_FORMS}")
    if isinstance(input_ids, str):
        if tokenizer is None:
            raise InvalidArgumentError("a text prompt needs a tokenizer: SwiftDecoder(model, tokenizer)")
        ids = _ids_from(tokenizer(input_ids, return_tensors=None)["input_ids"], "the tokenized prompt")
    elif isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise InvalidArgumentError(
                f"the prompt is {describe(input_ids)} but no 'input_ids'; pass the tokenizer's output "
                "(e.g. tok.apply_chat_template(..., return_tensors='pt')) or the ids themselves")
        ids = _ids_from(input_ids["input_ids"], "input_ids")
        _check_mask(input_ids.get("attention_mask"), len(ids))
    else:
        ids = _ids_from(input_ids, "input_ids")
    if not ids:
        raise InvalidArgumentError("the prompt is empty: give at least one token")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidArgumentError(
            f"{len(bad)} token id(s) {_shown(bad)} are outside the model's vocabulary [0, {vocab_size}); "
            "tokenize with this model's own tokenizer")
    return ids
