"""Stream suffix index: continuations seen in earlier requests, weighted by frequency.

As in SuffixDecoding, the prompts and outputs a decoder (or server) has already
served are indexed, and the text's last n tokens are matched against them; a
continuation that followed many occurrences gets a larger share of the
branch. This is stream-level state, like the optimiser's: it lives in the
drafter the decoder owns, is bounded by ``max_tokens`` (oldest request
evicted first), is reset with the optimiser, and round-trips through
``state_dict``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..errors import InvalidArgumentError
from .base import DraftRequest
from .ngram import Calibration, CopyDrafter, NgramIndex


class SuffixDrafter(CopyDrafter):
    """Matches against earlier requests' prompts and outputs, within a token budget."""

    name = "suffix"
    free = True

    def __init__(self, max_tokens: int = 262_144, min_n: int = 2, max_n: int = 6, max_depth: int = 16,
                 max_matches: int = 64) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidArgumentError(f"suffix_max_tokens must be an integer >= 1, got {max_tokens!r}")
        self.max_tokens, self.min_n, self.max_n = max_tokens, min_n, max_n
        self.max_depth, self.max_matches = max_depth, max_matches
        self.reset()

    def reset(self) -> None:
        self.docs: deque[tuple[int, list[int]]] = deque()
        self.by_id: dict[int, list[int]] = {}
        self.index = NgramIndex(self.min_n, self.max_n)
        self.total = 0
        self.next_id = 0
        self.calib = Calibration(prior=0.4)

    @property
    def size(self) -> int:
        """Tokens held (never more than ``max_tokens``)."""
        return self.total

    def add_document(self, tokens: list[int]) -> None:
        """Index one finished text; evict the oldest ones past the bound."""
        tokens = list(tokens[-self.max_tokens :])
        if len(tokens) < 2:
            return
        doc_id, self.next_id = self.next_id, self.next_id + 1
        self.docs.append((doc_id, tokens))
        self.by_id[doc_id] = tokens
        self.index.add(doc_id, tokens, 0, len(tokens) - 1)
        self.total += len(tokens)
        while self.total > self.max_tokens:
            old_id, old = self.docs.popleft()
            self.index.remove(old_id, old)
            del self.by_id[old_id]
            self.total -= len(old)

    def _matches(self, req: DraftRequest, depth: int) -> list[tuple[int, list[int]]]:
        if not self.docs:
            return []
        return self.index.matches(req.tokens[-self.max_n :], self.by_id.__getitem__, self.max_matches, depth)

    def end_request(self, req: DraftRequest) -> None:
        self.add_document(req.tokens)

    def state_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "docs": [toks for _, toks in self.docs],
                "calibration": self.calib.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for toks in state["docs"]:
            self.add_document([int(t) for t in toks])
        self.calib.load_state_dict(state["calibration"])
