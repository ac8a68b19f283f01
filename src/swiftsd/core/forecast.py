"""The planner's arithmetic: pure functions of the cost model, acceptance counts and the trie.

Inputs that noise cannot fake: the device's measured cost model (a draft
forward per skip set and width, a verification forward per node count, in
units of one plain step) and acceptance *counts* (each drafter's calibrated
acceptance). Wall-clock step times are never used to choose; they can only
lower an estimate (a sanity bound), never raise one.

Expected tokens of a trie verified now are ``1 + Σ P(node accepted)``; its
time is the draft time already spent plus ``V(nodes)``. The planner picks the
node count that maximises tokens per time, and runs the layer-skip draft only
when its predicted rate beats what the free drafts already offer. The stateful side
(bounds, budget, probes) and the object that makes the choices are in ``planner.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.cost import CostModel
from ..engine.skipset import SkipSet

if TYPE_CHECKING:
    from ..drafters.base import DraftTrie
    from .bounds import CopyProbe, WallClockBound


@dataclass(frozen=True)
class LayerSkipForecast:
    """Predicted rate of a layer-skip draft step, in tokens per plain-step time."""

    rate: float
    depth: int
    cost_per_depth: float  # c: one draft forward over the frontier / one plain step
    time: float = 0.0  # the step's priced time at that depth (drafts + verification), in plain steps


@dataclass(frozen=True)
class StepPlan:
    """What the planner chose for one step, before any drafting."""

    run_model: bool  # run the layer-skip draft this step
    skip: SkipSet | None
    max_depth: int  # layer-skip draft forwards at most: the depth the forecast priced
    min_mass: float  # dynamic tree: stop when the frontier's mass, times acceptance, falls under this
    priced: float = 0.0  # the forecast's time for the step (plain steps), for the wall-clock bound
    free_rate: float = 1.0  # what the free drafts alone would have given (tokens per plain-step time)
    precision: str = "full"  # the model draft's weights: "full" (the model's own), "int8" or "int4"
    rate: float = 0.0  # the forecast's tokens per plain-step time (how candidate drafts are compared)


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
    if n == 1 and not spent and probe is not None and trie.has_long_match() and probe.due():
        return min(max_nodes, probe.nodes), True
    return n, False


def forecast_layerskip(costs: CostModel, skip: SkipSet, alpha: float, frontier: int, max_depth: int,
                       free_gain: float, free_nodes: int = 1, precision: str = "full") -> LayerSkipForecast:
    """Best depth k for a layer-skip draft with per-depth acceptance ``alpha``.

    Tokens: 1 + Σ_{i≤k} α^i (a chain; the tree's siblings are already in α, which is
    measured on the trees the loop verifies), never less than what the free drafts'
    plan already gives (``free_gain`` from ``free_nodes`` nodes, root included). Time: k
    draft forwards over ``frontier`` tokens plus verifying those nodes and ``2k`` more
    (the planner keeps about two nodes per depth of a tree). Pricing only the ``1 + 2k``
    while crediting the free gain made the draft look good where nodes are dear (smollm2
    bf16 on AVX2: 8 nodes cost 3.4 steps), and it ran there, for about 1 s a turn. A quantized draft
    (``precision``) costs its own measured step, times its measured frontier-of-two factor.
    """
    if precision == "full":
        c = costs.draft_cost(skip) * relative_verify(costs, frontier)
    else:
        c = costs.draft_cost(skip, precision) * (costs.precision_cost(precision).wide if frontier > 1 else 1.0)
    best = LayerSkipForecast(0.0, 0, c)
    e, a_i = 1.0, 1.0
    for k in range(1, max(1, max_depth) + 1):
        a_i *= alpha
        e += a_i
        t = k * c + relative_verify(costs, max(1, free_nodes) + 2 * k)
        rate = max(e, free_gain) / t
        if rate > best.rate:
            best = LayerSkipForecast(rate, k, c, t)
    return best


def plan_layerskip(costs: CostModel, trie: "DraftTrie", skip: SkipSet, alpha: float, frontier: int, depth: int,
                   max_nodes: int, wall: "WallClockBound", precision: str = "full") -> StepPlan:
    """Run the layer-skip draft only when its forecast, bounded by the wall clock, beats the free drafts.

    The draft runs at most the depth the forecast priced. The dynamic tree stops early when the
    next depth's expected gain, α times the frontier's mass, no longer pays for a draft forward.
    Before this, the draft ran two depths beyond what was priced and stopped on the mass alone.
    On qwen-0.5b bf16 with native bf16 products it then drafted 2.6 forwards where 2.05 were
    priced, and ran at 0.93 of the forecast's 1.13.
    """
    free_n, free_rate, free_gain = 1, 1.0, 1.0
    if len(trie) > 1:  # what the free drafts alone would verify now, and give
        free_n, free_rate = best_node_count(trie.score[1:], costs, 0.0, max_nodes)
        free_gain = 1.0 + sum(sorted(trie.score[1:], reverse=True)[: free_n - 1])
    fc = forecast_layerskip(costs, skip, alpha, frontier, depth, free_gain, free_n, precision)
    run_model = wall.bound(fc.rate) > max(1.0, free_rate) * 1.02
    min_mass = fc.cost_per_depth * max(1.0, free_rate) / max(alpha, 1e-3)
    return StepPlan(run_model, skip, min(depth, max(1, fc.depth)), min_mass, fc.time, max(1.0, free_rate), precision,
                    fc.rate)


# Per-depth acceptance, optimistic for a draft that skips 60 % of the sublayers: on smollm2-135m the
# search's best set skipping 28 of 56 scored matchness 0.00 (README command 1, this CPU).
OPTIMISTIC_ACCEPTANCE = 0.8


def layerskip_ceiling(costs: CostModel, ratio: float, frontier: int, max_depth: int,
                      alpha: float = OPTIMISTIC_ACCEPTANCE, precision: str = "full") -> LayerSkipForecast:
    """The best forecast any skip set the optimiser may propose could reach on this device.

    The cheapest such draft (``ratio`` of the 2·(L−2) inner sublayers, the dearer kind first)
    at acceptance ``alpha``, both beyond what a search finds. Where even its rate is under 1,
    no set can pay (qwen-0.5b fp32 on a 2-core AVX2 CPU, where 9 verify nodes cost 2.1
    plain steps), and scoring proposals only costs time: 6 % of a request's first turn.
    """
    inner = list(range(1, costs.num_layers - 1))
    n = max(0, min(2 * len(inner), round(ratio * 2 * len(inner))))
    per = costs if precision == "full" else costs.precision_cost(precision)  # at that precision's weights
    dear, cheap = ("attn", "mlp") if per.attn >= per.mlp else ("mlp", "attn")
    skip = SkipSet(**{dear: inner[: min(n, len(inner))], cheap: inner[: max(0, n - len(inner))]})
    return forecast_layerskip(costs, skip, alpha, frontier, max_depth, 1.0, precision=precision)
