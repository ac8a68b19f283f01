"""On-the-fly skip-set optimisation: SWIFT's optimisation phase, cost-aware and never slower.

The decode loop consults one :class:`SkipOptimizer` before every step
(``wants_proposal`` / ``propose`` / ``observe`` / ``current``) and reports every
step back (``record_step``). The optimiser never touches the model: it proposes
:class:`SkipSet` values, the decoder scores them by *matchness* (one parallel
draft forward over the request's first generated tokens) and the optimiser
keeps the best.

What the paper does (``OptimizerConfig.reference()``): uniform random proposals
of ``int(2·(L−2)·skip_ratio)`` sublayers, every ``bayes_interval``-th from a
Gaussian process with UCB, keep-if-better on matchness, three stop rules, state
shared across requests.

What we add (defaults; see docs/optimizer.md):

* **cost-aware objective** — the score of a set is its *predicted speed-up*
  from its matchness and costs measured on the running device
  (:class:`CostModel`), so the skip ratio is chosen too;
* **local moves** — part of the proposals mutate the best set (swap / add /
  drop one sublayer), which finds good sets far faster than uniform draws;
* **like-for-like scores** — the best set is re-scored on each new request's
  window before candidates are compared against it;
* **never slower** — while the best set's predicted or measured speed-up is
  under ``min_speedup`` the loop decodes plainly, probing the set again now and then;
* **drift** — when acceptance falls well below its value at the time the
  search stopped, the search re-opens from the current set.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from .config import OptimizerConfig
from .engine.cost import CostModel, Prediction, effective_acceptance, measure_costs
from .engine.skipset import SkipSet

if TYPE_CHECKING:
    from .engine.models import DecoderAdapter
    from .stats import GenerationStats

SEARCH, ACCELERATE, PLAIN = "search", "accelerate", "plain"


# ----------------------------------------------------------------------------------
# Search strategies: each turns the search state into one candidate skip set
# ----------------------------------------------------------------------------------
class Strategy(Protocol):
    name: str

    def propose(self, best: SkipSet, n_skip: int, rng: np.random.Generator) -> SkipSet: ...

    def observe(self, skip: SkipSet, value: float) -> None: ...


class RandomSearch:
    """The paper's proposal: ``n_skip`` sublayers drawn uniformly among layers 1..L−2."""

    name = "random"

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers

    def propose(self, best: SkipSet, n_skip: int, rng: np.random.Generator) -> SkipSet:
        f = 2 * (self.num_layers - 2)
        flags = np.zeros(f, dtype=int)
        flags[rng.choice(f, size=min(n_skip, f), replace=False)] = 1
        return SkipSet.from_flags(flags, self.num_layers)

    def observe(self, skip: SkipSet, value: float) -> None:
        pass


class LocalSearch:
    """Mutate the best set by one sublayer: swap (same ratio), add or drop (ratio ±1)."""

    name = "local"

    def __init__(self, num_layers: int, fixed_size: bool) -> None:
        self.num_layers = num_layers
        self.fixed_size = fixed_size

    def propose(self, best: SkipSet, n_skip: int, rng: np.random.Generator) -> SkipSet:
        flags = np.array(best.to_flags(self.num_layers), dtype=int)
        on, off = np.flatnonzero(flags), np.flatnonzero(flags == 0)
        if self.fixed_size:  # walk to the fixed size first, then swap
            move = "drop" if len(on) > n_skip else "add" if len(on) < n_skip else "swap"
        else:
            move = str(rng.choice(["swap", "add", "drop"]))
        if move == "swap" and (len(on) == 0 or len(off) == 0):
            move = "add" if len(off) else "drop"
        if move == "add" and len(off) == 0:
            move = "drop"
        if move == "drop" and len(on) == 0:
            move = "add"
        if move in ("swap", "drop"):
            flags[rng.choice(on)] = 0
        if move in ("swap", "add"):
            flags[rng.choice(off)] = 1
        return SkipSet.from_flags(flags, self.num_layers)

    def observe(self, skip: SkipSet, value: float) -> None:
        pass


