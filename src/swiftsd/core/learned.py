"""The decoder's learned state as plain JSON-able data, and its exact restore.

Everything a :class:`~swiftsd.core.decoder.SwiftDecoder` learns from its stream lives in its
optimiser, its drafters, its cost model, token counts and the wall-clock bound; this module
reads and writes them all at once, so a server restart loses nothing (``swiftsd.persist.state_file`` puts
the dict on disk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..engine.cost import CostModel
from ..errors import InvalidArgumentError
from .planner import SearchBudget, WallClockBound

if TYPE_CHECKING:
    from .decoder import SwiftDecoder

STATE_FORMAT = 1


def decoder_state_dict(self: "SwiftDecoder") -> dict[str, Any]:
    """Everything the decoder learned from its stream, as plain JSON-able data: the optimiser's
    search, every drafter's state (the suffix index among them), the cost model, token counts,
    the wall-clock sanity bound's recent step times (it can only lower the layer-skip draft's
    forecast) and the search's budget."""
    counts = self.token_counts
    nz = counts.nonzero().flatten()
    return {
        "format": STATE_FORMAT,
        "num_layers": self.num_layers,
        "vocab_size": self.adapter.vocab_size,
        "drafters": {name: d.state_dict() for name, d in self.drafters.items()},
        "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        "costs": self._costs.to_dict() if self._costs is not None else None,
        "token_counts": {"ids": nz.tolist(), "counts": counts[nz].tolist()},
        "wall_clock": self._wall.state_dict(),
        "search_budget": self._budget.state_dict(),
    }

def load_decoder_state(self: "SwiftDecoder", state: dict[str, Any]) -> None:
    """Restore :func:`decoder_state_dict`'s output exactly. Refuses state of another model, a newer
    format or a malformed one in one line, and a refused load changes nothing (all or none)."""
    if not isinstance(state, dict) or not isinstance(state.get("format"), int):
        raise InvalidArgumentError("not a SwiftDecoder state: expected the dict state_dict() returns")
    if state["format"] > STATE_FORMAT:
        raise InvalidArgumentError(f"decoder state format {state['format']} is newer than this swiftsd "
                                   f"reads ({STATE_FORMAT}); upgrade swiftsd")
    if state.get("num_layers") != self.num_layers or state.get("vocab_size") != self.adapter.vocab_size:
        raise InvalidArgumentError(
            f"decoder state is for a model with {state.get('num_layers')} layers and a vocabulary of "
            f"{state.get('vocab_size')}, this one has {self.num_layers} and {self.adapter.vocab_size}")
    drafters = state.get("drafters")
    missing = sorted(set(self.drafters) - set(drafters)) if isinstance(drafters, dict) else sorted(self.drafters)
    if missing:
        raise InvalidArgumentError(f"decoder state has no state for drafter(s) {missing}")
    backup = {name: d.state_dict() for name, d in self.drafters.items()}
    try:  # parse first, then load the drafters, then the optimiser (which loads all or nothing)
        costs = CostModel.from_dict(state["costs"]) if state.get("costs") is not None else self._costs
        here = (str(self.adapter.device), str(self.adapter.dtype).replace("torch.", ""))
        if costs is not None and any(got and got != want for got, want in zip((costs.device, costs.dtype), here)):
            costs = self._costs  # measured on another device or dtype: this one times its own
        ids, n = state["token_counts"]["ids"], state["token_counts"]["counts"]
        if len(ids) != len(n) or any(not 0 <= i < self.token_counts.numel() for i in ids):
            raise ValueError(f"token_counts needs one count per id, ids in [0, {self.token_counts.numel()})")
        counts = torch.zeros_like(self.token_counts)
        if ids:
            counts[torch.tensor(ids, dtype=torch.long)] = torch.tensor(n, dtype=torch.long)
        wall = WallClockBound()
        wall.load_state_dict(state.get("wall_clock", {}))  # absent, or the older layout: afresh
        budget = SearchBudget()
        budget.load_state_dict(state.get("search_budget", budget.state_dict()))  # absent: older, afresh
        for name, d in self.drafters.items():
            d.load_state_dict(drafters[name])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, InvalidArgumentError) as exc:
        for name, d in self.drafters.items():
            d.load_state_dict(backup[name])
        why = str(exc) if isinstance(exc, InvalidArgumentError) else f"{type(exc).__name__}: {exc}"
        raise InvalidArgumentError(f"decoder state is malformed ({why}); use the dict state_dict() "
                                   "returned, or start afresh") from None
    self._costs, self.token_counts, self._wall, self._budget = costs, counts, wall, budget
