"""The planner's state: a wall-clock sanity bound, the optimiser's search budget, copy probes.

Each only ever lowers a forecast or rations a cost; none measures anything itself.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class WallClockBound:
    """How much dearer layer-skip steps measure than the cost model priced them: can only lower a forecast.

    Each step records its wall-clock seconds and the time the planner priced it at, in plain
    steps: the forecast's time for a layer-skip step, V(nodes) for any other. The bias is the
    seconds per priced step of layer-skip steps over that of the others. Load, clock speed and
    context length scale both kinds alike, so they cancel; what is left is what the cost model
    misses about the draft: the tree attention over the frontier, more nodes than priced, the
    Python around each forward. On qwen-0.5b bf16 with native bf16 products this bias was 1.2 to
    1.3. Forecasts, and the search gate's ceiling, are divided by the bias when it exceeds 1, and
    never raised: timings that flatter the draft change nothing.
    """

    def __init__(self, window: int = 32, min_steps: int = 8) -> None:
        self.drafted: deque[tuple[float, float]] = deque(maxlen=window)  # (seconds, priced plain steps)
        self.free: deque[tuple[float, float]] = deque(maxlen=window)
        self.min_steps = min_steps

    def record(self, drafted_by_model: bool, seconds: float, priced: float) -> None:
        if priced > 0 and seconds > 0:
            (self.drafted if drafted_by_model else self.free).append((seconds, priced))

    def correction(self) -> float:
        """The bias (≥ 1): 1 until both kinds have ``min_steps`` steps recorded."""
        if len(self.drafted) < self.min_steps or len(self.free) < self.min_steps:
            return 1.0
        per_drafted = sum(s for s, _ in self.drafted) / sum(p for _, p in self.drafted)
        per_free = sum(s for s, _ in self.free) / sum(p for _, p in self.free)
        return max(1.0, per_drafted / per_free)

    def bound(self, predicted_rate: float) -> float:
        """``predicted_rate`` lowered by the measured bias; never raised."""
        return predicted_rate / self.correction()

    def state_dict(self) -> dict[str, Any]:
        return {"drafted": [list(x) for x in self.drafted], "free": [list(x) for x in self.free]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; an older layout (no ``free``) starts afresh."""
        if not isinstance(state, dict):
            raise TypeError(f"the wall-clock state must be a dict, got {type(state).__name__}")
        if "free" not in state:
            state = {"drafted": [], "free": []}
        drafted = [(float(s), float(p)) for s, p in state["drafted"]]
        free = [(float(s), float(p)) for s, p in state["free"]]
        self.drafted.clear(), self.free.clear()
        self.drafted.extend(drafted), self.free.extend(free)


class SearchBudget:
    """The optimiser's search spends what the layer-skip draft earns (planner mode only).

    Scoring a proposal costs draft forwards, and with free drafters beside it the draft pays only
    on the steps where it beats them. On qwen-0.5b bf16 with native bf16 products, the search took
    4-5 % of each request while the draft gained about 2 % on the steps it ran: swiftsd ran 7-13 %
    behind lookup alone. So the search draws on an account, in plain steps. The account opens with
    ``allowance``. Each layer-skip step earns what the free plan would have needed for its tokens,
    minus the step's priced time: counts and the cost model, never wall clock, so a loss drains
    the account too. Each scoring spends its time. The search runs while the balance is positive.
    Where the draft pays (large models, GPUs) the search goes on as in the paper; where it does
    not, the search stops once the allowance is spent.
    """

    def __init__(self, allowance: float = 16.0, cap: float = 256.0) -> None:
        self.allowance, self.cap = allowance, cap
        self.balance = allowance

    def open(self) -> bool:
        return self.balance > 0.0

    def spend(self, plain_steps: float) -> None:
        self.balance -= max(0.0, plain_steps)

    def earn(self, tokens: int, free_rate: float, priced: float) -> None:
        """A layer-skip step gave ``tokens`` in ``priced`` plain steps, where the free plan gave ``free_rate``."""
        self.balance = min(self.cap, self.balance + tokens / max(1.0, free_rate) - priced)

    def state_dict(self) -> dict[str, Any]:
        return {"balance": self.balance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.balance = min(self.cap, float(state["balance"]))


class CopyProbe:
    """Verify the copy drafts anyway, now and then, when the planner does not trust them.

    A drafter's acceptance is learned only from the nodes that get verified. Where a
    verification is dear, neither the prior estimate nor a calibration learned on other
    prompts pays for a copy, so the planner never verifies one and never learns that
    this request copies: an exploration trap (qwen-0.5b fp32, where 2 nodes cost 1.75
    plain steps: no lookup draft of a summarisation turn was verified, while PLD's
    were accepted ten at a time). So after ``wait`` steps in which a long match (3+
    tokens) was left unverified, one step verifies its best ``nodes`` nodes.

    A probe *pays* when its tokens (accepted + the bonus) are at least ``margin`` times
    what its verification cost in plain steps: then the next step probes again (a copy
    run goes on). A near-miss (2+ tokens accepted that do not pay: 8 nodes cost 2.4
    steps on qwen-0.5b fp32) waits ``base`` steps: in the first A/B, which treated it as
    a run, math turns lost 15 % to near-misses and the failed probe after each, while a
    summarisation turn's first probe is often one. A failure that ends a run of 2+
    paying probes also waits ``base``; any other failure doubles ``base`` (up to
    ``max_wait``): where copies never pay, probes cost O(log steps). One per request:
    a new request starts from ``start``.
    """

    def __init__(self, start: int = 16, max_wait: int = 256, nodes: int = 8, margin: float = 1.5) -> None:
        self.max_wait, self.nodes, self.margin = max_wait, nodes, margin
        self.base = self.wait = start
        self.since = self.run = 0

    def due(self) -> bool:
        """Called on each step where the planner left a long match unverified: probe now?"""
        self.since += 1
        return self.since >= self.wait

    def result(self, accepted: int, cost: float) -> None:
        """What the probe's verification accepted from the copy drafts, and what it cost (plain steps)."""
        self.since = 0
        if accepted + 1 >= self.margin * cost:
            self.run += 1
            self.wait = 1
            return
        if self.run < 2 and accepted < 2:  # a cold failure, or a "run" of one lucky probe
            self.base = min(self.max_wait, 2 * self.base)
        self.run = 0
        self.wait = self.base
