"""One object makes every per-step choice by cost: search or not, draft or not, how many nodes to verify.

The :class:`Planner` owns what those choices remember: the wall-clock bound (which can only
lower a forecast), the optimiser's search budget, the layer-skip ceiling of the cost model in
use, and the copy probes' policy. It reads the decoder's one cost model (a
:class:`~swiftsd.engine.cost_cache.CostSource`) and acceptance counts; its arithmetic is in
``forecast.py``. With ``config.planner`` off (the paper's loop) it plans nothing away: every
step drafts, every node is verified up to ``max_nodes``, the search always runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import SwiftConfig
from ..engine.cost import CostModel
from ..engine.cost_cache import CostSource
from ..engine.skipset import SkipSet
from .bounds import CopyProbe, SearchBudget, WallClockBound
from .forecast import StepPlan, choose_node_count, layerskip_ceiling, plan_layerskip, relative_verify

if TYPE_CHECKING:
    from ..drafters.base import DraftTrie


@dataclass(frozen=True)
class DraftCandidate:
    """A model draft the planner may run this step: its precision, skip set and per-depth acceptance."""

    precision: str
    skip: SkipSet | None
    alpha: float


@dataclass(frozen=True)
class StepOutcome:
    """What verification made of one step, for :meth:`Planner.record`."""

    accepted: int  # trie nodes accepted (the bonus token excluded)
    model_accepted: int  # of which the layer-skip draft proposed
    nodes: int  # nodes verified, root included
    context: int  # committed tokens when the step began
    seconds: float  # the step's wall clock, drafting to commit


class Planner:
    """Per-step choices by the measured cost model and acceptance counts (see the module docstring)."""

    def __init__(self, config: SwiftConfig, costs: CostSource) -> None:
        self.config, self.costs = config, costs
        self.wall, self.budget = WallClockBound(), SearchBudget()
        self._ceiling: tuple[CostModel, str, float] | None = None  # layerskip_ceiling's rate, per costs and precision

    def reset(self) -> None:
        """Forget what the stream taught (the bounds and the budget)."""
        self.wall, self.budget = WallClockBound(), SearchBudget()

    # -- the decisions, in the order the loop asks them ------------------------------------------
    def new_probe(self) -> CopyProbe | None:
        """A request's copy probe (None: this decoder never probes); one per request, so streams stay apart."""
        return CopyProbe() if self.config.planner and self.config.copy_probe else None

    def search_pays(self, precision: str = "full") -> bool:
        """Should the optimiser score a proposal now? Only where some skip set could pay on this device
        at a best-case acceptance, and the budget is open (planner and ``search_gate`` only: the
        paper's loop, and ``swiftsd tune``, always search). ``precision``: the weights sets are scored at."""
        cfg = self.config
        if not (cfg.planner and cfg.search_gate):
            return True
        ceiling = self.ceiling(precision)
        return self.budget.open() and self.wall.bound(ceiling) > 1.0

    def ceiling(self, precision: str = "full") -> float:
        """The best rate any skip set the optimiser may propose at ``precision`` could reach
        (``layerskip_ceiling``), memoised per cost model and precision."""
        costs, cfg = self.costs.get(), self.config
        if precision not in costs.measured_precisions():
            precision = "full"
        if self._ceiling is None or self._ceiling[0] is not costs or self._ceiling[1] != precision:
            ratio = max(cfg.optimizer.ratio_range[1], cfg.optimizer.skip_ratio)
            rate = layerskip_ceiling(costs, ratio, self.frontier(precision), cfg.max_draft, precision=precision).rate
            self._ceiling = (costs, precision, rate)
        return self._ceiling[2]

    def searched(self, seconds: float) -> None:
        """The optimiser spent ``seconds`` scoring a proposal: charge the budget."""
        self.budget.spend(seconds / self.costs.get().full_step)

    def plan(self, trie: "DraftTrie", skip: SkipSet | None, alpha: float, depth: int, context: int,
             candidates: "list[DraftCandidate] | None" = None) -> StepPlan:
        """Run the layer-skip draft this step, and at which precision? ``skip`` None or ``depth`` 0: no;
        ``alpha`` is its per-depth acceptance, ``context`` the committed length. ``candidates``: the
        drafts to choose among, (precision, skip set, acceptance) each (default: ``skip`` at full
        precision); the best forecast wins, and runs only if it beats the free drafts. The paper's loop
        always drafts, with the first candidate."""
        cands = [c for c in (candidates or [DraftCandidate("full", skip, alpha)]) if c.skip is not None]
        if not cands or depth <= 0:
            return StepPlan(False, None, max(0, depth), 0.0)
        if not self.config.planner:
            return StepPlan(True, cands[0].skip, depth, 0.0, precision=cands[0].precision)
        cfg, costs = self.config, self.costs.get().at_context(context)
        measured = costs.measured_precisions()
        plans = [plan_layerskip(costs, trie, c.skip, c.alpha, self.frontier(c.precision), depth, cfg.max_nodes,
                                self.wall, c.precision) for c in cands if c.precision in measured]
        if not plans:
            return StepPlan(False, None, depth, 0.0)
        return max(plans, key=lambda p: (p.run_model, p.rate))  # ties: the first (full precision before int8)

    def frontier(self, precision: str) -> int:
        """Nodes a draft at ``precision`` expands per depth: a quantized draft drafts narrow."""
        cfg = self.config
        return 1 if not cfg.use_tree else cfg.frontier if precision == "full" else cfg.quant_frontier

    def keep_nodes(self, trie: "DraftTrie", context: int, draft_seconds: float, probe: CopyProbe | None
                   ) -> tuple[int, bool]:
        """How many nodes of ``trie`` to verify (root included), and whether that is a copy probe.

        The count maximises expected tokens per time; draft time already spent counts. Nodes the
        rejection sampler must keep (``trie.keep``) are never dropped."""
        max_nodes = min(self.config.max_nodes, len(trie))
        if not self.config.planner or len(trie) <= 1:
            return max_nodes, False
        costs = self.costs.get().at_context(context)
        spent = draft_seconds / costs.full_step if draft_seconds else 0.0
        n, probing = choose_node_count(trie, costs, spent, max_nodes, probe)
        return max(n, sum(trie.keep)), probing

    def record(self, plan: StepPlan, outcome: StepOutcome, probe: CopyProbe | None, probing: bool) -> None:
        """Learn from the step: the probe's result, what the draft earned the search, the wall-clock bias."""
        costs = self.costs.get().at_context(outcome.context)
        if probing and probe is not None:
            probe.result(outcome.accepted - outcome.model_accepted, relative_verify(costs, outcome.nodes))
        if plan.run_model and plan.priced:  # the search's account: what this draft step earned
            self.budget.earn(outcome.accepted + 1, plan.free_rate, plan.priced * self.wall.correction())
        priced = plan.priced if plan.run_model else relative_verify(costs, outcome.nodes) if self.config.planner else 0.0
        self.wall.record(plan.run_model, outcome.seconds, priced)

    def search_note(self) -> dict[str, float]:
        """Why the search did not run, for the request's optimiser status: the ceiling, or the spent budget."""
        if self._ceiling is None:
            return {}
        if self._ceiling[2] <= 1.0:
            return {"layerskip_ceiling": round(self._ceiling[2], 3)}
        if not self.budget.open():
            return {"search_budget": round(self.budget.balance, 2)}
        return {}

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The recent step times of the wall-clock bound and the search's balance (JSON-able)."""
        return {"wall_clock": self.wall.state_dict(), "search_budget": self.budget.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` all or nothing; absent parts (older files) start afresh."""
        wall, budget = WallClockBound(), SearchBudget()
        wall.load_state_dict(state.get("wall_clock", {}))
        budget.load_state_dict(state.get("search_budget", budget.state_dict()))
        self.wall, self.budget = wall, budget
