"""Time swiftsd's weight-only kernels (PyTorch built-ins) against torchao's on CPU, per linear.

    pip install torchao            # into a throwaway environment: swiftsd does not depend on it
    flock /tmp/swiftsd-bench.lock python docs/benchmarks/quant/torchao_compare.py

For the projection shapes of smollm2-135m and qwen2.5-coder-0.5b (random bf16 weights), at 1 and
2 rows of bf16 activations, one torch thread, it times:

* ``bf16``        ``F.linear(x, w)``, the baseline;
* ``sw int8``     ``PackedLinear.matmul`` int8 per channel: ``torch._weight_int8pack_mm``;
* ``sw int4 gG``  ``PackedLinear.matmul`` int4, group G: ``torch._weight_int4pack_mm_for_cpu``;
* ``ao int8``     torchao ``Int8WeightOnlyConfig()`` (an ``Int8Tensor`` weight; eager, it multiplies
  by ``qdata.t().to(bf16)``, a full bf16 copy of the weight made on every call);
* ``ao int4 gG``  torchao ``PrototypeInt4WeightOnlyConfig(group_size=G)`` (an ``Int4OpaqueTensor``
  weight, torchao's CPU int4 path; it calls ``_weight_int4pack_mm_for_cpu`` too).
  ``Int4WeightOnlyConfig`` itself has no CPU path (it needs mslk or CUDA) and is only probed.

torchao weights are made the way its users make them: ``quantize_`` on an ``nn.Linear`` copy
(the copy is mutated: its weight becomes a tensor subclass); the subclass is then called as
``F.linear(x, weight)``, the same functional form as the bf16 baseline, so no method pays
``nn.Module`` call overhead that the others do not.

Each call takes the next of enough copies of its matrix, per method, to fill ``--cold-mib``
(96 MiB, three times this machine's 32 MiB L3) so weights stream from memory as in a decoding
step; one matrix would sit in cache. After a warm-up pass over every copy, the methods run in
``--rounds`` rounds, in a fresh random order each round, ``--calls`` timed calls each; the table
shows the median per call (>= 30 calls by default) as a ratio to bf16 (lower is faster; 0.50 =
twice as fast). Interleaving keeps ratios fair on a busy machine; absolute times are not.
A second table gives each method's relative error against an fp32 product (2 rows).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import random
import statistics
import sys
import time
import warnings

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "src"))
from swiftsd.engine.quant_pack import PackedLinear, pack, refusal  # noqa: E402

# (N, K) = (out_features, in_features): gate/up, down and the LM head of each model
SHAPES = {
    "smollm2-135m": [(1536, 576), (576, 1536), (49152, 576)],
    "qwen2.5-coder-0.5b": [(4864, 896), (896, 4864), (151936, 896)],
}
ROWS = (1, 2)
GROUPS = (32, 128)
METHODS = ["bf16", "sw int8", "ao int8"] + [f"{lib} int4 g{g}" for g in GROUPS for lib in ("sw", "ao")]


def _import_torchao():
    """torchao's quantize_ and configs; its CUDA-only C++ extensions fail to load on a CPU build
    (logged as warnings, harmless for these paths) and are silenced here."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torchao
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    return torchao, quantize_, Int8WeightOnlyConfig, Int4WeightOnlyConfig, PrototypeInt4WeightOnlyConfig


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a weight reads: a plain tensor's, or the sum of a torchao subclass's inner tensors."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(getattr(t, n).nbytes for n in names if getattr(t, n) is not None)
    return t.nbytes


