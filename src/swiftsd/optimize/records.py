"""What the optimiser knows, as values that round-trip through plain JSON.

``OptimizerState`` holds the public figures (phase, best set, scores, calibration,
timings); ``Rolling`` the windows the fallback and drift decisions read;
``Evaluation`` one scored proposal. Each has ``to_dict`` / ``from_dict`` so
:meth:`SkipOptimizer.state_dict` can save everything and restore it exactly.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..engine.skipset import SkipSet

SEARCH, ACCELERATE, PLAIN = "search", "accelerate", "plain"


def finite_or_none(x: float) -> float | None:
    """JSON has no infinities: −inf ("nothing scored yet") is stored as null."""
    return x if math.isfinite(x) else None


def _or_minus_inf(x: float | None) -> float:
    return -math.inf if x is None else float(x)


@dataclass(frozen=True)
class Evaluation:
    """One scored proposal."""

    iteration: int  # proposals scored so far (all rounds), rescoring excluded
    request: int
    round: int
    source: str  # random | bayes | local | rescore | given
    skip: SkipSet
    matchness: float
    objective: float  # what keep-if-better compares: matchness or predicted speed-up
    best_objective: float  # after this evaluation
    improved: bool

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip"], d["best_objective"] = self.skip.to_dict(), finite_or_none(self.best_objective)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evaluation":
        return cls(int(d["iteration"]), int(d["request"]), int(d["round"]), str(d["source"]),
                   SkipSet.from_dict(d["skip"]), float(d["matchness"]), float(d["objective"]),
                   _or_minus_inf(d["best_objective"]), bool(d["improved"]))


class Rolling:
    """Sums over the last ``n`` items (steps): (numerator, denominator) pairs."""

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

    def to_list(self) -> list[list[float]]:
        return [[n, d] for n, d in self.items]

    def load(self, items: list[list[float]]) -> None:
        self.items.clear()
        self.items.extend((float(n), float(d)) for n, d in items)


@dataclass
class OptimizerState:
    """The optimiser's public figures; the rest of what it learned sits in ``SkipOptimizer``'s windows."""

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best"], d["best_objective"] = self.best.to_dict(), finite_or_none(self.best_objective)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimizerState":
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"fields differ: {sorted(set(d) ^ names)}")
        kw = dict(d, best=SkipSet.from_dict(d["best"]), best_objective=_or_minus_inf(d["best_objective"]))
        return cls(**kw)


PLAIN_TIMES = 32  # plain step times kept for the measured baseline


@dataclass
class Memory:
    """The optimiser's working memory between calls: rolling windows and bookkeeping.

    Kept apart from :class:`OptimizerState` because it is not a figure anyone reads,
    but it decides what comes next (fallback, drift, the time budget), so it is saved too.
    """

    speed: Rolling  # (tokens, seconds) of drafted steps with the best set
    rounds: Rolling  # (tokens, drafted) of the same steps
    accept: Rolling  # (accepted, drafted), for drift
    plain_times: deque[float] = field(default_factory=lambda: deque(maxlen=PLAIN_TIMES))
    pending: tuple[str, SkipSet] | None = None  # (source, candidate) proposed and not yet observed
    step_eval: Evaluation | None = None  # scored before the current step, for its trace record
    last_n: int = 0  # tokens generated at the last wants_proposal (a drop means a new request)
    opt_time_seen: float = 0.0  # the request's stats.time_optimize already counted
    measuring_seen: float = 0.0  # state.time_measuring already counted
    eval_time: float = 0.0  # seconds one proposal's scoring takes (EMA): the budget's next expense

    @classmethod
    def new(cls, measure_window: int, drift_window: int) -> "Memory":
        return cls(Rolling(measure_window), Rolling(measure_window), Rolling(drift_window))

    def to_dict(self) -> dict[str, Any]:
        return {"speed": self.speed.to_list(), "rounds": self.rounds.to_list(), "accept": self.accept.to_list(),
                "plain_times": list(self.plain_times),
                "pending": [self.pending[0], self.pending[1].to_dict()] if self.pending else None,
                "step_eval": self.step_eval.to_dict() if self.step_eval else None, "last_n": self.last_n,
                "opt_time_seen": self.opt_time_seen, "measuring_seen": self.measuring_seen,
                "eval_time": self.eval_time}

    def load(self, d: dict[str, Any]) -> None:
        for name in ("speed", "rounds", "accept"):
            getattr(self, name).load(d[name])
        self.plain_times.clear()
        self.plain_times.extend(float(t) for t in d["plain_times"])
        self.pending = (str(d["pending"][0]), SkipSet.from_dict(d["pending"][1])) if d["pending"] else None
        self.step_eval = Evaluation.from_dict(d["step_eval"]) if d["step_eval"] else None
        self.last_n = int(d["last_n"])
        self.opt_time_seen, self.measuring_seen = float(d["opt_time_seen"]), float(d["measuring_seen"])
        self.eval_time = float(d["eval_time"])
