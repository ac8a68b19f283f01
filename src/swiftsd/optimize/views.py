"""Read-only views of a :class:`~swiftsd.optimize.optimizer.SkipOptimizer`: the status dict (stats,
/metrics, the store), the CLI's one-line summary and the per-step trace record.

They read the optimiser through :class:`OptimizerView`, the part of it they show, so this module
needs nothing from ``optimizer.py`` (which calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..config import OptimizerConfig
from ..engine.cost import CostModel, Prediction
from ..engine.skipset import SkipSet
from .records import Evaluation, OptimizerState, finite_or_none

if TYPE_CHECKING:
    from ..stats import GenerationStats


class OptimizerView(Protocol):
    """What the views read of an optimiser."""

    state: OptimizerState
    config: OptimizerConfig
    precision: str

    def priced_at(self, costs: CostModel) -> str: ...

    @property
    def n_flags(self) -> int: ...

    @property
    def measured_costs(self) -> CostModel | None: ...

    @property
    def step_evaluation(self) -> Evaluation | None: ...

    def current(self) -> SkipSet | None: ...

    def predict(self) -> Prediction | None: ...

    def measured_speedup(self) -> float | None: ...

    def rolling_acceptance(self) -> float | None: ...


def status(opt: OptimizerView) -> dict[str, Any]:
    """Phase, iterations, best matchness, current set, predicted vs measured speed-up (JSON)."""
    st = opt.state
    pred = opt.predict()
    cur = opt.current()
    costs = opt.measured_costs
    return {
        "phase": st.phase, "objective": opt.config.objective, "round": st.round + 1,
        "requests": st.requests, "steps": st.steps, "iterations": st.iterations,
        "round_iterations": st.round_iterations, "since_improvement": st.since_improvement,
        "stop_reason": st.stop_reason, "best_set": st.best.to_dict(), "best_matchness": st.best_matchness,
        "best_ratio": len(st.best) / opt.n_flags if opt.n_flags else 0.0,
        "current_set": cur.to_dict() if cur is not None else None,
        "predicted_speedup": pred.speedup if pred else None,
        "predicted_draft_len": pred.draft_len if pred else None,
        "draft_cost": costs.draft_cost(st.best, opt.priced_at(costs)) if costs else None,
        "precision": opt.precision,
        "measured_speedup": opt.measured_speedup(), "acceptance": opt.rolling_acceptance(),
        "baseline_acceptance": st.baseline_acceptance, "nodes_per_depth": st.nodes_per_depth,
        "miss_scale": st.miss_scale,
        "probes": st.probes, "drift_reopenings": st.drift_reopenings,
        "unpaid_requests": st.unpaid_requests,
        "time_optimizing": st.time_optimizing, "time_decoding": st.time_decoding,
        "time_measuring_costs": st.time_measuring,
        "costs": costs.to_dict() if costs else None,
    }


def summary(opt: OptimizerView) -> str:
    """One line for the CLI, readable without the paper: every figure says what it is, or that it
    is not known yet."""
    d = status(opt)

    def f(x: float | None, fmt: str, unit: str = "") -> str:
        return "not measured yet" if x is None else format(x, fmt) + unit

    its = d["iterations"]
    stopped = f", stopped: {d['stop_reason']}" if d["stop_reason"] else ""
    pred, meas = d["predicted_speedup"], d["measured_speedup"]
    speed = f"speed-up predicted {f(pred, '.2f', 'x')}" if pred is not None else "speed-up not predicted yet"
    speed += f", measured {meas:.2f}x" if meas is not None else ", not measured yet"
    # the optimiser offers its set; the planner still runs the draft only on steps where it pays
    if d["current_set"]:
        drafting = "its best set is offered to the planner, which drafts with it on steps where it pays"
    else:
        drafting = "no set offered for drafting (none pays yet on this device)"
    return (f"optimizer {d['phase']} (round {d['round']}, {its} iteration{'' if its == 1 else 's'}{stopped}), "
            f"best matchness {f(d['best_matchness'], '.2f')}, skipping {len(opt.state.best)}/{opt.n_flags} "
            f"sublayers, draft cost {f(d['draft_cost'], '.2f')} of a full step, {speed}; {drafting}")


def trace_record(opt: OptimizerView, stats: "GenerationStats", accepted: int, drafted: int,
                 step_time: float | None) -> dict[str, Any]:
    """One step of the per-step trace (``swiftsd plot-trace`` draws these)."""
    st, ev = opt.state, opt.step_evaluation
    pred = opt.predict()
    return {
        "step": st.steps, "request": st.requests, "request_step": stats.steps, "phase": st.phase,
        "round": st.round, "iteration": st.iterations,
        "eval_source": ev.source if ev else None, "eval_size": len(ev.skip) if ev else None,
        "matchness": ev.matchness if ev else None, "objective": ev.objective if ev else None,
        "best_matchness": st.best_matchness, "best_objective": finite_or_none(st.best_objective),
        "best_size": len(st.best), "drafted": drafted, "accepted": accepted,
        "step_time": step_time, "acceptance": opt.rolling_acceptance(),
        "predicted_speedup": pred.speedup if pred else None, "measured_speedup": opt.measured_speedup(),
        "miss_scale": st.miss_scale,
    }