def _copies(nbytes: int, cold_mib: int) -> int:
    return max(2, -(-cold_mib * 2**20 // nbytes))


def _cycling(fn, items):
    """A call that runs ``fn(item)`` on the next of ``items`` each time (cold weights)."""
    state = {"i": -1}

    def call():
        state["i"] = (state["i"] + 1) % len(items)
        return fn(items[state["i"]])
    call.n_items = len(items)
    return call


def build(w: torch.Tensor, cold_mib: int, ao) -> dict[str, tuple[callable, list]]:
    """Per method: (a function of (x, weight-copy), the copies)."""
    _, quantize_, Int8Cfg, _, ProtoInt4Cfg = ao
    methods: dict[str, tuple[callable, list]] = {}
    methods["bf16"] = (lambda x, wc: F.linear(x, wc), [w.clone() for _ in range(_copies(w.nbytes, cold_mib))])

    def replicate(p: PackedLinear) -> list[PackedLinear]:
        n = _copies(p.nbytes, cold_mib)
        return [dataclasses.replace(p, weight=p.weight.clone(), scales=p.scales.clone()) for _ in range(n)]

    methods["sw int8"] = (lambda x, p: p.matmul(x), replicate(pack(w, None, "int8", 0, torch.bfloat16)))
    for g in GROUPS:
        if refusal("int4", w.shape[0], w.shape[1], g, w.device) is None:  # K % g, N % 16
            methods[f"sw int4 g{g}"] = (lambda x, p: p.matmul(x), replicate(pack(w, None, "int4", g, torch.bfloat16)))

    def ao_weights(cfg) -> list[torch.Tensor]:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        quantize_(lin, cfg)  # mutates lin: lin.weight is now a torchao tensor subclass
        n = _copies(_nbytes(lin.weight), cold_mib)
        return [lin.weight] + [copy.deepcopy(lin).weight for _ in range(n - 1)]

    methods["ao int8"] = (lambda x, wc: F.linear(x, wc), ao_weights(Int8Cfg()))
    for g in GROUPS:
        if w.shape[1] % g == 0:  # otherwise torchao leaves the weight in bf16 (it only logs)
            methods[f"ao int4 g{g}"] = (lambda x, wc: F.linear(x, wc), ao_weights(ProtoInt4Cfg(group_size=g)))
    return methods


def time_methods(fns: dict[str, callable], rounds: int, calls: int, seed: int) -> dict[str, float]:
    """Median seconds per call of each function: warm-up over every copy, then interleaved rounds."""
    for fn in fns.values():
        for _ in range(fn.n_items):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                fn()
                samples[name].append(time.perf_counter_ns() - t0)
    return {k: statistics.median(v) * 1e-9 for k, v in samples.items()}


def overhead_table(model: str, rounds: int, calls: int, seed: int, ao) -> list[str]:
    """Hot cache, 1 row, the model's first shape, group 32: each wrapper against the bare kernel it calls
    (the Python cost of PackedLinear.matmul and of torchao's tensor-subclass dispatch)."""
    n, k = SHAPES[model][0]
    w = (torch.randn(n, k) * 0.02).bfloat16()
    x = torch.randn(1, k).bfloat16()
    m = {name: ws[0] for name, (_, ws) in build(w, 0, ao).items()}
    p8, p4 = m["sw int8"], m["sw int4 g32"]
    fns = {
        "bf16 F.linear": lambda: F.linear(x, w),
        "int8 kernel": lambda: torch._weight_int8pack_mm(x, p8.weight, p8.scales),
        "sw int8": lambda: p8.matmul(x),
        "ao int8": lambda: F.linear(x, m["ao int8"]),
        "int4 kernel": lambda: torch._weight_int4pack_mm_for_cpu(x, p4.weight, 32, p4.scales),
        "sw int4 g32": lambda: p4.matmul(x),
        "ao int4 g32": lambda: F.linear(x, m["ao int4 g32"]),
    }
    for fn in fns.values():
        fn.n_items = 50  # warm-up calls
    t = time_methods(fns, rounds, 10 * calls, seed)
    return [f"| {model} | {n}x{k} | {name} | {1e6 * v:.1f} |" for name, v in t.items()]


def probe_int4_weight_only_config(ao) -> str:
    """What torchao's main Int4WeightOnlyConfig does with a CPU Linear."""
    _, quantize_, _, Int4Cfg, _ = ao
    lin = torch.nn.Linear(256, 256, bias=False, dtype=torch.bfloat16)
    try:
        quantize_(lin, Int4Cfg(group_size=32))
        lin(torch.randn(1, 256, dtype=torch.bfloat16))
        return f"works ({type(lin.weight).__name__})"
    except Exception as e:  # noqa: BLE001 - reported, not handled
        return f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=5, help="timed calls per method per round")
    ap.add_argument("--cold-mib", type=int, default=96, help="weight bytes cycled through, per method and shape")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = _import_torchao()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, torchao {ao[0].__version__}, {platform.machine()}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"torchao Int4WeightOnlyConfig on CPU: {probe_int4_weight_only_config(ao)}")
    print(f"{args.rounds} rounds x {args.calls} calls per method, >= {args.cold_mib} MiB of copies per method\n")

    speed, errors = [], []
    names = METHODS
    for model in args.models:
        for n, k in SHAPES[model]:
            w = (torch.randn(n, k) * 0.02).bfloat16()
            methods = build(w, args.cold_mib, ao)
            x2 = torch.randn(2, k).bfloat16()
            ref = x2.float() @ w.float().t()
            err = {m: float((fn(x2, ws[0]).float() - ref).norm() / ref.norm()) for m, (fn, ws) in methods.items()}
            errors.append(f"| {model} | {n}x{k} | " + " | ".join(f"{err[m]:.4f}" if m in err else "n/a" for m in names)
                          + " |")
            for rows in ROWS:
                x = torch.randn(rows, k).bfloat16()
                fns = {m: _cycling(lambda item, fn=fn: fn(x, item), ws) for m, (fn, ws) in methods.items()}
                t = time_methods(fns, args.rounds, args.calls, args.seed)
                line = (f"| {model} | {n}x{k} | {rows} | {1e6 * t['bf16']:.0f} | "
                        + " | ".join(f"{t[m] / t['bf16']:.2f}" if m in t else "n/a" for m in names[1:]) + " |")
                speed.append(line)
                print(line, file=sys.stderr, flush=True)  # progress
            del methods

    print("Median time per call as a ratio to bf16 F.linear (lower is faster); N x K = out x in.\n")
    print("| model | N x K | rows | bf16 (us) | " + " | ".join(names[1:]) + " |")
    print("|---|---|---|---:|" + "---:|" * (len(names) - 1))
    print("\n".join(speed))
    print("\nRelative error ||y - y_fp32|| / ||y_fp32||, 2 rows (bf16 includes bf16 rounding of the output).\n")
    print("| model | N x K | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    print("\n".join(errors))
    print("\nCall overhead, hot cache (one copy), 1 row: each wrapper against the kernel it calls (median us).\n")
    print("| model | N x K | call | us |")
    print("|---|---|---|---:|")
    for model in args.models:
        print("\n".join(overhead_table(model, args.rounds, args.calls, args.seed, ao)))
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
