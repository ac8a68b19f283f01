"""Time PyTorch's weight-only int8 / int4 kernels against bf16, and a quantized one-token draft step.

    flock /tmp/swiftsd-bench.lock python docs/benchmarks/quant/kernel_speed.py \
        --models smollm2-135m qwen2.5-coder-0.5b --group 32 --threads 1

Part 1 (GEMV/GEMM): for each packaged model's projection shapes (q, k/v, o, gate/up,
down, LM head; random bf16 weights of those shapes), the time of ``F.linear`` in bf16
and of ``PackedLinear.matmul`` in int8 and int4 at 1, 2 and 8 rows, as a ratio to
bf16 (the issue's "row counts": quantized kernels pay at one or two rows, not eight).
Each call takes the next of enough copies of the matrix to fill ``--cold-mib`` (96 MiB
by default, more than the last-level cache), so the weights come from memory, as they
do in a model's step; a single small matrix would sit in cache and flatter bf16.

Part 2 (adapter step): the packaged model loaded in bf16, a 200-token context in the
slot cache, and one-token ``DecoderAdapter.forward`` steps with ``weights=None``,
int8 and int4 (built or read from the disk cache), as a ratio to the bf16 step: the
cost c of a quantized draft step with no layer skipped.

Every measurement is interleaved in rounds after a warm-up, and the median is kept.
Numbers from a shared or busy machine are noise; run it on a quiet one. (Not named
``kernels.py``: run as a script, that name would shadow the ``kernels`` package
transformers imports.)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
from torch.nn import functional as F

from swiftsd.engine.quant_pack import pack, refusal

# (hidden, intermediate, query width, key/value width, vocabulary) of the packaged models
SHAPES = {
    "smollm2-135m": (576, 1536, 576, 192, 49152),
    "qwen2.5-coder-0.5b": (896, 4864, 896, 128, 151936),
    "qwen2.5-coder-1.5b": (1536, 8960, 1536, 256, 151936),
}
ROWS = (1, 2, 8)


def _median_times(fns: dict[str, callable], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds after a warm-up."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def _cycling(fn_of: callable, items: list) -> callable:
    """A call that runs ``fn_of(item)`` on the next item each time (cold weights)."""
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(items)
        return fn_of(items[state["i"]])
    return call


def kernel_table(model: str, group: int, rounds: int, cold_mib: int) -> list[str]:
    hidden, inter, qw, kvw, vocab = SHAPES[model]
    mats = {"q/o": (qw, hidden), "k/v": (kvw, hidden), "gate/up": (inter, hidden), "down": (hidden, inter),
            "lm_head": (vocab, hidden)}
    lines = []
    cpu = torch.device("cpu")
    for name, (n, k) in mats.items():
        copies = max(1, -(-cold_mib * 2**20 // (2 * n * k)))
        ws = [(torch.randn(n, k) * 0.02).bfloat16() for _ in range(copies)]
        packed = {p: [pack(w, None, p, group, torch.bfloat16) for w in ws] for p in ("int8", "int4")
                  if refusal(p, n, k, group, cpu) is None}
        reps = max(copies, int(2e7 // (n * k)))
        for rows in ROWS:
            x = torch.randn(rows, k).bfloat16()
            fns = {"bf16": _cycling(lambda w: F.linear(x, w), ws)}
            fns.update({p: _cycling(lambda pl: pl.matmul(x), pls) for p, pls in packed.items()})
            t = _median_times(fns, rounds, reps)
            ratios = " | ".join(f"{t[p] / t['bf16']:.2f}" if p in t else "refused" for p in ("int8", "int4"))
            lines.append(f"| {model} | {name} [{n}x{k}] | {rows} | {1e6 * t['bf16']:.0f} | {ratios} |")
        del ws, packed
    return lines


def adapter_table(model_name: str, group: int, rounds: int) -> list[str]:
    from swiftsd import load
    from swiftsd.engine.cache import SlotKVCache
    from swiftsd.engine.models import get_adapter
    from swiftsd.loading.quant_cache import load_or_build

    model, _ = load(model_name, dtype="bfloat16", device="cpu")
    ad = get_adapter(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = {"int8": load_or_build(model, "int8"), "int4": load_or_build(model, "int4", group)}
    ctx = 200
    cache = SlotKVCache(ad.num_layers, ctx + 4)
    ids = torch.randint(0, ad.vocab_size, (ctx + 1,), generator=torch.Generator().manual_seed(0))
    ad.forward(ids[:ctx], torch.arange(ctx), cache=cache)
    cache.rollback(ctx)
    tok, pos = ids[ctx:], torch.tensor([ctx])

    def step(w):
        return lambda: ad.forward(tok, pos, cache=cache, slot_start=ctx, visible_prefix=ctx, weights=w)

    t = _median_times({"bf16": step(None), **{p: step(w) for p, w in weights.items()}}, rounds, 3)
    extra = " | ".join(f"{100 * w.extra_share:.0f} %" for w in weights.values())
    return [f"| {model_name} | {1e3 * t['bf16']:.1f} | {t['int8'] / t['bf16']:.2f} | {t['int4'] / t['bf16']:.2f} "
            f"| {extra} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"], choices=sorted(SHAPES))
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold-mib", type=int, default=96, help="weights cycled through per matrix shape")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--skip-adapter", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s), "
          f"int4 group {args.group}\n")
    if not args.skip_kernels:
        print("| model | matrix [N x K] | rows | bf16 F.linear (us) | int8 / bf16 | int4 / bf16 |")
        print("|---|---|---|---|---|---|")
        for m in args.models:
            print("\n".join(kernel_table(m, args.group, args.rounds, args.cold_mib)), flush=True)
    if not args.skip_adapter:
        print("\n| model | bf16 one-token step (ms), 200-token context | int8 / bf16 | int4 / bf16 "
              "| int8 extra memory | int4 extra memory |")
        print("|---|---|---|---|---|---|")
        for m in args.models:
            print("\n".join(adapter_table(m, args.group, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