class _UCB:
    """Builds bayes_opt's UpperConfidenceBound with a cheaper inner acquisition search.

    The library maximises the acquisition with 10 000 random points plus 10 L-BFGS-B
    runs on numerical gradients in 2·(L−2) dimensions: 15–35 s per suggestion on
    this CPU. ``n_random`` / ``n_smart`` set those counts.
    """

    @staticmethod
    def make(kappa: float, n_random: int, n_smart: int) -> Any:
        from bayes_opt.acquisition import UpperConfidenceBound

        class CheapUCB(UpperConfidenceBound):
            def suggest(self, gp: Any, target_space: Any, *args: Any, **kwargs: Any) -> Any:
                params = inspect.signature(UpperConfidenceBound.suggest).parameters
                smart_name = "n_smart" if "n_smart" in params else "n_l_bfgs_b"
                kwargs.update({"n_random": n_random, smart_name: n_smart})
                return super().suggest(gp, target_space, *args, **kwargs)

        return CheapUCB(kappa=kappa)


class BayesSearch:
    """GP over the 2·(L−2) flags in [0, 1] with UCB (``bayes-optimization``); every evaluated
    point is registered, and the largest ``n_skip`` coordinates of a suggestion form the set.
    The library (scikit-learn, SciPy) is imported on first use."""

    name = "bayes"

    def __init__(self, num_layers: int, cfg: OptimizerConfig) -> None:
        self.num_layers = num_layers
        self.cfg = cfg
        self.keys = [f"x{i:03d}" for i in range(2 * (num_layers - 2))]  # zero-padded: sorted == numeric
        self._bo: Any = None

    @property
    def bo(self) -> Any:
        if self._bo is None:
            from bayes_opt import BayesianOptimization

            cfg = self.cfg
            self._bo = BayesianOptimization(
                f=None, pbounds={k: (0.0, 1.0) for k in self.keys},
                acquisition_function=_UCB.make(cfg.kappa, cfg.bayes_n_random, cfg.bayes_n_smart),
                random_state=cfg.seed, verbose=0, allow_duplicate_points=True,
            )
            self._bo.set_gp_params(alpha=cfg.gp_alpha, n_restarts_optimizer=cfg.gp_restarts)
        return self._bo

    def propose(self, best: SkipSet, n_skip: int, rng: np.random.Generator) -> SkipSet:
        point = self.bo.suggest()
        x = np.array([float(point[k]) for k in self.keys])
        flags = np.zeros(len(x), dtype=int)
        flags[np.argsort(-x, kind="stable")[:n_skip]] = 1
        return SkipSet.from_flags(flags, self.num_layers)

    def observe(self, skip: SkipSet, value: float) -> None:
        flags = skip.to_flags(self.num_layers)
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints a line per repeated point
            self.bo.register(params={k: float(v) for k, v in zip(self.keys, flags)}, target=float(value))


# ----------------------------------------------------------------------------------
# The optimiser
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """One scored proposal."""

    iteration: int  # proposals scored so far (all rounds), rescoring excluded
    request: int
    round: int
    source: str  # random | bayes | local | rescore
    skip: SkipSet
    matchness: float
    objective: float  # what keep-if-better compares: matchness or predicted speed-up
    best_objective: float  # after this evaluation
    improved: bool


class _Rolling:
    """Sums over the last ``n`` items (steps)."""

    def __init__(self, n: int) -> None:
        self.items: deque[tuple[float, float]] = deque(maxlen=n)

    def add(self, num: float, den: float) -> None:
        self.items.append((num, den))

    def clear(self) -> None:
        self.items.clear()

    @property
    def full(self) -> bool:
        return len(self.items) == self.items.maxlen

    def __len__(self) -> int:
        return len(self.items)

    def ratio(self) -> float | None:
        den = sum(d for _, d in self.items)
        return sum(n for n, _ in self.items) / den if den > 0 else None


