"""Frozen configuration, parsed once at the edge (API kwargs, CLI flags, server)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class OptimizerConfig:
    """SWIFT optimisation phase; defaults are the reference implementation's (DESIGN.md §1)."""

    enabled: bool = True
    context_window: int = 32  # generated tokens scored by matchness
    skip_ratio: float = 0.45  # share of the 2·(L−2) sublayers a proposal skips
    bayes_interval: int = 25  # every n-th proposal comes from the Gaussian process
    max_opt_iter: int = 1000
    max_tolerance_iter: int = 300  # proposals without improvement before stopping
    max_score: float = 0.95  # stop once best matchness exceeds this
    gp_alpha: float = 1e-2
    kappa: float = 2.5  # UCB exploration weight
    seed: int = 0


@dataclass(frozen=True)
class SwiftConfig:
    """Acceleration-phase settings; defaults are the paper's."""

    stop_threshold: float = 0.8  # stop drafting when the draft's top-1 probability falls below
    max_draft: int = 25  # draft tokens per step at most
    use_tree: bool = True  # False: verify the top-1 chain only (ablation)
    # Tree width per depth from the draft's top-1 probability p:
    # p > 0.95 -> 1, p > 0.8 -> 3, p > 0.5 -> 5, else 10 (paper §4.2).
    tree_thresholds: tuple[float, ...] = (0.95, 0.8, 0.5)
    tree_widths: tuple[int, ...] = (1, 3, 5, 10)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.stop_threshold <= 1.0:
            raise InvalidArgumentError(f"stop_threshold must be in [0, 1], got {self.stop_threshold}")
        if self.max_draft < 0:
            raise InvalidArgumentError(f"max_draft must be >= 0, got {self.max_draft}")
        if len(self.tree_widths) != len(self.tree_thresholds) + 1 or min(self.tree_widths) < 1:
            raise InvalidArgumentError(
                "tree_widths needs one more entry than tree_thresholds, all >= 1, "
                f"got widths={self.tree_widths} thresholds={self.tree_thresholds}"
            )

    @property
    def max_width(self) -> int:
        return max(self.tree_widths) if self.use_tree else 1

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "SwiftConfig":
        """Build from flat keyword arguments; ``optimizer`` may be a dict or an OptimizerConfig."""
        names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - names
        if unknown:
            raise InvalidArgumentError(
                f"unknown SwiftDecoder option(s) {sorted(unknown)}; valid options: {sorted(names)}"
            )
        kw = dict(kwargs)
        opt = kw.get("optimizer")
        if isinstance(opt, Mapping):
            onames = {f.name for f in fields(OptimizerConfig)}
            bad = set(opt) - onames
            if bad:
                raise InvalidArgumentError(f"unknown optimizer option(s) {sorted(bad)}; valid: {sorted(onames)}")
            kw["optimizer"] = OptimizerConfig(**opt)
        elif opt is False:
            kw["optimizer"] = OptimizerConfig(enabled=False)
        for key in ("tree_thresholds", "tree_widths"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def with_(self, **changes: Any) -> "SwiftConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, validated once. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        t, p, k = self.temperature, self.top_p, self.top_k
        if not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
            raise InvalidArgumentError(f"temperature must be >= 0 (0 = greedy), got {t!r}")
        if not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 < p <= 1.0:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {p!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidArgumentError(f"top_k must be an integer >= 0 (0 = off), got {k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
