"""Search strategies: each turns the search state into one candidate skip set.

``RandomSearch`` is the paper's proposal, ``BayesSearch`` its every-``bayes_interval``-th
Gaussian-process suggestion, ``LocalSearch`` our one-sublayer moves from the best set.
Only ``BayesSearch`` keeps state (the scored points and its random state), and
``state_dict`` / ``load_state_dict`` carry it as plain JSON.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..config import OptimizerConfig
from ..engine.skipset import SkipSet


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


class BayesSearch:
    """GP over the 2·(L−2) flags in [0, 1] with UCB (``bayes-optimization``); the largest
    ``n_skip`` coordinates of a suggestion form the set.

    Every scored set is kept here, in order; a suggestion fits a fresh GP to them. A set
    scored k times (the best set is re-scored on every request) enters the GP once, at its
    mean score with noise ``gp_alpha / k``: the posterior k repeated observations would
    give, without the library's one printed line per repeated point. The acquisition's
    inner search is ours to size (``bayes_n_random`` random points, ``bayes_n_smart``
    L-BFGS-B runs; the library's 10 000 and 10 take 15-35 s per suggestion on a CPU).
    scikit-learn and SciPy are imported on the first suggestion.
    """

    name = "bayes"

    def __init__(self, num_layers: int, cfg: OptimizerConfig) -> None:
        self.num_layers = num_layers
        self.cfg = cfg
        self.keys = [f"x{i:03d}" for i in range(2 * (num_layers - 2))]  # zero-padded: sorted == numeric
        self.observations: list[tuple[tuple[int, ...], float]] = []  # (flags, value), in scoring order
        self.random_state = np.random.RandomState(cfg.seed)

    def propose(self, best: SkipSet, n_skip: int, rng: np.random.Generator) -> SkipSet:
        x = self._suggest()
        flags = np.zeros(len(x), dtype=int)
        flags[np.argsort(-x, kind="stable")[:n_skip]] = 1
        return SkipSet.from_flags(flags, self.num_layers)

    def observe(self, skip: SkipSet, value: float) -> None:
        self.observations.append((tuple(skip.to_flags(self.num_layers)), float(value)))

    def _suggest(self) -> np.ndarray:
        if not self.observations:
            return self.random_state.uniform(size=len(self.keys))
        from bayes_opt.acquisition import UpperConfidenceBound
        from bayes_opt.target_space import TargetSpace
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import Matern

        cfg, rs = self.cfg, self.random_state
        scores: dict[tuple[int, ...], list[float]] = {}
        for flags, value in self.observations:
            scores.setdefault(flags, []).append(value)
        space = TargetSpace(None, {k: (0.0, 1.0) for k in self.keys})
        for flags, values in scores.items():
            space.register(np.array(flags, dtype=float), float(np.mean(values)))
        alpha = np.array([cfg.gp_alpha / len(values) for values in scores.values()])
        gp = GaussianProcessRegressor(kernel=Matern(nu=2.5), alpha=alpha, normalize_y=True,
                                      n_restarts_optimizer=cfg.gp_restarts, random_state=rs)
        return UpperConfidenceBound(kappa=cfg.kappa).suggest(
            gp=gp, target_space=space, n_random=cfg.bayes_n_random, n_smart=cfg.bayes_n_smart, fit_gp=True,
            random_state=rs)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rs = self.random_state.get_state(legacy=False)
        return {"observations": [[list(flags), value] for flags, value in self.observations],
                "random_state": {"key": rs["state"]["key"].tolist(), "pos": int(rs["state"]["pos"]),
                                 "has_gauss": int(rs["has_gauss"]), "gauss": float(rs["gauss"])}}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        n = len(self.keys)
        obs = [(tuple(int(f) for f in flags), float(value)) for flags, value in d["observations"]]
        if any(len(flags) != n for flags, _ in obs):
            raise ValueError(f"scored points have {n} flags on this model")
        r = d["random_state"]
        self.random_state.set_state({"bit_generator": "MT19937",
                                     "state": {"key": np.array(r["key"], dtype=np.uint32), "pos": int(r["pos"])},
                                     "has_gauss": int(r["has_gauss"]), "gauss": float(r["gauss"])})
        self.observations = obs
