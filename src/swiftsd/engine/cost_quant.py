"""The quantized draft's step costs, per precision: measured like the full draft, in a second or two.

Decoding a token is memory-bound, so an int8 / int4 draft step costs what it reads, and the
head matters as much as the layers (the 152k-token Qwen head). Each precision is timed as the
full draft is (``cost.measure_costs``): one-token forwards on the packed copies, paired with
full forwards, with nothing, every inner attention and every inner MLP skipped; the quantized
LM head alone on one row and on the draft vocabulary's rows; and a frontier of two tokens
against one (weight-only kernels lose their edge with rows, MODELS.md).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .cache import SlotKVCache
from .cost import CostModel, PrecisionCost, measure_draft_cost
from .skipset import SkipSet
from .timing import sync_device

if TYPE_CHECKING:
    from .models import DecoderAdapter
    from .quant import QuantizedWeights


def with_precisions(costs: CostModel, adapter: "DecoderAdapter", precisions: Sequence[str],
                    weights: Callable[[str], "QuantizedWeights | None"], draft_vocab: int = 0,
                    context: int = 64, n: int = 3) -> CostModel:
    """``costs`` plus a :class:`PrecisionCost` for each of ``precisions`` ("full" needs none)."""
    measured = []
    for p in precisions:
        qw = weights(p) if p != "full" else None
        if qw is not None:
            measured.append(measure_precision(adapter, qw, costs.full_step, draft_vocab, context, n))
    return replace(costs, precisions=tuple(measured))


def measure_precision(adapter: "DecoderAdapter", qw: "QuantizedWeights", full_step: float, draft_vocab: int = 0,
                      context: int = 64, n: int = 3) -> PrecisionCost:
    """One precision's :class:`PrecisionCost`; every time relative to the full step timed beside it,
    then scaled to ``full_step`` (the cost model's own plain step), so load shared by the pair cancels."""
    L = adapter.num_layers
    inner = list(range(1, L - 1))
    kw: dict[str, Any] = dict(n=n, context=context, warmup=1, weights=qw)
    whole = measure_draft_cost(adapter, SkipSet(), **kw)["c"] * full_step
    no_attn = measure_draft_cost(adapter, SkipSet(attn=inner), **kw)["c"] * full_step
    no_mlp = measure_draft_cost(adapter, SkipSet(mlp=inner), **kw)["c"] * full_step
    n_inner = max(1, L - 2)
    head, extra = _head_times(adapter, qw, draft_vocab, n)
    return PrecisionCost(precision=qw.precision, step=whole, attn=max(0.0, (whole - no_attn) / n_inner),
                         mlp=max(0.0, (whole - no_mlp) / n_inner), head=head, extra=extra,
                         wide=_frontier_ratio(adapter, qw, context, n))


def _timed(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(max(3, n)):
        sync_device(device)
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def _head_times(adapter: "DecoderAdapter", qw: "QuantizedWeights", draft_vocab: int, n: int) -> tuple[float, float]:
    """(the quantized LM head on one row, the per-token extra of a draft: softmax + top-k, and the
    quantized draft head's rows minus the quantized full head's)."""
    dev, lm = adapter.device, adapter.model.lm_head
    vocab, hidden = lm.weight.shape
    h = torch.zeros(1, hidden, dtype=adapter.dtype, device=dev)
    head_full = _timed(lambda: qw.linear(lm, h), n, dev)
    k = draft_vocab if 0 < draft_vocab < vocab else vocab
    head_draft = head_full
    if k < vocab:
        ids = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:k].sort().values.to(dev)
        dh = adapter.draft_head(ids)
        with_head = qw.with_head(dh)
        packed = with_head.head_linear(dh)
        head_draft = _timed(lambda: packed.matmul(h) if packed is not None else torch.nn.functional.linear(
            h, dh.weight), n, dev)
    logits = torch.zeros(k, device=dev)
    topk = _timed(lambda: torch.topk(logits.softmax(-1), min(10, k)), n, dev)
    return head_full, topk + head_draft - head_full


@torch.inference_mode()
def _frontier_ratio(adapter: "DecoderAdapter", qw: "QuantizedWeights", context: int, n: int) -> float:
    """A quantized forward over two frontier tokens (each attending the context and itself) / over one."""
    dev = adapter.device
    vocab = adapter.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (context + 2,), generator=torch.Generator().manual_seed(1)).to(dev)
    cache = SlotKVCache(adapter.num_layers, context + 3)
    adapter.forward(ids[:context], torch.arange(context, device=dev), cache=cache,
                    logits_rows=slice(context - 1, context))
    cache.rollback(context)

    def step(k: int) -> None:
        adapter.forward(ids[context:context + k], torch.full((k,), context, device=dev), cache=cache,
                        slot_start=context, visible_prefix=context, block_mask=torch.eye(k, dtype=torch.bool, device=dev),
                        weights=qw)

    ones, twos = [], []
    for _ in range(max(3, n)):  # paired, alternating, as the full draft's steps are
        ones.append(_timed(lambda: step(1), 1, dev))
        twos.append(_timed(lambda: step(2), 1, dev))
    return max(1.0, statistics.median(t / o for t, o in zip(twos, ones)))
