"""Measured draft cost c: one draft forward with a skip set over one full single-token forward.

With perfect acceptance a speculative step can save at most a factor of about
1/c, so c decides whether a skip set can pay on a given device and dtype. The
LM head is never skipped, so on small models with large vocabularies c stays
high even when many sublayers are skipped; measure it rather than assume it.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .cache import SlotKVCache
from .errors import InvalidArgumentError
from .skipset import SkipSet

if TYPE_CHECKING:
    from .decoder import SwiftDecoder
    from .models import DecoderAdapter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_draft_cost(
    decoder_or_adapter: "SwiftDecoder | DecoderAdapter",
    skip_set: SkipSet | dict | str,
    n: int = 30,
    context: int = 128,
    warmup: int = 3,
    verify_sizes: Sequence[int] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Median times of single-token forwards at position ``context`` (full and draft), and c.

    Both forwards are decode steps exactly as the decode loop runs them: one
    token, attending ``context`` cached tokens, LM head included. Full and
    draft runs alternate, and c is the median of the ratios of adjacent
    (draft, full) pairs: on a shared machine other jobs come and go, and an
    adjacent pair sees the same load where two separate medians need not. ``verify_sizes`` also times one full forward over a
    causal block of each size (a chain-shaped verification tree), reported
    relative to the single-token full forward.
    """
    adapter: DecoderAdapter = getattr(decoder_or_adapter, "adapter", decoder_or_adapter)
    if isinstance(skip_set, str):
        skip_set = SkipSet.from_json(skip_set)
    skip = SkipSet.from_dict(skip_set).validate(adapter.num_layers)
    if n < 1 or context < 1 or warmup < 0:
        raise InvalidArgumentError(f"need n >= 1, context >= 1, warmup >= 0; got n={n} context={context} "
                                   f"warmup={warmup}")
    dev = adapter.device
    vocab = adapter.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (context + 1,), generator=torch.Generator().manual_seed(seed)).to(dev)
    biggest = max([1, *verify_sizes])
    cache = SlotKVCache(adapter.num_layers, context + biggest + 1)
    causal = torch.ones(context, context, dtype=torch.bool, device=dev).tril()
    adapter.forward(ids[:context], torch.arange(context, device=dev), cache, 0, 0, causal, None,
                    logits_rows=slice(context - 1, context))
    cache.rollback(context)
    tok, pos = ids[context:], torch.tensor([context], device=dev)
    one = torch.ones(1, 1, dtype=torch.bool, device=dev)

    def step(s: SkipSet | None) -> Callable[[], None]:
        return lambda: adapter.forward(tok, pos, cache, context, context, one, s)

    def timed(fn: Callable[[], None]) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        return time.perf_counter() - t0

    full_step, draft_step = step(None), step(skip)
    for _ in range(warmup):
        full_step()
        draft_step()
    full: list[float] = []
    draft: list[float] = []
    for i in range(n):
        order = ((full, full_step), (draft, draft_step)) if i % 2 == 0 else ((draft, draft_step), (full, full_step))
        for times, fn in order:
            times.append(timed(fn))
    full_s, draft_s = statistics.median(full), statistics.median(draft)
    c = statistics.median(d / f for d, f in zip(draft, full))

    verify: dict[int, float] = {}
    for size in verify_sizes:
        block = ids[context - size + 1 : context + 1] if size <= context + 1 else ids[-1:].repeat(size)
        mask = torch.ones(size, size, dtype=torch.bool, device=dev).tril()
        positions = torch.arange(context, context + size, device=dev)
        fn = lambda: adapter.forward(block, positions, cache, context, context, mask, None)  # noqa: E731
        for _ in range(warmup):
            fn()
        verify[int(size)] = statistics.median(timed(fn) for _ in range(n)) / full_s

    return {
        "c": c,  # median of paired draft/full ratios
        "c_of_medians": draft_s / full_s,
        "full_ms": 1e3 * full_s,
        "draft_ms": 1e3 * draft_s,
        "skip_set": skip.to_dict(),
        "skipped_sublayers": len(skip),
        "total_sublayers": 2 * adapter.num_layers,
        "verify_relative": verify,  # tree size -> full forward time / single-token full forward time
        "n": n,
        "context": context,
        "device": str(dev),
        "dtype": str(adapter.dtype).replace("torch.", ""),
    }
