"""The phase machine: search, accelerate, or decode plainly; one :class:`SkipOptimizer` per decoder."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..config import OptimizerConfig
from ..engine.cost import CostModel
from ..engine.skipset import SkipSet
from ..errors import InvalidArgumentError, InvalidSkipSetError
from . import views
from .predict import Predictions
from .search import BayesSearch, LocalSearch, RandomSearch, Strategy
from .records import ACCELERATE, PLAIN, SEARCH, Evaluation, Memory, OptimizerState

if TYPE_CHECKING:
    from ..stats import GenerationStats

STATE_VERSION = 1  # of SkipOptimizer.state_dict()
HISTORY = 4096  # evaluations kept in SkipOptimizer.history


class CostProvider(Protocol):
    """Where the optimiser reads the device cost model: the decoder's ``CostSource``."""

    def get(self) -> CostModel: ...

    def peek(self) -> CostModel | None: ...


class FixedCosts:
    """A cost model given outright (tests, replays): never measured."""

    def __init__(self, costs: CostModel) -> None:
        self.costs = costs

    def get(self) -> CostModel:
        return self.costs

    def peek(self) -> CostModel | None:
        return self.costs


class SkipOptimizer(Predictions):
    """SWIFT's optimisation phase with explicit state; one per :class:`SwiftDecoder`.

    The decode loop calls, per step: ``wants_proposal(n_generated)`` →
    ``propose()`` → (decoder computes matchness) → ``observe(skip, score)``; then
    ``current()`` for the draft's skip set (``None``: plain step); after the step,
    ``record_step(stats, accepted=, drafted=, step_time=)``. State lasts across
    requests until ``reset()``.
    """

    def __init__(self, num_layers: int, config: OptimizerConfig | None = None, start: SkipSet | None = None,
                 costs: "CostModel | CostProvider | None" = None, max_draft: int = 25, precision: str = "full") -> None:
        self.num_layers = num_layers
        self.precision = _check_precision(precision)
        self.config = config or OptimizerConfig()
        self.start = (start if start is not None else SkipSet.uniform(num_layers)).validate(num_layers)
        self.max_draft = max_draft
        # the decoder's cost source (it owns, measures and saves the model); a CostModel: fixed costs
        self._cost_source: CostProvider | None = FixedCosts(costs) if isinstance(costs, CostModel) else costs
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything learnt (keeps the device cost model: the device did not change)."""
        cfg = self.config
        self.state = OptimizerState(best=self.start, probe_interval=cfg.probe_interval,
                                    miss_scale=cfg.miss_scale_prior if cfg.calibrate_acceptance else 1.0)
        self.history: deque[Evaluation] = deque(maxlen=HISTORY)  # for people and tests; decisions never read it
        self.rng = np.random.default_rng(cfg.seed)
        self._new_round_strategies()
        self.mem = Memory.new(cfg.measure_window, cfg.drift_window)
        if not cfg.enabled:
            self.state.phase = ACCELERATE

    def search_at(self, precision: str, start: SkipSet) -> None:
        """Score sets at ``precision`` from now on, from ``start``; a change forgets the search (a set's
        matchness and cost at one precision say little of another's). The same precision: nothing."""
        if _check_precision(precision) != self.precision:
            self.precision, self.start = precision, start.validate(self.num_layers)
            self.reset()

    # -- what it learned, as plain JSON --------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything learned, as plain JSON: ``load_state_dict`` of it continues exactly from here
        (same next proposals, same ``current()``, same ``record_step`` decisions)."""
        return {"version": STATE_VERSION, "num_layers": self.num_layers, "state": self.state.to_dict(),
                "memory": self.mem.to_dict(), "history": [e.to_dict() for e in self.history],
                "rng": self.rng.bit_generator.state, "bayes": self.bayes.state_dict(), "precision": self.precision}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. The cost model is not part of it: the decoder owns and
        restores that (an older state's ``costs`` entry is ignored)."""
        if not isinstance(d, dict) or not isinstance(d.get("version"), int):
            raise InvalidArgumentError("optimizer state must be the dict SkipOptimizer.state_dict() returns")
        if d["version"] > STATE_VERSION:
            raise InvalidArgumentError(f"optimizer state has version {d['version']}; this swiftsd reads up to "
                                       f"{STATE_VERSION}: upgrade swiftsd")
        if d.get("num_layers") != self.num_layers:
            raise InvalidArgumentError(f"optimizer state is for a {d.get('num_layers')}-layer model, this one has "
                                       f"{self.num_layers} layers")
        try:
            state, history = OptimizerState.from_dict(d["state"]), [Evaluation.from_dict(e) for e in d["history"]]
            bayes = BayesSearch(self.num_layers, self.config)
            bayes.load_state_dict(d["bayes"])
            mem = Memory.new(self.config.measure_window, self.config.drift_window)
            mem.load(d["memory"])
            rng = np.random.default_rng()
            rng.bit_generator.state = d["rng"]
            precision = _check_precision(d.get("precision", "full"))  # states before issue 33: full
        except (KeyError, TypeError, ValueError, InvalidSkipSetError) as exc:
            raise InvalidArgumentError(f"optimizer state is malformed ({type(exc).__name__}: {exc})") from None
        self.state, self.mem, self.rng, self.bayes, self.precision = state, mem, rng, bayes, precision
        self.history = deque(history, maxlen=HISTORY)

    # -- views -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What it is doing now (phase, best set, speed-ups), for stats, /metrics and the store."""
        return views.status(self)

    def summary(self) -> str:
        """One line for the CLI."""
        return views.summary(self)

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
    def measured_costs(self) -> CostModel | None:
        """The device cost model if measured already (reading it measures nothing)."""
        return self._cost_source.peek() if self._cost_source is not None else None

    @property
    def step_evaluation(self) -> Evaluation | None:
        """The proposal scored before the current step, if any (for its trace record)."""
        return self.mem.step_eval

    @property
    def costs(self) -> CostModel | None:
        """The device cost model, measured on first use (a few timed forwards, counted as the search's)."""
        if self._cost_source is None:
            return None
        if self._cost_source.peek() is None:
            t0 = time.perf_counter()
            self._cost_source.get()
            self.state.time_measuring += time.perf_counter() - t0
        return self._cost_source.get()

    # -- the loop's interface --------------------------------------------------------
    def wants_proposal(self, n_generated: int) -> bool:
        """Before each step: score one candidate now? (after the window has been generated)."""
        if n_generated <= 1 or n_generated < self.mem.last_n:
            self._begin_request()
        self.mem.last_n = n_generated
        _ = self.costs  # measured once, here, so the time counts as optimisation
        st, cfg = self.state, self.config
        if st.phase != SEARCH or n_generated <= cfg.context_window + 1:
            return False
        share = cfg.max_opt_share
        if share < 1.0:  # a time budget: the next scoring must fit in it (decode now, search later)
            share *= cfg.budget_decay ** st.unpaid_requests  # searching in vain: search less and less
            if st.request_optimizing + self.mem.eval_time > share / (1.0 - share) * st.request_decoding:
                return False
        return (n_generated - cfg.context_window - 2) % cfg.opt_interval == 0 or st.best_stale

    def propose(self) -> SkipSet:
        """The next candidate: the best set first on a new request (re-score), else a search move."""
        st, cfg = self.state, self.config
        if st.best_stale and (cfg.rescore_best or st.best_matchness is None):
            self.mem.pending = ("rescore", st.best)
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
        self.mem.pending = (strategy.name, cand)
        return cand

    def observe(self, skip: SkipSet, matchness: float) -> None:
        """Register one scored candidate with the GP; keep it if it beats the best; apply the stop rules."""
        st = self.state
        source = self.mem.pending[0] if self.mem.pending and self.mem.pending[1] == skip else "given"
        self.mem.pending = None
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
                    self.mem.speed.clear()
                    self.mem.rounds.clear()
                st.best, st.best_matchness, st.best_objective = skip, float(matchness), value
                st.since_improvement = 0
            else:
                st.since_improvement += 1
        ev = Evaluation(st.iterations, st.requests, st.round, source, skip, float(matchness), value,
                        st.best_objective, improved)
        self.history.append(ev)
        self.mem.step_eval = ev
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
        spent = stats.time_optimize - self.mem.opt_time_seen
        self.mem.opt_time_seen = stats.time_optimize
        st.time_optimizing += spent
        searched = spent - (st.time_measuring - self.mem.measuring_seen)
        st.request_optimizing += searched
        self.mem.measuring_seen = st.time_measuring
        if searched > 0:
            self.mem.eval_time = searched if self.mem.eval_time == 0 else 0.7 * self.mem.eval_time + 0.3 * searched
        st.time_decoding += step_time or 0.0
        st.request_decoding += step_time or 0.0
        if drafted > 0:
            tree = stats.tree_sizes[-1] if stats.tree_sizes else 1 + drafted
            st.nodes_per_depth = 0.9 * st.nodes_per_depth + 0.1 * max(1.0, (tree - 1) / drafted)
            self.mem.accept.add(accepted, drafted)
            self.mem.rounds.add(accepted + 1, drafted)
            self._calibrate()
            if step_time is not None:
                self.mem.speed.add(accepted + 1, step_time)
        elif step_time is not None:
            self.mem.plain_times.append(step_time)
        self._update_phase(drafted)
        stats.trace.append(views.trace_record(self, stats, accepted, drafted, step_time))
        self.mem.step_eval = None

    # -- internals -------------------------------------------------------------------
    def _begin_request(self) -> None:
        st = self.state
        if st.requests > 0 and st.phase == SEARCH:
            st.unpaid_requests = 0 if self._pays() else st.unpaid_requests + 1
        st.requests += 1
        st.request_optimizing = st.request_decoding = 0.0
        self.mem.opt_time_seen = 0.0  # stats.time_optimize restarts with each request
        st.best_stale = True
        self.mem.last_n = 0

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
        self.mem.accept.clear()
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
                        self.mem.accept.clear()
                    else:
                        st.probe_interval = min(st.probe_interval * 2, 64 * cfg.probe_interval)
            else:
                st.plain_steps_since_probe += 1
                if st.plain_steps_since_probe >= st.probe_interval:
                    st.plain_steps_since_probe, st.probing = 0, cfg.probe_steps
                    st.probes += 1
                    self.mem.speed.clear()  # the probe measures afresh

    def _check_drift(self) -> None:
        st, cfg = self.state, self.config
        acc = self.mem.accept.ratio()
        if not self.mem.accept.full or acc is None:
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
        self.mem.accept.clear()
        self._new_round_strategies()


def _check_precision(precision: Any) -> str:
    if precision not in ("full", "int8", "int4"):
        raise ValueError(f"optimizer precision must be 'full', 'int8' or 'int4', got {precision!r}")
    return str(precision)
