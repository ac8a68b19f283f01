"""Timing helpers of the cost model: forwards over token blocks and LM-head products, interleaved.

Every measurement here times all its variants in shuffled rounds after a warm-up
round and keeps medians, so a warm-up or a burst of load lands on no one size.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Sequence

import torch

from .cache import SlotKVCache

if TYPE_CHECKING:
    from .models import DecoderAdapter

__all__ = ["faster_head", "head_costs", "long_context_times", "measure_head", "measure_verify_costs", "monotone_fit",
           "sync_device"]


def sync_device(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_verify_costs(adapter: "DecoderAdapter", sizes: Sequence[int], context: int = 64, rounds: int = 5,
                         seed: int = 0) -> dict[int, float]:
    """Median seconds of one full forward over a causal block of each size, sizes interleaved in rounds.

    The LM head runs on one row, as in verification, which scores only the nodes on the
    accepted path (see ``CostModel.lm_head`` for each further row).

    Every round times every size once, in a shuffled order, after one warm-up round:
    timing each size in its own run lets a warm-up or a burst of load land on one size
    (on qwen-1.5b, 8 nodes once timed at 0.84 of a one-token step).
    """
    import random as _random

    dev = adapter.device
    sizes = sorted({1, *(int(x) for x in sizes)})
    vocab = adapter.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (context + max(sizes),), generator=torch.Generator().manual_seed(seed)).to(dev)
    cache = SlotKVCache(adapter.num_layers, context + max(sizes) + 1)
    adapter.forward(ids[:context], torch.arange(context, device=dev), cache=cache,
                    logits_rows=slice(context - 1, context))
    cache.rollback(context)
    blocks = {n: (ids[context : context + n], torch.arange(context, context + n, device=dev),
                  torch.ones(n, n, dtype=torch.bool, device=dev).tril()) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    order = list(sizes)
    rng = _random.Random(seed)
    for r in range(rounds + 1):
        rng.shuffle(order)
        for n in order:
            tok, pos, mask = blocks[n]
            sync_device(dev)
            t0 = time.perf_counter()
            adapter.forward(tok, pos, cache=cache, slot_start=context, visible_prefix=context, block_mask=mask,
                            logits_rows=slice(n - 1, n))
            sync_device(dev)
            if r > 0:  # round 0 warms up
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


LONG_CONTEXT = 1024


def long_context_times(adapter: "DecoderAdapter", sizes: Sequence[int], context: int, scale: float
                       ) -> tuple[int, tuple[float, ...]]:
    """Verify times (1 and ``sizes``) at a long context, times ``scale`` (the short timings' units);
    none where the model's positions do not reach well past ``context`` (see ``CostModel.at_context``)."""
    limit = (adapter.max_positions or 2 * LONG_CONTEXT) - max(sizes, default=1) - 2
    long = min(LONG_CONTEXT, limit)
    if long < 4 * context:
        return 0, ()
    m = measure_verify_costs(adapter, sizes, context=long, rounds=3)
    return long, tuple(monotone_fit([m[x] * scale for x in sorted(m)]))


def measure_head(adapter: "DecoderAdapter", rows: Sequence[int] = (1, 2, 4, 8, 16), rounds: int = 3,
                 seed: int = 0) -> dict[bool, dict[int, float]]:
    """Median seconds of the LM head over each row count, per product (``transposed`` False / True,
    see ``models.head_product``), all interleaved in shuffled rounds after a warm-up round."""
    import random as _random

    from .models import head_product

    lm = adapter.model.get_output_embeddings()
    dev, w, b = adapter.device, lm.weight, getattr(lm, "bias", None)
    gen = torch.Generator().manual_seed(seed)
    hs = {r: torch.randn(r, w.shape[1], generator=gen).to(device=dev, dtype=w.dtype) for r in rows}
    cells = [(t, r) for t in (False, True) for r in rows]
    times: dict[tuple[bool, int], list[float]] = {c: [] for c in cells}
    rng = _random.Random(seed)
    with torch.inference_mode():
        for k in range(rounds + 1):
            rng.shuffle(cells)
            for t, r in cells:
                sync_device(dev)
                t0 = time.perf_counter()
                head_product(hs[r], w, b, t)
                sync_device(dev)
                if k > 0:
                    times[(t, r)].append(time.perf_counter() - t0)
    return {t: {r: statistics.median(times[(t, r)]) for r in rows} for t in (False, True)}


def monotone_fit(times: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``times`` (least squares: pool adjacent violators).

    Timings of growing sizes should not fall, and where one does, neither neighbour is to be
    trusted over the other: a running minimum from above once priced 2-16 verify nodes at
    16's lucky 1.22 steps (2 took 1.45), so a fresh decoder verified ~300 copy nodes for 5
    accepted; a running maximum would let one slow outlier price every larger size. Pooling
    gives each violating run its mean.
    """
    blocks: list[list[float]] = []  # [sum, count]
    for t in times:
        blocks.append([float(t), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out.extend([s / c] * int(c))
    return out


def faster_head(timed: dict[bool, dict[int, float]], margin: float = 0.9) -> bool:
    """Use the transposed product where it took under ``margin`` x F.linear's time over the multi-row counts."""
    multi = [r for r in timed[False] if r > 1]
    return bool(multi) and sum(timed[True][r] for r in multi) < margin * sum(timed[False][r] for r in multi)


def head_costs(adapter: "DecoderAdapter", one_row: float) -> tuple[tuple[int, ...], tuple[float, ...], bool]:
    """(row counts, seconds of the faster product over each, whether that is the transposed one).

    Scaled to ``one_row``, the one-row head timed beside the other forwards (one row is
    ``F.linear`` either way), made non-decreasing by :func:`monotone_fit`.
    """

    heads = measure_head(adapter)
    transposed = faster_head(heads)
    rows = tuple(sorted(heads[transposed]))
    scale = one_row / heads[transposed][1] if heads[transposed][1] > 0 else 1.0
    times = monotone_fit([heads[transposed][r] * scale for r in rows])
    return rows, tuple(times), transposed
