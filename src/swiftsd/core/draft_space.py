"""The layer-skip draft's space, precision x skip set: which candidates a step may run, and which
precision the optimiser searches skip sets at.

A draft runs the model's own weights ("full", the paper's draft) or an int8 / int4 copy of them
(``draft_weights.py``), with a skip set. The optimiser searches sets at one precision, the one in
use: the forced one, or with ``draft_precision="auto"`` the one the cost model prefers at a prior
acceptance, chosen once the device's costs are known (a quantized copy is so much cheaper than
skipping layers at full precision that on a CPU this is the cheapest copy, from the empty set:
a quantized draft may want few sublayers skipped or none). The planner then weighs, per step, that
precision's searched set against every other precision's default: a quantized copy of the whole
model, or nothing at full precision (the unskipped model is the target itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine.skipset import SkipSet
from .draft_weights import FULL, QUANT_PRIOR, prior
from .planner import DraftCandidate

if TYPE_CHECKING:
    from ..config import SwiftConfig
    from ..drafters import ModelDrafter
    from ..engine.cost import CostModel
    from ..optimize import SkipOptimizer

# Per-depth acceptance assumed for the starting set when choosing the precision to search at: the
# paper's half-skipped starting set at full precision agrees far less than a quantized whole model.
FULL_START_PRIOR = 0.5


class DraftSpace:
    """Precision x skip set for one decoder: the candidates of a step and the search's precision."""

    def __init__(self, config: "SwiftConfig", optimizer: "SkipOptimizer | None", drafter: "ModelDrafter | None",
                 skip_set: SkipSet) -> None:
        self.config, self.optimizer, self.drafter = config, optimizer, drafter
        self.skip_set = skip_set  # the starting (or, without an optimiser, fixed) set at full precision
        self.settled = config.draft_precision != "auto" or optimizer is None

    @property
    def precision(self) -> str:
        """The precision skip sets are searched (or fixed) at: the forced one, else the optimiser's."""
        p = self.config.draft_precision
        if p in ("int8", "int4", FULL):
            return p
        return self.optimizer.precision if self.optimizer is not None else FULL

    def settle(self, costs: "CostModel") -> None:
        """With ``auto``: search at the precision whose starting draft the cost model rates fastest, if
        that beats plain decoding (once; a restored state searching at a quantized precision is settled)."""
        if self.settled or self.optimizer is None:
            return
        self.settled = True
        measured = [p for p in self.config.precisions if p in costs.measured_precisions()]
        if not self.config.planner or len(measured) < 2:
            return

        def rate(p: str) -> float:
            start, alpha = (self.skip_set, FULL_START_PRIOR) if p == FULL else (SkipSet(), QUANT_PRIOR)
            return costs.predict(alpha, start, self.config.max_draft, 1.0, p).speedup

        best = max(measured, key=rate)
        if rate(best) <= 1.0:  # nothing pays even so: stay with the paper's draft
            return
        self.optimizer.search_at(best, self.skip_set if best == FULL else SkipSet())

    def restored(self) -> None:
        """A learned state was loaded: a search at a quantized precision needs no new choice."""
        if self.optimizer is not None and self.optimizer.precision != FULL:
            self.settled = True

    def skip_for(self, override: SkipSet | None, precision: str = FULL) -> SkipSet | None:
        """The draft's skip set at ``precision``: the request's own, else the searched one at the
        search's precision, else a quantized copy of the whole model (None: no draft; at full precision
        an empty set is the target itself, while a quantized draft may skip nothing)."""
        if override is not None:
            return override
        if precision != self.precision:
            return None if precision == FULL else SkipSet()
        if self.optimizer is None:
            return self.skip_set
        if not self.config.planner:
            return self.optimizer.current()  # the paper's loop: the optimiser alone decides
        best = self.optimizer.best()[0]
        return None if best.is_empty() and precision == FULL else best

    def candidates(self, override: SkipSet | None) -> list[DraftCandidate]:
        """Each precision's draft this step, with its per-depth acceptance (counted, else a prior)."""
        ls = self.drafter
        if ls is None:
            return []
        out = []
        for p in self.config.precisions if self.config.planner else (self.precision,):
            skip = self.skip_for(override, p)
            ls.use_skip(skip, p)
            opt = self.optimizer if override is None and p == self.precision else None
            out.append(DraftCandidate(p, skip, ls.acceptance(prior(opt, p, override is not None), p)))
        return out
