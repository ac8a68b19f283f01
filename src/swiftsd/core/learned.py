"""The decoder's learned state: its components' own ``state_dict``s composed, restored all or nothing.

Everything a :class:`~swiftsd.core.decoder.SwiftDecoder` learns from its stream lives in
components that each round-trip their own state: the drafters, the optimiser, the planner,
the cost source and :class:`TokenCounts`. This module only composes and checks them, so a
server restart loses nothing (``swiftsd.persist.state_file`` puts the dict on disk), and no
component's private fields are written from outside it.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch

from ..errors import InvalidArgumentError

STATE_FORMAT = 2  # 2: the planner's state under "planner" (1: "wall_clock" and "search_budget" at the top)


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class TokenCounts:
    """How often the stream generated each token: orders the draft vocabulary (``draft_head``)."""

    def __init__(self, vocab_size: int) -> None:
        self.counts = torch.zeros(vocab_size, dtype=torch.long)

    def add(self, tokens: list[int]) -> None:
        self.counts += torch.bincount(torch.tensor(tokens, dtype=torch.long), minlength=self.counts.numel())

    def reset(self) -> None:
        self.counts.zero_()

    def state_dict(self) -> dict[str, list[int]]:
        nz = self.counts.nonzero().flatten()
        return {"ids": nz.tolist(), "counts": self.counts[nz].tolist()}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        ids, n = state["ids"], state["counts"]
        if len(ids) != len(n) or any(not 0 <= i < self.counts.numel() for i in ids):
            raise ValueError(f"token_counts needs one count per id, ids in [0, {self.counts.numel()})")
        counts = torch.zeros_like(self.counts)
        if ids:
            counts[torch.tensor(ids, dtype=torch.long)] = torch.tensor(n, dtype=torch.long)
        self.counts = counts


def compose(num_layers: int, vocab_size: int, parts: Mapping[str, Stateful | None],
            drafters: Mapping[str, Stateful]) -> dict[str, Any]:
    """One JSON-able dict of every component's state (None for a component the decoder lacks)."""
    state: dict[str, Any] = {"format": STATE_FORMAT, "num_layers": num_layers, "vocab_size": vocab_size,
                             "drafters": {name: d.state_dict() for name, d in drafters.items()}}
    state.update({name: part.state_dict() if part is not None else None for name, part in parts.items()})
    return state


def restore(state: Any, num_layers: int, vocab_size: int, parts: Mapping[str, Stateful | None],
            drafters: Mapping[str, Stateful]) -> None:
    """Load :func:`compose`'s output into the same components. Refuses state of another model, a
    newer format or a malformed one in one line; a refused load changes nothing (all or none)."""
    state = _upgraded(_checked(state, num_layers, vocab_size, drafters))
    loaded = {**{f"drafters.{n}": d for n, d in drafters.items()},
              **{n: p for n, p in parts.items() if p is not None and state.get(n) is not None}}
    backup = {name: part.state_dict() for name, part in loaded.items()}
    try:
        for name, part in loaded.items():
            part.load_state_dict(state["drafters"][name[9:]] if name.startswith("drafters.") else state[name])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, InvalidArgumentError) as exc:
        for name, part in loaded.items():  # the failing one too: it may have half-loaded
            part.load_state_dict(backup[name])
        why = str(exc) if isinstance(exc, InvalidArgumentError) else f"{type(exc).__name__}: {exc}"
        raise InvalidArgumentError(f"decoder state is malformed ({why}); use the dict state_dict() "
                                   "returned, or start afresh") from None


def _checked(state: Any, num_layers: int, vocab_size: int, drafters: Mapping[str, Stateful]) -> dict[str, Any]:
    if not isinstance(state, dict) or not isinstance(state.get("format"), int):
        raise InvalidArgumentError("not a SwiftDecoder state: expected the dict state_dict() returns")
    if state["format"] > STATE_FORMAT:
        raise InvalidArgumentError(f"decoder state format {state['format']} is newer than this swiftsd "
                                   f"reads ({STATE_FORMAT}); upgrade swiftsd")
    if state.get("num_layers") != num_layers or state.get("vocab_size") != vocab_size:
        raise InvalidArgumentError(
            f"decoder state is for a model with {state.get('num_layers')} layers and a vocabulary of "
            f"{state.get('vocab_size')}, this one has {num_layers} and {vocab_size}")
    saved = state.get("drafters")
    missing = sorted(set(drafters) - set(saved)) if isinstance(saved, dict) else sorted(drafters)
    if missing:
        raise InvalidArgumentError(f"decoder state has no state for drafter(s) {missing}")
    return state


def _upgraded(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 state in today's layout: the planner's parts were top-level keys."""
    if state["format"] >= 2:
        return state
    planner = {k: state[k] for k in ("wall_clock", "search_budget") if k in state}
    return {**state, "planner": planner or None}
