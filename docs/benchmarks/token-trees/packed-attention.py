"""Time a verification forward with packed grouped-query attention on and off (engine/attention.py).

    python docs/benchmarks/token-trees/packed-attention.py MODEL [DTYPE] [OUT_STEM]

For each context (100 and 1000 tokens) and chain of n nodes, the body forward (no LM head) is
timed with the adapter's ``packed_gqa`` switch on and off, in rounds that alternate the two, each
cell the median of 7 forwards, the best round kept. Prints a markdown table; with OUT_STEM also
writes OUT_STEM.md and OUT_STEM.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import torch

import swiftsd
from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.models import get_adapter

CONTEXTS, SIZES, ROUNDS, REPS = (100, 1000), (1, 4, 8, 16, 32), 3, 7


def forward_ms(ad, ctx: int, n: int) -> float:
    """Median time of ``REPS`` body forwards of an n-node chain after a ctx-token prefill."""
    cache = SlotKVCache(ad.num_layers, ctx + max(SIZES) + 8)
    ids = torch.randint(0, 1000, (ctx,), generator=torch.Generator().manual_seed(ctx))
    ad.forward(ids, torch.arange(ctx), cache=cache, logits_rows=slice(ctx - 1, ctx))
    cache.rollback(ctx)
    chain = torch.ones(n, n, dtype=torch.bool).tril_() if n > 1 else None
    tokens = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(n))
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        ad.forward(tokens, ctx + torch.arange(n), cache=cache, slot_start=ctx, visible_prefix=ctx, block_mask=chain, logits_rows="hidden")
        times.append(time.perf_counter() - t)
    return sorted(times)[REPS // 2] * 1e3


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(name: str, dtype: str = "bf16", stem: str | None = None) -> None:
    torch.set_num_threads(1)
    model, _ = swiftsd.load(name, dtype=dtype)
    ad = get_adapter(model)
    if not ad.packed_gqa:
        sys.exit(f"{name}: the adapter does not take the packed path (no grouped-query SDPA)")
    best: dict[tuple[bool, int, int], float] = {}
    for _ in range(ROUNDS):
        for packed in (False, True):
            ad.packed_gqa = packed
            for ctx in CONTEXTS:
                for n in SIZES:
                    key = (packed, ctx, n)
                    best[key] = min(best.get(key, float("inf")), forward_ms(ad, ctx, n))
    rows = []
    for ctx in CONTEXTS:
        one = best[(False, ctx, 1)]
        for n in SIZES:
            s, p = best[(False, ctx, n)], best[(True, ctx, n)]
            rows.append(dict(context=ctx, nodes=n, repeat_kv_ms=round(s, 2), packed_ms=round(p, 2),
                             repeat_kv_steps=round(s / one, 3), packed_steps=round(p / one, 3),
                             packed_over_repeat_kv=round(p / s, 3)))
    head = (f"{name} {dtype}, {cpu_name()}, 1 torch thread, torch {torch.__version__}; "
            f"body forward of an n-node chain, median of {REPS}, best of {ROUNDS} alternating rounds; "
            "'steps' = over the one-token forward at the same context on the repeat_kv path\n")
    table = ["| context | nodes | repeat_kv ms (steps) | packed ms (steps) | packed ÷ repeat_kv |", "|---|---|---|---|---|"]
    table += [f"| {r['context']} | {r['nodes']} | {r['repeat_kv_ms']:.1f} ({r['repeat_kv_steps']:.2f}) | "
              f"{r['packed_ms']:.1f} ({r['packed_steps']:.2f}) | {r['packed_over_repeat_kv']:.2f} |" for r in rows]
    text = head + "\n" + "\n".join(table) + "\n"
    print(text)
    if stem:
        with open(f"{stem}.md", "w", encoding="utf-8") as f:
            f.write(text)
        with open(f"{stem}.json", "w", encoding="utf-8") as f:
            json.dump(dict(model=name, dtype=dtype, torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:4])