@dataclass
class OptimizerState:
    """Everything the optimiser knows; ``state_dict()`` is its JSON view."""

    phase: str = SEARCH
    round: int = 0  # searches opened (1 + drift re-openings)
    requests: int = 0
    steps: int = 0  # decoding steps seen (all requests)
    iterations: int = 0  # proposals scored, all rounds (rescoring excluded)
    round_iterations: int = 0  # proposals scored in this round
    since_improvement: int = 0
    best: SkipSet = field(default_factory=SkipSet)
    best_matchness: float | None = None  # None: not scored yet
    best_objective: float = -math.inf
    best_stale: bool = True  # best not yet scored on the current request's window
    stop_reason: str | None = None
    nodes_per_depth: float = 1.0  # tree nodes verified per drafted depth (EMA)
    miss_scale: float = 1.0  # calibration: acceptance α = 1 − miss_scale·(1 − matchness); starts at the prior
    baseline_acceptance: float | None = None  # rolling acceptance right after the search stopped
    plain_steps_since_probe: int = 0
    probe_interval: int = 0
    probing: int = 0  # drafted steps left in the current probe
    probes: int = 0
    drift_reopenings: int = 0
    time_optimizing: float = 0.0  # seconds in step 2 (proposal + matchness), all requests
    time_decoding: float = 0.0  # seconds in steps 3-7 (draft, verify, commit), all requests
    time_measuring: float = 0.0  # seconds measuring device costs (once, inside time_optimizing)
    request_optimizing: float = 0.0  # this request's search seconds (cost measurement excluded)
    request_decoding: float = 0.0  # this request's seconds in steps 3-7
    unpaid_requests: int = 0  # consecutive requests that ended searching with no set that pays


