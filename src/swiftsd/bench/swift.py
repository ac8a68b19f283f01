"""swiftsd's own decoders as benchmark methods.

The options (``method=``, ``drafters=``, ``optimizer=``, ...) are passed to
:class:`~swiftsd.core.decoder.SwiftDecoder` unchanged: the decoder validates them. An
option this build of the decoder does not take makes the method unavailable
(reported as n/a with the decoder's own message) instead of failing the run.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from ..core.decoder import SwiftDecoder
from ..engine.skipset import SkipSet
from ..errors import InvalidArgumentError
from .base import Method, RunParams, TurnOutput, sync


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


class Swift(Method):
    """SwiftDecoder; one decoder per method for the whole stream, so what it learns carries over."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "swiftsd", skip_set: SkipSet | None = None,
                 **options: Any) -> None:
        super().__init__(model, tokenizer)
        self.name, self.skip_set, self.options = name, skip_set, options
        self.decoder: SwiftDecoder | None = None
        self._why: str | None = None
        try:
            self.decoder = self._new()
        except InvalidArgumentError as exc:
            self._why = f"SwiftDecoder refuses {self.describe_options()}: {exc}"

    def _new(self) -> SwiftDecoder:
        return SwiftDecoder(self.model, self.tokenizer, skip_set=self.skip_set, **self.options)

    def describe_options(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "the defaults"

    def unavailable(self) -> str | None:
        return self._why

    def warmup(self, input_ids: list[int], params: RunParams, seed: int) -> None:
        """Warm up on a throwaway decoder: the measured one starts the stream with a fresh optimiser."""
        self._run(self._new(), input_ids, params, seed)

    def describe(self) -> dict[str, Any]:
        """What the report says of this method; with the cost model it planned with, once measured, so
        that a run's steps can be replayed later (docs/benchmarks/token-trees/replay.py)."""
        d = self.decoder
        costs = d.measured_costs if d is not None else None  # read, not measured: describing costs no time
        return {
            "options": {k: _jsonable(v) for k, v in self.options.items()},
            "skip_set": d.skip_set.to_dict() if d is not None and d.skip_set is not None else None,
            "optimizer": type(d.optimizer).__name__ if d is not None and d.optimizer is not None else None,
            "cost_model": costs.to_dict() if costs is not None else None,
        }

    # -- state, for repeats: every repeat of a turn starts from the same learned state --------
    def learned_state(self) -> Any:
        return self.decoder

    def copy_state(self, state: Any) -> Any:
        """A copy of the decoder that shares the model's weights and the tokenizer, copying everything
        else it holds (optimiser, statistics, indices): complete by construction. Copied outside
        inference mode, so the copy's tensors stay usable by a caller that is not in it."""
        model = self.model
        shared = [model, self.tokenizer, *model.modules(), *model.parameters(), *model.buffers()]
        with torch.inference_mode(False):
            return copy.deepcopy(state, memo={id(x): x for x in shared})

    def set_state(self, state: Any) -> None:
        self.decoder = state

    def state_dict(self) -> dict[str, Any] | None:
        return self.decoder.state_dict() if self.decoder is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.decoder is not None, f"{self.name} is unavailable: {self._why}"
        self.decoder.load_state_dict(state)

    def _run(self, decoder: SwiftDecoder, input_ids: list[int], params: RunParams, seed: int) -> Any:
        s = params.sampling
        return decoder.generate(input_ids, max_new_tokens=params.max_new_tokens, temperature=s.temperature,
                                top_p=s.top_p, top_k=s.top_k, seed=seed)

    def generate(self, input_ids: list[int], params: RunParams, seed: int) -> TurnOutput:
        assert self.decoder is not None, f"{self.name} is unavailable: {self._why}"
        sync(self.device)
        t0 = time.perf_counter()
        res = self._run(self.decoder, input_ids, params, seed)
        sync(self.device)
        wall = time.perf_counter() - t0
        st = res.stats
        extra: dict[str, Any] = {
            "mean_accepted_tokens": st.mean_accepted_tokens, "plain_steps": st.plain_steps,
            "skip_set": st.skip_set, "tree_nodes": sum(st.tree_sizes), "optimizer": _brief_state(st.optimizer)}
        per_drafter = getattr(st, "per_drafter", None)
        if per_drafter:
            extra["per_drafter"] = {k: {"proposed": int(v["proposed"]), "accepted": int(v["accepted"])}
                                    for k, v in per_drafter.items()}
        return TurnOutput(
            new_ids=res.new_tokens, wall_time=wall, target_forwards=st.steps + 1,
            draft_forwards=st.draft_tokens, draft_lengths=list(st.draft_lengths),
            accepted_lengths=list(st.accepted_lengths), time_draft=st.time_draft, time_optimize=st.time_optimize,
            time_prefill=st.time_prefill,
            extra=extra,
        )


def _brief_state(state: Any) -> Any:
    """The optimiser's state without long lists (kept small in the per-prompt JSONL)."""
    if not isinstance(state, dict):
        return state
    return {k: v for k, v in state.items() if not (isinstance(v, (list, dict)) and len(v) > 64)}
