"""Frozen configuration, parsed once at the edge (API kwargs, CLI flags, server)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .errors import InvalidArgumentError


DRAFTER_NAMES = ("layerskip", "lookup", "suffix")
METHODS = ("swiftsd", "swift-paper")
DRAFT_PRECISIONS = ("auto", "full", "int8", "int4")  # "full": the model's own dtype (the paper's draft)
QUANT_GROUPS = (32, 64, 128, 256)  # int4 group sizes PyTorch's kernels take (engine/quant_pack.INT4_GROUPS)


@dataclass(frozen=True)
class OptimizerConfig:
    """SWIFT optimisation phase; defaults are the reference implementation's (docs/optimizer.md)."""

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
    opt_interval: int = 1  # propose every n-th decoding step while searching (reference: 1)
    # -- beyond the paper; OptimizerConfig.reference() switches all of these off --
    objective: str = "speedup"  # "speedup": predicted speed-up from measured costs; "matchness": the paper's
    local_prob: float = 0.5  # share of non-Bayesian proposals that mutate the best set (paper: 0)
    ratio_range: tuple[float, float] = (0.1, 0.6)  # skip ratios random proposals draw from ("speedup")
    rescore_best: bool = True  # re-score the best set on each request's window, compare like with like
    fallback: bool = True  # never slower: decode plainly while the draft cannot pay
    min_speedup: float = 1.0  # predicted / measured speed-up under which the draft is not used
    measure_window: int = 32  # drafted steps in the rolling measured speed-up
    probe_interval: int = 64  # plain steps before re-trying the best set (doubles after a failed probe)
    probe_steps: int = 16  # drafted steps a probe runs
    calibrate_acceptance: bool = True  # fit predicted acceptance to the loop's (tree, confidence stop)
    miss_scale_prior: float = 0.5  # acceptance miss rate / matchness miss rate before the loop has drafted
    calibrate_every: int = 16  # one plain step in this many while drafting times the baseline (0 = never)
    max_opt_share: float = 0.05  # at most this share of each request's decoding time scores proposals (1 = no cap)
    budget_decay: float = 0.5  # while no set pays, each request's search budget is this x the last one's (1 = constant)
    give_up_after: int = 100  # stop searching after this many proposals if no set predicts min_speedup (0 = never)
    drift: bool = True  # re-open the search when acceptance falls well below its value at stop
    drift_window: int = 32  # drafted steps in the rolling acceptance
    drift_drop: float = 0.5  # re-open when rolling acceptance < drift_drop x acceptance after stopping
    bayes_n_random: int = 2000  # random points scored by the acquisition per suggestion
    bayes_n_smart: int = 0  # L-BFGS-B restarts on the acquisition (library default 10: ~20 s here)
    gp_restarts: int = 0  # GP hyper-parameter fit restarts (library default 5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio_range", tuple(float(r) for r in self.ratio_range))
        if self.objective not in ("speedup", "matchness"):
            raise InvalidArgumentError(f"optimizer objective must be 'speedup' or 'matchness', got {self.objective!r}")
        positive = ("context_window", "bayes_interval", "max_opt_iter", "max_tolerance_iter", "opt_interval",
                    "measure_window", "probe_interval", "probe_steps", "drift_window", "bayes_n_random")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"optimizer {name} must be an integer >= 1, got {v!r}")
        if not 0.0 < self.max_opt_share <= 1.0:
            raise InvalidArgumentError(f"optimizer max_opt_share must be in (0, 1], got {self.max_opt_share!r}")
        for name in ("give_up_after", "calibrate_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgumentError(f"optimizer {name} must be an integer >= 0, got {v!r}")
        if self.calibrate_every == 1:
            raise InvalidArgumentError("optimizer calibrate_every must be 0 (off) or >= 2 (1 would never draft)")
        for name in ("skip_ratio", "local_prob", "drift_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidArgumentError(f"optimizer {name} must be in [0, 1], got {getattr(self, name)!r}")
        lo_hi = self.ratio_range
        if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0:
            raise InvalidArgumentError(f"optimizer ratio_range must be (low, high) with 0 < low <= high <= 1, got {lo_hi}")
        if not 0.0 < self.budget_decay <= 1.0:
            raise InvalidArgumentError(f"optimizer budget_decay must be in (0, 1], got {self.budget_decay!r}")
        if not 0.0 < self.miss_scale_prior <= 2.0:
            raise InvalidArgumentError(f"optimizer miss_scale_prior must be in (0, 2], got {self.miss_scale_prior!r}")
        if self.gp_alpha <= 0 or self.kappa < 0 or self.bayes_n_smart < 0 or self.gp_restarts < 0:
            raise InvalidArgumentError("optimizer gp_alpha must be > 0 and kappa, bayes_n_smart, gp_restarts >= 0")

    @classmethod
    def reference(cls, **changes: Any) -> "OptimizerConfig":
        """The paper's optimiser: fixed skip ratio, matchness objective, random + GP proposals only,
        no fallback, no drift detection (reference code, argparse defaults). The GP's inner
        acquisition search keeps our cheaper settings; the proposal rules are the paper's."""
        ref: dict[str, Any] = dict(objective="matchness", local_prob=0.0, rescore_best=False, fallback=False,
                                   drift=False, max_opt_share=1.0, give_up_after=0)
        ref.update(changes)
        return cls(**ref)


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
    # Beyond the paper: the draft scores only this many vocabulary entries (prompt tokens,
    # tokens generated earlier in the stream, then the lowest ids, i.e. the earliest BPE
    # merges). 0 = the whole vocabulary. Verification always uses the full LM head.
    draft_vocab: int = 8192
    # temperature > 0: "coupled" (seeded Gumbel-max, output depends only on the seed) or
    # "rejection" (the paper's multi-candidate speculative sampling). Both are exact.
    sampler: str = "coupled"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # -- where drafts come from and how a step is chosen (beyond the paper) --
    drafters: tuple[str, ...] = ("layerskip", "lookup", "suffix")
    tree: str = "dynamic"  # layer-skip tree: "dynamic" (EAGLE-2-style frontier) or "paper" (chain + siblings)
    frontier: int = 4  # dynamic tree: nodes expanded per draft depth (one forward over them)
    max_nodes: int = 64  # verification tree size at most (root included)
    planner: bool = True  # choose drafters and tree size per step by the measured cost model
    copy_probe: bool = True  # with the planner: retry long copy matches it stopped trusting (planner.CopyProbe)
    # with the planner: no optimiser search where the cost model says no skip set can pay even at a
    # best-case acceptance (planner.layerskip_ceiling); False searches anyway (`swiftsd tune` does)
    search_gate: bool = True
    tree_widths_greedy: tuple[int, ...] | None = None  # paper tree under greedy decoding (None: tree_widths)
    suffix_max_tokens: int = 262_144  # stream suffix index bound (oldest requests evicted first)
    cost_cache: bool = True  # keep the measured cost model on disk, per (model, device, dtype, threads)
    # prompt tokens per prefill forward (core/prefill.py): a stream can be stopped between chunks, and
    # attention memory is bounded by the chunk; 0 = the whole prompt in one forward. 256: on smollm2 bf16
    # (2-core CPU) no slower than one forward at 1000-2000 tokens, peak memory 139 -> 61 MiB at 2000
    # (docs/benchmarks/prefill-chunks.py)
    prefill_chunk: int = 256
    # -- the quantized self-draft (issue 33): the layer-skip draft over int8 / int4 copies of the model's own
    # weights. "auto" lets the cost model choose per step; "full" never quantizes; "int8" / "int4" always do.
    draft_precision: str = "auto"
    quant_group: int = 32  # int4: inputs per quantization group
    # a quantized draft drafts narrow (weight-only kernels pay at 1-2 rows): nodes expanded per depth, each
    # with siblings from its top-k by confidence (the paper's tree); 1 is the paper's chain
    quant_frontier: int = 1
    # a quantized draft stops below this top-1 probability (the paper's 0.8 suits a layer-skipped draft): a
    # copy of the whole model agrees with the model far beyond its own confidence (smollm2 bf16, 6 Spec-Bench
    # prompts: swiftsd 1.84 / 1.91x plain at 0.5, 1.64 / 1.80x at 0.8; docs/benchmarks/quant/README.md)
    quant_stop_threshold: float = 0.5
    # the vocabulary a quantized draft scores (``draft_vocab`` for it): 0 = the whole (int4) LM head. A subset
    # drops every token outside it, which a copy of the model would otherwise have drafted right (same sweep:
    # the int4 draft alone 1.76 / 1.73x plain with the whole head, 1.32 / 1.40x with 8192 entries)
    quant_draft_vocab: int = 0

    def __post_init__(self) -> None:
        for name in ("stop_threshold", "quant_stop_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise InvalidArgumentError(f"{name} must be a number in [0, 1], got {v!r}")
        if self.sampler not in ("coupled", "rejection"):
            raise InvalidArgumentError(f"sampler must be 'coupled' or 'rejection', got {self.sampler!r}")
        if isinstance(self.quant_draft_vocab, bool) or not isinstance(self.quant_draft_vocab, int) \
                or self.quant_draft_vocab < 0:
            raise InvalidArgumentError(f"quant_draft_vocab must be an int >= 0 (0 = full vocabulary), "
                                       f"got {self.quant_draft_vocab!r}")
        if self.draft_vocab < 0:
            raise InvalidArgumentError(f"draft_vocab must be >= 0 (0 = full vocabulary), got {self.draft_vocab}")
        if self.max_draft < 0:
            raise InvalidArgumentError(f"max_draft must be >= 0, got {self.max_draft}")
        if len(self.tree_widths) != len(self.tree_thresholds) + 1 or min(self.tree_widths) < 1:
            raise InvalidArgumentError(
                "tree_widths needs one more entry than tree_thresholds, all >= 1, "
                f"got widths={self.tree_widths} thresholds={self.tree_thresholds}"
            )

        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):  # "no" would read as True
                raise InvalidArgumentError(f"{f.name} must be True or False, got {getattr(self, f.name)!r}")
        unknown = [d for d in self.drafters if d not in DRAFTER_NAMES]
        if unknown or len(set(self.drafters)) != len(self.drafters):
            raise InvalidArgumentError(f"drafters must be distinct names among {list(DRAFTER_NAMES)}, "
                                       f"got {list(self.drafters)}")
        if isinstance(self.prefill_chunk, bool) or not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 0:
            raise InvalidArgumentError(f"prefill_chunk must be an integer >= 0 (0 = the whole prompt in one "
                                       f"forward), got {self.prefill_chunk!r}")
        if self.tree not in ("dynamic", "paper"):
            raise InvalidArgumentError(f"tree must be 'dynamic' or 'paper', got {self.tree!r}")
        for name in ("frontier", "max_nodes", "suffix_max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {v!r}")
        if self.draft_precision not in DRAFT_PRECISIONS:
            raise InvalidArgumentError(f"draft_precision must be one of {list(DRAFT_PRECISIONS)}, "
                                       f"got {self.draft_precision!r}")
        if isinstance(self.quant_group, bool) or self.quant_group not in QUANT_GROUPS:
            raise InvalidArgumentError(f"quant_group must be one of {list(QUANT_GROUPS)} (what PyTorch's int4 "
                                       f"kernels take), got {self.quant_group!r}")
        if isinstance(self.quant_frontier, bool) or self.quant_frontier not in (1, 2):
            raise InvalidArgumentError(f"quant_frontier must be 1 or 2 (weight-only kernels lose their edge on "
                                       f"wider frontiers), got {self.quant_frontier!r}")
        if self.tree_widths_greedy is not None and (len(self.tree_widths_greedy) != len(self.tree_widths)
                                                    or min(self.tree_widths_greedy) < 1):
            raise InvalidArgumentError(f"tree_widths_greedy needs {len(self.tree_widths)} entries >= 1, "
                                       f"got {self.tree_widths_greedy}")

    @property
    def precisions(self) -> tuple[str, ...]:
        """The draft precisions this decoder may draft with ("auto": all three; the planner chooses)."""
        return ("full", "int8", "int4") if self.draft_precision == "auto" else (self.draft_precision,)

    @property
    def max_width(self) -> int:
        widths = (*self.tree_widths, *(self.tree_widths_greedy or ()))
        return max(widths) if self.use_tree else 1

    def widths_for(self, greedy: bool) -> tuple[int, ...]:
        """The paper tree's widths per confidence band (the reference code's greedy table if set)."""
        w = self.tree_widths_greedy if greedy and self.tree_widths_greedy is not None else self.tree_widths
        return w if self.use_tree else (1,) * len(w)

    @classmethod
    def paper(cls, **changes: Any) -> "SwiftConfig":
        """SWIFT as published: the layer-skip chain plus siblings, the paper's thresholds, the
        reference optimiser, no planner, no draft vocabulary subset, multi-candidate speculative
        sampling. Where paper and reference code differ, the reference code is followed: greedy
        decoding uses its tree widths 3/5/8/10, sampling the paper's 1/3/5/10. The draft runs on the
        model's own weights: a quantized precision is refused (``auto`` means ``full`` here)."""
        if changes.get("draft_precision", "auto") not in ("auto", "full"):
            raise InvalidArgumentError(f"method 'swift-paper' drafts at full precision (the paper's draft); "
                                       f"draft_precision={changes['draft_precision']!r} needs method 'swiftsd'")
        changes = {**changes, "draft_precision": "full"}
        ref: dict[str, Any] = dict(drafters=("layerskip",), tree="paper", planner=False, draft_vocab=0,
                                   sampler="rejection", tree_widths=(1, 3, 5, 10), tree_widths_greedy=(3, 5, 8, 10),
                                   optimizer=OptimizerConfig.reference())
        ref.update(changes)
        return cls(**ref)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> "SwiftConfig":
        """Build from flat keyword arguments; ``optimizer`` may be a dict or an OptimizerConfig."""
        kw = dict(kwargs)
        method = kw.pop("method", "swiftsd")
        if method not in METHODS:
            raise InvalidArgumentError(f"method must be one of {list(METHODS)}, got {method!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise InvalidArgumentError(
                f"unknown SwiftDecoder option(s) {sorted(unknown)}; valid options: {sorted(names | {'method'})}"
            )
        opt = kw.get("optimizer")
        if isinstance(opt, Mapping):
            onames = {f.name for f in fields(OptimizerConfig)}
            bad = set(opt) - onames
            if bad:
                raise InvalidArgumentError(f"unknown optimizer option(s) {sorted(bad)}; valid: {sorted(onames)}")
            kw["optimizer"] = OptimizerConfig(**opt)
        elif opt is False:
            kw["optimizer"] = OptimizerConfig(enabled=False)
        elif opt is None or opt is True:  # the default (the method's: the paper's for swift-paper)
            kw.pop("optimizer", None)
        elif not isinstance(opt, OptimizerConfig):
            raise InvalidArgumentError(f"optimizer must be an OptimizerConfig, a dict of its options, True or "
                                       f"False, got {type(opt).__name__} {opt!r}")
        for key in ("tree_thresholds", "tree_widths", "tree_widths_greedy", "drafters"):
            if kw.get(key) is not None:
                if isinstance(kw[key], str):
                    kw[key] = tuple(x.strip() for x in kw[key].split(",") if x.strip())
                kw[key] = tuple(kw[key])
        if method == "swift-paper":
            if isinstance(opt, Mapping):
                kw["optimizer"] = OptimizerConfig.reference(**opt)
            return cls.paper(**kw)
        return cls(**kw)


# Temperatures below this decode greedily (argmax), exactly as temperature 0 does; vLLM's
# _SAMPLING_EPS is the same 1e-5. Why a threshold: as t -> 0 sampling tends to the argmax, but
# logits / t overflows float32 once t is subnormal (1e-40 turned every logit into +-inf, and
# softmax of those is NaN: garbage tokens), and 1e-300 is 0 in float32. At t = 1e-5 a runner-up
# 1e-3 below the top logit keeps exp(-100) < 4e-44 of its mass, so the switch to argmax is
# invisible unless two logits tie to within a few bf16/fp16 ulps (tests/test_sampling_threshold.py
# checks this against the float range of fp32, bf16 and fp16).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, validated once. temperature below GREEDY_BELOW (0 included) is greedy."""

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
        return self.temperature < GREEDY_BELOW