class SkipOptimizer:
    """SWIFT's optimisation phase with explicit state; one per :class:`SwiftDecoder`.

    The decode loop calls, per step: ``wants_proposal(n_generated)`` →
    ``propose()`` → (decoder computes matchness) → ``observe(skip, score)``; then
    ``current()`` for the draft's skip set (``None``: plain step); after the step,
    ``record_step(stats, accepted=, drafted=, step_time=)``. State lasts across
    requests until ``reset()``.
    """

    def __init__(self, num_layers: int, config: OptimizerConfig | None = None, start: SkipSet | None = None,
                 costs: CostModel | Callable[[], CostModel] | None = None, max_draft: int = 25) -> None:
        self.num_layers = num_layers
        self.config = config or OptimizerConfig()
        self.start = (start if start is not None else SkipSet.uniform(num_layers)).validate(num_layers)
        self.max_draft = max_draft
        self._costs: CostModel | None = costs if isinstance(costs, CostModel) else None
        self._cost_probe: Callable[[], CostModel] | None = costs if callable(costs) else None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything learnt (keeps the device cost model: the device did not change)."""
        cfg = self.config
        self.state = OptimizerState(best=self.start, probe_interval=cfg.probe_interval,
                                    miss_scale=cfg.miss_scale_prior if cfg.calibrate_acceptance else 1.0)
        self.history: list[Evaluation] = []
        self.rng = np.random.default_rng(cfg.seed)
        self._new_round_strategies()
        self._pending: tuple[str, SkipSet] | None = None
        self._step_eval: Evaluation | None = None
        self._last_n = 0
        self._speed = _Rolling(cfg.measure_window)  # (tokens, seconds) of drafted steps with the best set
        self._rounds = _Rolling(cfg.measure_window)  # (tokens, drafted) of the same steps
        self._plain_times: deque[float] = deque(maxlen=32)
        self._accept = _Rolling(cfg.drift_window)  # (accepted, drafted)
        self._opt_time_seen = 0.0
        self._measuring_seen = 0.0
        self._eval_time = 0.0  # seconds one proposal's scoring took (EMA): the budget's next expense
        if not cfg.enabled:
            self.state.phase = ACCELERATE

    def _new_round_strategies(self) -> None:
        cfg = self.config
        self.random = RandomSearch(self.num_layers)
        self.local = LocalSearch(self.num_layers, fixed_size=cfg.objective == "matchness")
        self.bayes = BayesSearch(self.num_layers, cfg)

    @property
    def n_flags(self) -> int:
        return 2 * (self.num_layers - 2)

    @property
    def n_skip(self) -> int:
        """The paper's proposal size int(2·(L−2)·skip_ratio)."""
        return int(self.n_flags * self.config.skip_ratio)

    @property
    def costs(self) -> CostModel | None:
        """The device cost model, measured on first use (a few timed forwards)."""
        if self._costs is None and self._cost_probe is not None:
            t0 = time.perf_counter()
            self._costs = self._cost_probe()
            self._cost_probe = None
            self.state.time_measuring += time.perf_counter() - t0
        return self._costs

    # -- the loop's interface --------------------------------------------------------
    def wants_proposal(self, n_generated: int) -> bool:
        """Before each step: score one candidate now? (after the window has been generated)."""
        if n_generated <= 1 or n_generated < self._last_n:
            self._begin_request()
        self._last_n = n_generated
        _ = self.costs  # measured once, here, so the time counts as optimisation
        st, cfg = self.state, self.config
        if st.phase != SEARCH or n_generated <= cfg.context_window + 1:
            return False
        share = cfg.max_opt_share
        if share < 1.0:  # a time budget: the next scoring must fit in it (decode now, search later)
            share *= cfg.budget_decay ** st.unpaid_requests  # searching in vain: search less and less
            if st.request_optimizing + self._eval_time > share / (1.0 - share) * st.request_decoding:
                return False
        return (n_generated - cfg.context_window - 2) % cfg.opt_interval == 0 or st.best_stale

    def propose(self) -> SkipSet:
        """The next candidate: the best set first on a new request (re-score), else a search move."""
        st, cfg = self.state, self.config
        if st.best_stale and (cfg.rescore_best or st.best_matchness is None):
            self._pending = ("rescore", st.best)
            return st.best
        st.best_stale = False
        if (st.iterations + 1) % cfg.bayes_interval == 0:
            strategy: Strategy = self.bayes
        elif cfg.local_prob > 0 and not st.best.is_empty() and self.rng.random() < cfg.local_prob:
            strategy = self.local
        else:
            strategy = self.random
        n = self._proposal_size(strategy)
        cand = strategy.propose(st.best, n, self.rng)
        self._pending = (strategy.name, cand)
        return cand

    def observe(self, skip: SkipSet, matchness: float) -> None:
        """Register one scored candidate with the GP; keep it if it beats the best; apply the stop rules."""
        st = self.state
        source = self._pending[0] if self._pending and self._pending[1] == skip else "given"
        self._pending = None
        value = self.objective(skip, matchness)
        self.bayes.observe(skip, value)
        if source == "rescore":
            st.best_matchness, st.best_objective, st.best_stale = float(matchness), value, False
            improved = False
        else:
            st.iterations += 1
            st.round_iterations += 1
            improved = value > st.best_objective
            if improved:
                if skip != st.best:
                    self._speed.clear()
                    self._rounds.clear()
                st.best, st.best_matchness, st.best_objective = skip, float(matchness), value
                st.since_improvement = 0
            else:
                st.since_improvement += 1
        ev = Evaluation(st.iterations, st.requests, st.round, source, skip, float(matchness), value,
                        st.best_objective, improved)
        self.history.append(ev)
        self._step_eval = ev
        if source != "rescore":
            self._check_stop()

    def current(self) -> SkipSet | None:
        """The skip set to draft with now, or None for a plain step (never slower).

        With the fallback on, every ``calibrate_every``-th step is plain even while
        drafting: its time is the baseline of the measured speed-up, taken under the
        same conditions (load, context length) as the drafted steps around it.
        """
        st, cfg = self.state, self.config
        if not cfg.fallback or not cfg.enabled:
            return st.best
        if st.phase == PLAIN:
            return st.best if st.probing > 0 else None
        if cfg.calibrate_every and st.steps % cfg.calibrate_every == cfg.calibrate_every - 1:
            return None
        return st.best if self._viable() else None

    def best(self) -> tuple[SkipSet, float | None]:
        """The best set found and its last matchness (None if never scored)."""
        return self.state.best, self.state.best_matchness

    def done(self) -> bool:
        """True once the search has stopped (until drift re-opens it)."""
        return self.state.phase != SEARCH

    def record_step(self, stats: "GenerationStats", accepted: int, drafted: int,
                    step_time: float | None = None) -> None:
        """After each step: rolling speed / acceptance, fallback and drift decisions, a trace record."""
        st = self.state
        st.steps += 1
        spent = stats.time_optimize - self._opt_time_seen
        self._opt_time_seen = stats.time_optimize
        st.time_optimizing += spent
        searched = spent - (st.time_measuring - self._measuring_seen)
        st.request_optimizing += searched
        self._measuring_seen = st.time_measuring
        if searched > 0:
            self._eval_time = searched if self._eval_time == 0 else 0.7 * self._eval_time + 0.3 * searched
        st.time_decoding += step_time or 0.0
        st.request_decoding += step_time or 0.0
        if drafted > 0:
            tree = stats.tree_sizes[-1] if stats.tree_sizes else 1 + drafted
            st.nodes_per_depth = 0.9 * st.nodes_per_depth + 0.1 * max(1.0, (tree - 1) / drafted)
            self._accept.add(accepted, drafted)
            self._rounds.add(accepted + 1, drafted)
            self._calibrate()
            if step_time is not None:
                self._speed.add(accepted + 1, step_time)
        elif step_time is not None:
            self._plain_times.append(step_time)
        self._update_phase(drafted)
        stats.trace.append(self._trace_record(stats, accepted, drafted, step_time))
        self._step_eval = None

    # -- predictions -----------------------------------------------------------------
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
        if not self.config.calibrate_acceptance or m is None or m >= 1.0 or len(self._rounds) < 16:
            return
        n = len(self._rounds)
        tokens = sum(t for t, _ in self._rounds.items) / n
        k = sum(d for _, d in self._rounds.items) / n
        alpha = effective_acceptance(tokens, k)
        st.miss_scale = min(max((1.0 - alpha) / (1.0 - m), 0.05), 2.0)

    def acceptance(self, matchness: float) -> float:
        """Calibrated per-token acceptance for a set of this matchness."""
        return min(max(1.0 - self.state.miss_scale * (1.0 - matchness), 0.0), 1.0)

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
        p = costs.predict(self.acceptance(matchness), skip, self.max_draft, self.state.nodes_per_depth)
        return p.speedup if p.speedup >= self.config.min_speedup else p.acceptance * p.speedup

    def predict(self, skip: SkipSet | None = None, matchness: float | None = None) -> Prediction | None:
        """Predicted speed-up of drafting with ``skip`` (default: the best set) at that matchness."""
        st = self.state
        skip = st.best if skip is None else skip
        m = st.best_matchness if matchness is None else matchness
        costs = self.costs if m is not None else None
        if costs is None or m is None:
            return None
        return costs.predict(self.acceptance(m), skip, self.max_draft, st.nodes_per_depth)

    def measured_speedup(self) -> float | None:
        """Rolling tokens/s of drafted steps with the best set over tokens/s of plain steps."""
        if len(self._speed) < min(16, self.config.measure_window, self.config.probe_steps):
            return None
        rate = self._speed.ratio()
        plain = self._plain_step_time()
        return rate * plain if rate is not None and plain is not None else None

    def _plain_step_time(self) -> float | None:
        if len(self._plain_times) >= 4:
            return statistics.median(self._plain_times)
        costs = self.costs
        return costs.full_step if costs is not None else None

    def rolling_acceptance(self) -> float | None:
        return self._accept.ratio()

    # -- internals -------------------------------------------------------------------
    def _begin_request(self) -> None:
        st = self.state
        if st.requests > 0 and st.phase == SEARCH:
            st.unpaid_requests = 0 if self._pays() else st.unpaid_requests + 1
        st.requests += 1
        st.request_optimizing = st.request_decoding = 0.0
        self._opt_time_seen = 0.0  # stats.time_optimize restarts with each request
        st.best_stale = True
        self._last_n = 0

    def _proposal_size(self, strategy: Strategy) -> int:
        cfg, st = self.config, self.state
        if cfg.objective == "matchness":
            return self.n_skip
        if strategy.name == "bayes" and not st.best.is_empty():
            return len(st.best)
        lo, hi = (max(1, round(self.n_flags * r)) for r in cfg.ratio_range)
        return int(self.rng.integers(lo, max(lo, hi) + 1))

    def _check_stop(self) -> None:
        st, cfg = self.state, self.config
        reason = None
        if cfg.objective == "matchness" and st.best_matchness is not None and st.best_matchness > cfg.max_score:
            reason = "max_score"
        elif st.since_improvement >= cfg.max_tolerance_iter:
            reason = "max_tolerance_iter"
        elif st.round_iterations >= cfg.max_opt_iter:
            reason = "max_opt_iter"
        elif cfg.fallback and cfg.give_up_after and st.round_iterations >= cfg.give_up_after and not self._pays():
            reason = "cannot_pay"
        if reason is not None:
            st.stop_reason = reason
            self._stop_search()

    def _stop_search(self) -> None:
        st = self.state
        st.baseline_acceptance = None
        self._accept.clear()
        if self.config.fallback and not self._viable():
            self._enter_plain()
        else:
            st.phase = ACCELERATE

    def _enter_plain(self) -> None:
        st = self.state
        st.phase, st.probing, st.plain_steps_since_probe = PLAIN, 0, 0

    def _pays(self) -> bool:
        """Does the best set reach ``min_speedup``, measured (if measured) or predicted?"""
        measured = self.measured_speedup()
        if measured is not None:
            return measured >= self.config.min_speedup
        pred = self.predict()
        return pred is not None and pred.speedup >= self.config.min_speedup

    def _viable(self) -> bool:
        """Can the best set pay? A measurement beats a prediction; unknown counts as yes."""
        floor = self.config.min_speedup
        measured = self.measured_speedup()
        if measured is not None:
            return measured >= floor
        pred = self.predict()
        return pred is None or pred.speedup >= floor

    def _update_phase(self, drafted: int) -> None:
        st, cfg = self.state, self.config
        if not cfg.enabled:
            return
        if st.phase == ACCELERATE:
            if cfg.fallback and not self._viable():
                self._enter_plain()
            elif cfg.drift:
                self._check_drift()
        elif st.phase == PLAIN and cfg.fallback:
            if st.probing > 0:
                st.probing -= int(drafted > 0)
                if st.probing == 0:
                    if self._viable() and self.measured_speedup() is not None:
                        st.phase, st.probe_interval = ACCELERATE, cfg.probe_interval
                        self._accept.clear()
                    else:
                        st.probe_interval = min(st.probe_interval * 2, 64 * cfg.probe_interval)
            else:
                st.plain_steps_since_probe += 1
                if st.plain_steps_since_probe >= st.probe_interval:
                    st.plain_steps_since_probe, st.probing = 0, cfg.probe_steps
                    st.probes += 1
                    self._speed.clear()  # the probe measures afresh

    def _check_drift(self) -> None:
        st, cfg = self.state, self.config
        acc = self._accept.ratio()
        if not self._accept.full or acc is None:
            return
        if st.baseline_acceptance is None:
            st.baseline_acceptance = acc
        elif acc < cfg.drift_drop * st.baseline_acceptance:
            self._reopen()

    def _reopen(self) -> None:
        """Drift: search again from the current set, with a fresh GP (old scores belong to old data)."""
        st = self.state
        st.phase, st.round, st.round_iterations, st.since_improvement = SEARCH, st.round + 1, 0, 0
        st.best_stale, st.stop_reason, st.baseline_acceptance = True, None, None
        st.drift_reopenings += 1
        st.unpaid_requests = 0  # new data: the search gets its full budget again
        self._accept.clear()
        self._new_round_strategies()

    def _trace_record(self, stats: "GenerationStats", accepted: int, drafted: int,
                      step_time: float | None) -> dict[str, Any]:
        st, ev = self.state, self._step_eval
        pred = self.predict()
        return {
            "step": st.steps, "request": st.requests, "request_step": stats.steps, "phase": st.phase,
            "round": st.round, "iteration": st.iterations,
            "eval_source": ev.source if ev else None, "eval_size": len(ev.skip) if ev else None,
            "matchness": ev.matchness if ev else None, "objective": ev.objective if ev else None,
            "best_matchness": st.best_matchness, "best_objective": _finite(st.best_objective),
            "best_size": len(st.best), "drafted": drafted, "accepted": accepted,
            "step_time": step_time, "acceptance": self.rolling_acceptance(),
            "predicted_speedup": pred.speedup if pred else None, "measured_speedup": self.measured_speedup(),
            "miss_scale": st.miss_scale,
        }

    # -- views ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON view: phase, iterations, best matchness, current set, predicted vs measured speed-up."""
        st = self.state
        pred = self.predict()
        cur = self.current()
        costs = self._costs
        return {
            "phase": st.phase, "objective": self.config.objective, "round": st.round + 1,
            "requests": st.requests, "steps": st.steps, "iterations": st.iterations,
            "round_iterations": st.round_iterations, "since_improvement": st.since_improvement,
            "stop_reason": st.stop_reason, "best_set": st.best.to_dict(), "best_matchness": st.best_matchness,
            "best_ratio": len(st.best) / self.n_flags if self.n_flags else 0.0,
            "current_set": cur.to_dict() if cur is not None else None,
            "predicted_speedup": pred.speedup if pred else None,
            "predicted_draft_len": pred.draft_len if pred else None,
            "draft_cost": costs.draft_cost(st.best) if costs else None,
            "measured_speedup": self.measured_speedup(), "acceptance": self.rolling_acceptance(),
            "baseline_acceptance": st.baseline_acceptance, "nodes_per_depth": st.nodes_per_depth,
            "miss_scale": st.miss_scale,
            "probes": st.probes, "drift_reopenings": st.drift_reopenings,
            "unpaid_requests": st.unpaid_requests,
            "time_optimizing": st.time_optimizing, "time_decoding": st.time_decoding,
            "time_measuring_costs": st.time_measuring,
            "costs": costs.to_dict() if costs else None,
        }

    def summary(self) -> str:
        """One line for the CLI."""
        d = self.state_dict()

        def f(x: float | None, fmt: str) -> str:
            return "n/a" if x is None else format(x, fmt)

        return (f"optimizer {d['phase']} (round {d['round']}, {d['iterations']} iterations"
                f"{', stopped: ' + d['stop_reason'] if d['stop_reason'] else ''}), best matchness "
                f"{f(d['best_matchness'], '.2f')} skipping {len(self.state.best)}/{self.n_flags} sublayers, "
                f"draft cost {f(d['draft_cost'], '.2f')}, speed-up predicted {f(d['predicted_speedup'], '.2f')}x "
                f"measured {f(d['measured_speedup'], '.2f')}x, drafting {'on' if d['current_set'] else 'off'}")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def make_optimizer(adapter: "DecoderAdapter", config: OptimizerConfig, start: SkipSet, max_draft: int,
                   draft_vocab: int = 0) -> SkipOptimizer:
    """The decoder's optimiser: device costs measured lazily, on first use, from ``adapter``."""
    return SkipOptimizer(adapter.num_layers, config, start=start,
                         costs=lambda: measure_costs(adapter, draft_vocab=draft_vocab), max_draft=max_draft)
