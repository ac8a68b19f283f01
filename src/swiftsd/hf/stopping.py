"""Where a generation ends: stop strings and stopping criteria, cut exactly where ``model.generate`` cuts.

Plain ``generate`` samples one token, appends it, then asks its stopping
criteria; the token that triggers a criterion is kept and nothing after it.
A speculative step commits several tokens at once, so :class:`StopCheck` asks
the same criteria once per token, in order, and says how many of the step's
tokens to keep. Stop strings are Hugging Face's own ``StopStringCriteria`` (a
stop string matches when it ends inside the newest token, across token
boundaries, byte-level tokens included), so the Python API, the CLI, the
server and the ``custom_generate`` drop-in (hf.py) all end on the same token
as ``model.generate(stop_strings=..., tokenizer=...)`` does.

The server also needs the *text* before a stop string (OpenAI's ``stop``
leaves the stop text out) and how much of a streamed tail to hold back;
:func:`find_stop` and :func:`partial_stop_length` are those two rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, StoppingCriteria

MAX_STOP_STRINGS = 16  # a sanity bound: each one is matched against the whole vocabulary once


def parse_stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """``stop`` as a tuple of non-empty strings (one string counts as one stop string)."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stops: tuple[Any, ...] = (stop,)
    elif isinstance(stop, (list, tuple)):
        stops = tuple(stop)
    else:
        stops = (None,)
    bad = [s for s in stops if not isinstance(s, str)]
    if bad:
        got = f"a list holding a {type(bad[0]).__name__}" if isinstance(stop, (list, tuple)) else type(stop).__name__
        raise InvalidArgumentError(f"stop_strings must be a string or a list of strings, got {got}")
    if any(s == "" for s in stops):
        raise InvalidArgumentError("stop_strings must be non-empty strings; an empty one would stop at once")
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidArgumentError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    return tuple(dict.fromkeys(stops))  # drop duplicates, keep order


def stop_string_criteria(tokenizer: "PreTrainedTokenizerBase | None", stop: str | Sequence[str]) -> "StoppingCriteria":
    """Hugging Face's ``StopStringCriteria`` for ``stop`` (built once per request: it indexes the vocabulary)."""
    from transformers import StopStringCriteria

    stops = parse_stop_strings(stop)
    if tokenizer is None:
        raise InvalidArgumentError("stop strings need the model's tokenizer: SwiftDecoder(model, tokenizer)")
    return StopStringCriteria(tokenizer, list(stops))


class StopCheck:
    """Asks ``generate``-style stopping criteria about each new token of a step, in order.

    ``criteria`` are ``StoppingCriteria`` (or any callable ``(input_ids [1, L],
    scores) -> BoolTensor [1]``), called exactly as ``generate`` calls them after
    appending one token: with the whole sequence so far, prompt included.
    """

    def __init__(self, criteria: Iterable["StoppingCriteria | Callable[..., Any]"]) -> None:
        from transformers import StoppingCriteriaList

        self.criteria = StoppingCriteriaList(criteria)

    def __bool__(self) -> bool:
        return len(self.criteria) > 0

    def __call__(self, tokens: Sequence[int], n_new: int) -> int | None:
        """``tokens``: the whole sequence, this step's ``n_new`` tokens last.

        Returns how many of the ``n_new`` tokens to keep (the one that ends the
        generation included) when one of them ends it, else None. Criteria get
        ``scores=None``, as ``generate`` gives them unless scores are returned.
        """
        if not self.criteria or n_new <= 0:
            return None
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        start = len(tokens) - n_new
        for j in range(1, n_new + 1):
            if bool(self.criteria(ids[:, : start + j], None).any()):
                return j
        return None


def stop_check_for(tokenizer: "PreTrainedTokenizerBase | None", stop: str | Sequence[str] | None,
                   extra: Iterable["StoppingCriteria"] = ()) -> StopCheck | None:
    """A :class:`StopCheck` for stop strings (and further criteria), or None when there is nothing to check."""
    criteria = list(extra)
    if parse_stop_strings(stop):
        criteria.append(stop_string_criteria(tokenizer, stop))
    return StopCheck(criteria) if criteria else None


# --------------------------------------------------------------------------- text rules (server)
def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index in ``text`` where the earliest stop string (found at or after ``start``) begins."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def partial_stop_length(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Length of the longest tail of ``text[start:]`` that could still grow into a stop string.

    A streaming server holds that tail back, so the text it has sent never
    contains the beginning of a stop string that later completes.
    """
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - start), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
