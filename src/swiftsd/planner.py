"""One choice per step, by cost: which drafters run and how many nodes to verify.

Inputs that noise cannot fake: the device's measured cost model (a draft
forward per skip set and width, a verification forward per node count, in
units of one plain step) and acceptance *counts* (each drafter's calibrated
acceptance). Wall-clock step times are never used to choose; they can only
lower an estimate (a sanity bound), never raise one.

Expected tokens of a trie verified now are ``1 + Σ P(node accepted)``; its
time is the draft time already spent plus ``V(nodes)``. The planner picks the
node count that maximises tokens per time, and runs the layer-skip draft only
when its predicted rate beats what the free drafts already offer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .drafters.ngram import has_long_match
from .engine.cost import CostModel
from .engine.skipset import SkipSet

if TYPE_CHECKING:
    from .drafters.base import DraftTrie


@dataclass(frozen=True)
class LayerSkipForecast:
    """Predicted rate of a layer-skip draft step, in tokens per plain-step time."""

    rate: float
    depth: int
    cost_per_depth: float  # c: one draft forward over the frontier / one plain step


def relative_verify(costs: CostModel, nodes: int) -> float:
    """V(n): verifying ``n`` nodes in one forward, in plain steps."""
    return costs.verify(nodes) / costs.full_step


def best_node_count(scores: list[float], costs: CostModel, spent: float, max_nodes: int) -> tuple[int, float]:
    """The node count N (root included) maximising (1 + top-(N-1) scores) / (spent + V(N)).

    ``scores`` are P(accepted) of the candidate nodes; ``spent`` the draft time already
    paid, in plain steps; the expected accepted tokens add their LM-head rows (scored
    together, ``CostModel.head``). Returns (N, its rate). N = 1 is a plain step.
    """
    ordered = sorted(scores, reverse=True)[: max(0, max_nodes - 1)]
    one = costs.head(1)
    best_n, best_rate, gain = 1, 1.0 / (spent + 1.0), 1.0
    for i, s in enumerate(ordered, start=2):
        gain += s
        head = (costs.head(gain) - one) / costs.full_step  # the accepted path's further LM-head rows
        rate = gain / (spent + relative_verify(costs, i) + head)
        if rate > best_rate:
            best_n, best_rate = i, rate
    return best_n, best_rate


def choose_node_count(trie: "DraftTrie", costs: CostModel, spent: float, max_nodes: int,
                      probe: "CopyProbe | None") -> tuple[int, bool]:
    """How many nodes of ``trie`` to verify (root included), and whether that is a copy probe.

    :func:`best_node_count`, except that where it would decode plainly, no draft time was spent
    and a long copy match goes unverified, ``probe`` (None: no probing) may retry the copy.
    One function for the decoder and for ``docs/benchmarks/token-trees/replay.py``."""
    n, _ = best_node_count(trie.score[1:], costs, spent, max_nodes)
    if n == 1 and not spent and probe is not None and has_long_match(trie) and probe.due():
        return min(max_nodes, probe.nodes), True
    return n, False


def forecast_layerskip(costs: CostModel, skip: SkipSet, alpha: float, frontier: int, max_depth: int,
                       free_gain: float, free_nodes: int = 1) -> LayerSkipForecast:
    """Best depth k for a layer-skip draft with per-depth acceptance ``alpha``.

    Tokens: 1 + Σ_{i≤k} α^i (a chain; the tree's siblings are already in α, which is
    measured on the trees the loop verifies), never less than what the free drafts'
    plan already gives (``free_gain`` from ``free_nodes`` nodes, root included). Time: k
    draft forwards over ``frontier`` tokens plus verifying those nodes and ``2k`` more
    (the planner keeps about two nodes per depth of a tree). Pricing only the ``1 + 2k``
    while crediting the free gain made the draft look good where nodes are dear (smollm2
    bf16 on AVX2: 8 nodes cost 3.4 steps), and it ran there, for about 1 s a turn.
    """
    c = costs.draft_cost(skip) * relative_verify(costs, frontier)
    best = LayerSkipForecast(0.0, 0, c)
    e, a_i = 1.0, 1.0
    for k in range(1, max(1, max_depth) + 1):
        a_i *= alpha
        e += a_i
        t = k * c + relative_verify(costs, max(1, free_nodes) + 2 * k)
        rate = max(e, free_gain) / t
        if rate > best.rate:
            best = LayerSkipForecast(rate, k, c)
    return best


# Per-depth acceptance, optimistic for a draft that skips 60 % of the sublayers: on smollm2-135m the
# search's best set skipping 28 of 56 scored matchness 0.00 (README command 1, this CPU).
OPTIMISTIC_ACCEPTANCE = 0.8


def layerskip_ceiling(costs: CostModel, ratio: float, frontier: int, max_depth: int,
                      alpha: float = OPTIMISTIC_ACCEPTANCE) -> LayerSkipForecast:
    """The best forecast any skip set the optimiser may propose could reach on this device.

    The cheapest such draft (``ratio`` of the 2·(L−2) inner sublayers, the dearer kind first)
    at acceptance ``alpha``, both beyond what a search finds. Where even its rate is under 1,
    no set can pay (qwen-0.5b fp32 on a 2-core AVX2 CPU, where 9 verify nodes cost 2.1
    plain steps), and scoring proposals only costs time: 6 % of a request's first turn.
    """
    inner = list(range(1, costs.num_layers - 1))
    n = max(0, min(2 * len(inner), round(ratio * 2 * len(inner))))
    dear, cheap = ("attn", "mlp") if costs.attn >= costs.mlp else ("mlp", "attn")
    skip = SkipSet(**{dear: inner[: min(n, len(inner))], cheap: inner[: max(0, n - len(inner))]})
    return forecast_layerskip(costs, skip, alpha, frontier, max_depth, 1.0)


class WallClockBound:
    """Observed tokens/s of layer-skip steps against plain-like steps: can only veto.

    A loaded machine can make plain steps look slow and a draft look fast; so the
    observation is used only when it says the draft is *worse* than predicted, and
    only after enough steps of both kinds.
    """

    def __init__(self, window: int = 32) -> None:
        self.drafted: deque[tuple[int, float]] = deque(maxlen=window)
        self.plain: deque[float] = deque(maxlen=window)

    def record(self, drafted_by_model: bool, tokens: int, seconds: float, nodes: int) -> None:
        if drafted_by_model:
            self.drafted.append((tokens, seconds))
        elif nodes == 1:
            self.plain.append(seconds)

    def veto(self, predicted_rate: float) -> bool:
        """True when wall clock says the layer-skip draft loses although predicted to win."""
        if len(self.drafted) < 16 or len(self.plain) < 8:
            return False
        toks = sum(t for t, _ in self.drafted)
        secs = sum(s for _, s in self.drafted)
        plain = sorted(self.plain)[len(self.plain) // 2]
        observed = toks / secs * plain if secs > 0 else 0.0
        return observed < 1.0 and observed < 0.7 * predicted_rate


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
