"""Prompt lookup: copy what followed earlier occurrences of the last n tokens.

Hugging Face's prompt lookup keeps one chain from the most recent match; this
drafter keeps every occurrence (longest match first, most recent first) as a
branch of the trie, within its node budget, so a context that repeats with
variations still drafts the right continuation. It costs no model forward.
The index over the request's own tokens is per request and grows by the
committed tokens only.
"""

from __future__ import annotations

from typing import Any

from .base import DraftRequest
from .ngram import Calibration, CopyDrafter, NgramIndex


class LookupDrafter(CopyDrafter):
    """Every earlier match of the last ``min_n..max_n`` tokens in the prompt and the generated text."""

    name = "lookup"
    free = True

    def __init__(self, min_n: int = 1, max_n: int = 4, max_depth: int = 16, max_matches: int = 32) -> None:
        self.min_n, self.max_n, self.max_depth, self.max_matches = min_n, max_n, max_depth, max_matches
        self.calib = Calibration(prior=0.5)

    def _index(self, req: DraftRequest) -> NgramIndex:
        st = req.scratch.get(self.name)
        if st is None:
            st = req.scratch[self.name] = {"index": NgramIndex(self.min_n, self.max_n), "upto": 0}
        idx: NgramIndex = st["index"]
        # n-grams ending before the last token: each has a continuation in the text
        idx.add(0, req.tokens, st["upto"], len(req.tokens) - 1)
        st["upto"] = max(st["upto"], len(req.tokens) - 1)
        return idx

    def _matches(self, req: DraftRequest, depth: int) -> list[tuple[int, list[int]]]:
        return self._index(req).matches(req.tokens[-self.max_n :], lambda _: req.tokens, self.max_matches, depth)

    def end_request(self, req: DraftRequest) -> None:
        req.scratch.pop(self.name, None)

    def reset(self) -> None:
        self.calib = Calibration(prior=0.5)

    def state_dict(self) -> dict[str, Any]:
        return {"calibration": self.calib.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calib.load_state_dict(state["calibration"])
