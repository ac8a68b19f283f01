"""Measured draft cost c: one draft forward with a skip set over one full single-token forward.

With perfect acceptance a speculative step can save at most a factor of about
1/c, so c decides whether a skip set can pay on a given device and dtype. The
LM head is never skipped, so on small models with large vocabularies c stays
high even when many sublayers are skipped; measure it rather than assume it.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from ..errors import InvalidArgumentError
from .cache import SlotKVCache
from .skipset import SkipSet
from .timing import head_costs, long_context_times, measure_verify_costs, monotone_fit, sync_device

if TYPE_CHECKING:
    from .models import DecoderAdapter
    from .quant import QuantizedWeights


def measure_draft_cost(
    decoder_or_adapter: Any,
    skip_set: SkipSet | dict | str,
    n: int = 30,
    context: int = 128,
    warmup: int = 3,
    verify_sizes: Sequence[int] = (),
    seed: int = 0,
    weights: "QuantizedWeights | None" = None,
) -> dict[str, Any]:
    """Median times of single-token forwards at position ``context`` (full and draft), and c.

    Both forwards are decode steps exactly as the decode loop runs them: one token,
    attending ``context`` cached tokens, LM head included (:func:`_paired_step_times`).
    c is the median of the ratios of adjacent (draft, full) pairs: on a shared machine
    other jobs come and go, and an adjacent pair sees the same load where two separate
    medians need not. ``verify_sizes`` also times one full forward over a causal block of
    each size (a chain-shaped verification tree), every size in each round, interleaved
    (:func:`timing.measure_verify_costs`), relative to the one-token forward of the same
    rounds: timed one size after another, 8 nodes of qwen-1.5b once read 0.84 of a step.
    ``weights``: the draft runs on these quantized copies (the full forward on the model's own).
    """
    adapter: DecoderAdapter = getattr(decoder_or_adapter, "adapter", decoder_or_adapter)
    if isinstance(skip_set, str):
        skip_set = SkipSet.from_json(skip_set)
    skip = SkipSet.from_dict(skip_set).validate(adapter.num_layers)
    if n < 1 or context < 1 or warmup < 0:
        raise InvalidArgumentError(f"need n >= 1, context >= 1, warmup >= 0; got n={n} context={context} "
                                   f"warmup={warmup}")
    full, draft = _paired_step_times(adapter, skip, n, context, warmup, seed, weights)
    full_s, draft_s = statistics.median(full), statistics.median(draft)
    verify: dict[int, float] = {}
    if verify_sizes:
        blocks = measure_verify_costs(adapter, verify_sizes, context=context, rounds=max(3, n), seed=seed)
        verify = {int(size): blocks[int(size)] / blocks[1] for size in verify_sizes}
    return {
        "c": statistics.median(d / f for d, f in zip(draft, full)),  # median of paired draft/full ratios
        "c_of_medians": draft_s / full_s,
        "full_ms": 1e3 * full_s,
        "draft_ms": 1e3 * draft_s,
        "skip_set": skip.to_dict(),
        "skipped_sublayers": len(skip),
        "total_sublayers": 2 * adapter.num_layers,
        "verify_relative": verify,  # tree size -> full forward time / single-token full forward time
        "n": n,
        "context": context,
        "device": str(adapter.device),
        "dtype": str(adapter.dtype).replace("torch.", ""),
    }


def _paired_step_times(adapter: "DecoderAdapter", skip: SkipSet, n: int, context: int, warmup: int,
                       seed: int, weights: "QuantizedWeights | None" = None) -> tuple[list[float], list[float]]:
    """Seconds of ``n`` full and ``n`` draft decode steps after a ``context``-token prefill,
    alternating (full first on even pairs, draft first on odd ones)."""
    dev = adapter.device
    vocab = adapter.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (context + 1,), generator=torch.Generator().manual_seed(seed)).to(dev)
    cache = SlotKVCache(adapter.num_layers, context + 2)
    adapter.forward(ids[:context], torch.arange(context, device=dev), cache=cache,
                    logits_rows=slice(context - 1, context))
    cache.rollback(context)
    tok, pos = ids[context:], torch.tensor([context], device=dev)
    one = torch.ones(1, 1, dtype=torch.bool, device=dev)

    def timed(s: SkipSet | None) -> float:
        sync_device(dev)
        t0 = time.perf_counter()
        adapter.forward(tok, pos, cache=cache, slot_start=context, visible_prefix=context, block_mask=one, skip=s,
                        weights=None if s is None else weights)
        sync_device(dev)
        return time.perf_counter() - t0

    for _ in range(warmup):
        timed(None), timed(skip)
    full: list[float] = []
    draft: list[float] = []
    for i in range(n):
        if i % 2 == 0:
            full.append(timed(None))
            draft.append(timed(skip))
        else:
            draft.append(timed(skip))
            full.append(timed(None))
    return full, draft


# ----------------------------------------------------------------------------------
# The cost model the planner and the optimiser read
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """Predicted effect of drafting with one skip set; times are in plain decoding steps."""

    speedup: float  # E[tokens/round] / time per round
    draft_len: int  # k, the draft length that maximises the speed-up
    tokens_per_round: float  # E[tokens/round] = (1 − α^(k+1)) / (1 − α)
    time_per_round: float  # k·c + v(1 + w·k)
    draft_cost: float  # c: one draft step / one plain step
    acceptance: float  # α used (the set's matchness)


def expected_tokens(alpha: float, k: float) -> float:
    """Tokens one round commits when each of k drafted tokens is accepted with prob. α, i.i.d.

    (accepted prefix + the bonus token): sum_{i=0..k} α^i = (1 − α^(k+1)) / (1 − α).
    """
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def effective_acceptance(tokens_per_round: float, draft_len: float) -> float:
    """The α for which ``expected_tokens(α, draft_len)`` equals an observed mean (bisection)."""
    if tokens_per_round >= draft_len + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if expected_tokens(mid, draft_len) < tokens_per_round:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class PrecisionCost:
    """A quantized draft's step costs at one precision, in seconds (``cost_quant.measure_precision``).

    Measured like the full draft: a one-token forward on the packed copies with nothing, every
    inner attention and every inner MLP skipped, so a draft with skip set S costs
    ``step − |S.attn|·attn − |S.mlp|·mlp + extra``; ``head`` is the quantized LM head on one row
    (the floor of any draft), ``wide`` a forward over a frontier of two tokens over one of one.
    """

    precision: str
    step: float  # one-token forward, every projection and the LM head on the packed copies
    attn: float  # one attention sublayer on the packed copies, one token
    mlp: float
    head: float  # the quantized LM head on one row
    extra: float  # per drafted token: softmax + top-k, the quantized draft head minus the quantized full head
    wide: float = 1.0  # a frontier of two tokens / one token, same weights


@dataclass(frozen=True)
class CostModel:
    """Measured seconds on the running device; see :func:`measure_costs`.

    A draft step with skip set S costs ``full_step − |S.attn|·attn − |S.mlp|·mlp
    + draft_extra`` (``draft_extra`` < 0 when the draft's LM head scores fewer rows
    than the full one); verifying n tree nodes costs ``verify(n)`` (piecewise linear
    in the timed sizes); a plain decoding step costs ``verify(1) = full_step``.
    """

    full_step: float  # one-token full forward (a plain decoding step)
    attn: float  # one attention sublayer, one token
    mlp: float  # one MLP sublayer, one token
    lm_head: float  # the LM head on one row
    fixed: float  # the rest of a forward: embedding, masks, RoPE, final norm, Python
    draft_extra: float  # per drafted token: softmax + top-k, and the draft head's cost minus the full head's
    verify_sizes: tuple[int, ...]  # tree sizes timed (1 first)
    verify_times: tuple[float, ...]  # full forward over that many nodes, LM head on one row
    num_layers: int
    device: str = ""
    dtype: str = ""
    context: int = 0  # committed tokens the timed forwards attended to
    head_rows: tuple[int, ...] = (1,)  # LM-head row counts timed (1 first)
    head_times: tuple[float, ...] = ()  # the LM head over that many rows, with the product below
    head_transposed: bool = False  # models.head_product(transposed=True) was the faster product here
    long_context: int = 0  # a second context the verify sizes were timed at (0: none)
    long_times: tuple[float, ...] = ()  # verify_times' sizes at long_context, in verify_times' units
    precisions: tuple[PrecisionCost, ...] = ()  # the quantized drafts measured (none: full precision only)

    def at_context(self, context: int) -> "CostModel":
        """This model at ``context`` committed tokens: verify times (and the plain step, and the
        attention sublayer with it) linear in the context between the two timed ones.

        Why: a tree's attention grows with the context where a plain step's single query hardly
        does (transformers folds its GQA heads into rows), so n nodes cost relatively more on a long
        prompt (smollm2 bf16 here: 8 nodes 1.18 plain steps at 64 tokens, 1.37 at 1024).
        """
        if not self.long_times or context <= self.context or self.long_context <= self.context:
            return self
        return _at_context(self, context // 32 * 32)

    def draft_step(self, skip: SkipSet, precision: str = "full") -> float:
        """Seconds of one draft step with ``skip`` at ``precision`` (KeyError: that precision was not measured)."""
        if precision != "full":
            q = self.precision_cost(precision)
            t = q.step - len(skip.attn) * q.attn - len(skip.mlp) * q.mlp + q.extra
            return max(t, self.fixed + q.head + q.extra, 1e-3 * self.full_step)
        t = self.full_step - len(skip.attn) * self.attn - len(skip.mlp) * self.mlp + self.draft_extra
        return max(t, self.fixed + self.lm_head + self.draft_extra, 1e-3 * self.full_step)

    def draft_cost(self, skip: SkipSet, precision: str = "full") -> float:
        """c: one draft step relative to one plain step."""
        return self.draft_step(skip, precision) / self.full_step

    def precision_cost(self, precision: str) -> PrecisionCost:
        for q in self.precisions:
            if q.precision == precision:
                return q
        raise KeyError(f"no draft cost measured at precision {precision!r}")

    def measured_precisions(self) -> tuple[str, ...]:
        """The draft precisions this model can price: "full" and every quantized one measured."""
        return ("full", *(q.precision for q in self.precisions))

    def verify(self, n: float) -> float:
        """Seconds to verify ``n`` tree nodes in one full forward (linear between timed sizes)."""
        return _interpolate(self.verify_sizes, self.verify_times, n)

    def head(self, rows: float) -> float:
        """Seconds of the LM head over ``rows`` rows in one product (linear between timed counts)."""
        if not self.head_times:
            return self.lm_head * max(1.0, rows)
        return _interpolate(self.head_rows, self.head_times, rows)

    def predict(self, alpha: float, skip: SkipSet, max_draft: int, nodes_per_depth: float = 1.0,
                precision: str = "full") -> Prediction:
        """Best speed-up over draft lengths k = 1..max_draft (see docs/optimizer.md).

        speedup(k) = E[tokens/round](α, k) / (k·c + v(1 + w·k) / v(1)), with c the
        draft cost of ``skip`` at ``precision`` (its weights), v the verify cost, w the tree
        nodes per drafted depth.
        """
        a = min(max(float(alpha), 0.0), 1.0)
        c = self.draft_cost(skip, precision)
        best: Prediction | None = None
        for k in range(1, max(1, max_draft) + 1):
            e = expected_tokens(a, k)
            t = k * c + self.verify(1 + nodes_per_depth * k) / self.full_step
            p = Prediction(e / t, k, e, t, c, a)
            if best is None or p.speedup > best.speedup:
                best = p
        assert best is not None
        return best

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _SEQUENCES:
            d[k] = list(d[k])
        d["precisions"] = [dict(q) for q in d["precisions"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        d = dict(d)
        for k in _SEQUENCES:
            if k in d:
                d[k] = tuple(d[k])
        d["precisions"] = tuple(PrecisionCost(**q) for q in d.get("precisions", ()))
        return cls(**d)


_SEQUENCES = ("verify_sizes", "verify_times", "head_rows", "head_times", "long_times")


@functools.lru_cache(maxsize=512)
def _at_context(costs: CostModel, context: int) -> CostModel:
    f = (context - costs.context) / (costs.long_context - costs.context)
    vt = [a + f * (b - a) for a, b in zip(costs.verify_times, costs.long_times)]
    vt = monotone_fit([vt[0], *(max(t, vt[0]) for t in vt[1:])])
    full = max(vt[0], 1e-9)
    growth = max(0.0, full - costs.full_step)  # the growth is attention, whatever the weights' precision
    attn = costs.attn + growth / max(1, costs.num_layers)
    quant = tuple(replace(q, step=q.step + growth, attn=q.attn + growth / max(1, costs.num_layers))
                  for q in costs.precisions)
    return replace(costs, full_step=full, attn=attn, verify_times=tuple(vt), context=context,
                   long_context=0, long_times=(), precisions=quant)


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise linear through (xs, ys), xs ascending; the last slope beyond them (proportional if one point)."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (x - xs[-1])


def measure_costs(adapter: "DecoderAdapter", context: int = 64, n: int = 3,
                  verify_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 64), draft_vocab: int = 0) -> CostModel:
    """Time a few forwards on the running device (a few seconds for a 0.5B model on CPU).

    Forward timings come from :func:`measure_draft_cost` (alternating full / draft
    single-token steps, medians): with every inner attention sublayer skipped, then
    every inner MLP, then everything, so ``attn = (t_full − t_no_attn) / (L − 2)``.
    Verification sizes are timed interleaved in rounds (:func:`measure_verify_costs`).
    The LM head is timed alone, full and restricted to ``draft_vocab`` rows.
    """
    L = adapter.num_layers
    inner, everything = list(range(1, L - 1)), list(range(L))
    kw = dict(n=n, context=context, warmup=1)
    no_attn = measure_draft_cost(adapter, SkipSet(attn=inner), **kw)
    no_mlp = measure_draft_cost(adapter, SkipSet(mlp=inner), **kw)
    empty = measure_draft_cost(adapter, SkipSet(attn=everything, mlp=everything), **kw)
    full = statistics.median([no_attn["full_ms"], no_mlp["full_ms"], empty["full_ms"]]) / 1e3
    n_inner = max(1, L - 2)
    attn = max(0.0, full * (1.0 - no_attn["c"]) / n_inner)
    mlp = max(0.0, full * (1.0 - no_mlp["c"]) / n_inner)
    empty_s = full * empty["c"]

    head = adapter.model.get_output_embeddings()
    vocab, dev = head.weight.shape[0], adapter.device
    k = draft_vocab if 0 < draft_vocab < vocab else vocab
    h = torch.zeros(1, head.weight.shape[1], dtype=adapter.dtype, device=dev)
    rows = head.weight[torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:k].to(dev)]
    logits = torch.zeros(k, device=dev)

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.inference_mode():
        head_full = timed(lambda: head(h))
        head_draft = timed(lambda: torch.nn.functional.linear(h, rows))
        extra = timed(lambda: torch.topk(logits.softmax(-1), min(10, k)))
    head_full = min(head_full, empty_s)
    measured = measure_verify_costs(adapter, verify_sizes, context=context, rounds=max(3, n + 2))
    head_rows, head_times, transposed = head_costs(adapter, head_full)
    # Relative to the one-token forward timed in the same rounds, never below it, and
    # monotone in n (see monotone_fit).
    ns = sorted(x for x in measured if x > 1)
    vt = monotone_fit([max(measured[x] / measured[1], 1.0) * full for x in ns])
    long_context, long_times = long_context_times(adapter, verify_sizes, context, full / measured[1])
    return CostModel(
        full_step=full, attn=attn, mlp=mlp, lm_head=head_full, fixed=max(0.0, empty_s - head_full),
        draft_extra=extra + head_draft - head_full, verify_sizes=(1, *ns), verify_times=(full, *vt),
        num_layers=L, device=str(dev), dtype=str(adapter.dtype).replace("torch.", ""), context=context,
        head_rows=head_rows, head_times=head_times, head_transposed=transposed,
        long_context=long_context, long_times=long_times,
    )


COST_FORMAT = 7  # 5: single-token steps masked (pack_gqa), verify sizes timed at a long context too;
# 6: several masked tokens attend on packed query rows (engine/attention.py); 7: quantized draft costs per precision


def cost_key(adapter: "DecoderAdapter", draft_vocab: int, quant: str = "") -> str:
    """What the cost model depends on: the model (config and a weight fingerprint), device, dtype,
    threads, processor and torch version. A changed one measures afresh."""
    import hashlib
    import json
    import platform

    model = adapter.model
    w = model.get_output_embeddings().weight
    with torch.inference_mode():
        fingerprint = float(w[: min(8, w.shape[0]), : min(16, w.shape[1])].double().sum())
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    parts = {"format": COST_FORMAT, "config": model.config.to_json_string(use_diff=False),
             "weights": fingerprint, "device": str(adapter.device), "dtype": str(adapter.dtype),
             "packed_gqa": adapter.packed_gqa, "threads": torch.get_num_threads(), "cpu": cpu,
             "torch": torch.__version__, "draft_vocab": draft_vocab, "quant": quant,
             "gpu": torch.cuda.get_device_name(adapter.device) if adapter.device.type == "cuda" else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
