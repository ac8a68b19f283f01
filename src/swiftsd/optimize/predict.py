"""What the cost model and the rolling windows say about a skip set: acceptance, objective,
predicted and measured speed-up. Mixed into :class:`SkipOptimizer`, whose state it reads."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from ..engine.cost import Prediction, effective_acceptance
from ..engine.skipset import SkipSet

if TYPE_CHECKING:
    from ..config import OptimizerConfig
    from ..engine.cost import CostModel
    from .records import Memory, OptimizerState


class Predictions:
    """Read-mostly arithmetic over the optimiser's state (only ``_calibrate`` writes: ``miss_scale``)."""

    state: "OptimizerState"
    config: "OptimizerConfig"
    mem: "Memory"
    max_draft: int
    precision: str  # the draft's weights the sets are scored at: "full", "int8" or "int4"

    @property
    def costs(self) -> "CostModel | None":  # SkipOptimizer measures it on first use
        raise NotImplementedError

    def _calibrate(self) -> None:
        """Fit ``miss_scale`` so the model's tokens per round match the loop's with the best set.

        Matchness is top-1 agreement; the loop also accepts siblings from the tree and stops
        drafting when unsure, so its acceptance is higher. From the last ``measure_window``
        drafted steps with the best set (mean draft length k̄, mean tokens per step T̄), find
        α_eff with E(α_eff, k̄) = T̄ and set ``miss_scale = (1 − α_eff) / (1 − matchness)``;
        predictions then use α = 1 − miss_scale·(1 − matchness) for every set.
        """
        st = self.state
        m = st.best_matchness
        if not self.config.calibrate_acceptance or m is None or m >= 1.0 or len(self.mem.rounds) < 16:
            return
        n = len(self.mem.rounds)
        tokens = sum(t for t, _ in self.mem.rounds.items) / n
        k = sum(d for _, d in self.mem.rounds.items) / n
        alpha = effective_acceptance(tokens, k)
        st.miss_scale = min(max((1.0 - alpha) / (1.0 - m), 0.05), 2.0)

    def priced_at(self, costs: "CostModel") -> str:
        """The precision sets are priced at: the optimiser's, once the cost model has measured it."""
        return self.precision if self.precision in costs.measured_precisions() else "full"

    def acceptance(self, matchness: float) -> float:
        """Calibrated per-token acceptance for a set of this matchness.

        The line α = 1 − s(1 − m) is fitted at the best set, and the loop's acceptance is of
        confident drafts only (the draft stops when unsure), so s can fit tiny: the line then
        rated a set of matchness 0 at α 0.95, and the search adopted a set that predicts nothing.
        Below the best set's matchness m_b, α is therefore also held to the best's α scaled by
        m / m_b: a set that matches less is not credited with more of the best's acceptance."""
        st = self.state
        alpha = 1.0 - st.miss_scale * (1.0 - matchness)
        m_b = st.best_matchness
        if m_b is not None and m_b > 0.0:
            alpha = min(alpha, (1.0 - st.miss_scale * (1.0 - m_b)) * matchness / m_b)
        return min(max(alpha, 0.0), 1.0)

    def objective(self, skip: SkipSet, matchness: float) -> float:
        """What keep-if-better maximises: matchness (paper) or the predicted speed-up.

        Below ``min_speedup`` the prediction is weighted by the acceptance (α·speed-up):
        among sets that do not pay, the least bad by the formula is "skip everything"
        (1/(1+c) at α≈0), a dead end; weighting by α makes the search climb from
        accurate sets towards cheaper ones instead.
        """
        costs = self.costs
        if self.config.objective == "matchness" or costs is None:
            return float(matchness)
        p = costs.predict(self.acceptance(matchness), skip, self.max_draft, self.state.nodes_per_depth,
                          self.priced_at(costs))
        return p.speedup if p.speedup >= self.config.min_speedup else p.acceptance * p.speedup

    def predict(self, skip: SkipSet | None = None, matchness: float | None = None) -> Prediction | None:
        """Predicted speed-up of drafting with ``skip`` (default: the best set) at that matchness."""
        st = self.state
        skip = st.best if skip is None else skip
        m = st.best_matchness if matchness is None else matchness
        costs = self.costs if m is not None else None
        if costs is None or m is None:
            return None
        return costs.predict(self.acceptance(m), skip, self.max_draft, st.nodes_per_depth,
                             self.priced_at(costs))

    def measured_speedup(self) -> float | None:
        """Rolling tokens/s of drafted steps with the best set over tokens/s of plain steps."""
        if len(self.mem.speed) < min(16, self.config.measure_window, self.config.probe_steps):
            return None
        rate = self.mem.speed.ratio()
        plain = self._plain_step_time()
        return rate * plain if rate is not None and plain is not None else None

    def _plain_step_time(self) -> float | None:
        if len(self.mem.plain_times) >= 4:
            return statistics.median(self.mem.plain_times)
        costs = self.costs
        return costs.full_step if costs is not None else None

    def rolling_acceptance(self) -> float | None:
        return self.mem.accept.ratio()
