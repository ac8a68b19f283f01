"""Choose ``quant_stop_threshold``: where a quantized draft stops by its own top-1 probability.

    flock /tmp/swiftsd-bench.lock python docs/benchmarks/quant/stop_threshold.py \
        --model smollm2-135m --dtype bf16 --thresholds 0.2 0.3 0.5 0.8 --vocab 8192 0 --repeats 2

The first turn of one Spec-Bench question per group (6 prompts), 128 new tokens, greedy, one
thread. For each threshold (and draft vocabulary size: ``draft_vocab`` and ``quant_draft_vocab``), two decoders read the prompts in order as a stream: ``quant-draft``
(the int4 self-draft alone) and ``swiftsd`` (the default, every drafter, ``auto`` precision). Plain
``model.generate`` runs the same prompts in the same round; every ratio is plain's time over the
method's, per round, on the same prompts. Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import torch

import swiftsd
from swiftsd import SwiftDecoder
from swiftsd.bench.data import build_input, group_of, load_prompts
from swiftsd.errors import QuantFallbackWarning

METHODS = {"quant-draft": {"drafters": ("layerskip",), "draft_precision": "int4"}, "swiftsd": {}}


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def one_per_group(tok) -> list[list[int]]:
    seen, out = set(), []
    for p in load_prompts("spec-bench"):
        if group_of(p.category) not in seen:
            seen.add(group_of(p.category))
            out.append(build_input(tok, p, 0, []))
    return out


def timed_plain(model, prompts, n) -> tuple[float, list[list[int]]]:
    t, outs = 0.0, []
    for ids in prompts:
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
        t += time.perf_counter() - t0
        outs.append(y[0, len(ids):].tolist())
    return t, outs


def timed_decoder(model, tok, prompts, n, options) -> tuple[float, list[list[int]], dict]:
    dec = SwiftDecoder(model, tok, **options)
    t, outs, steps, drafted, accepted = 0.0, [], 0, 0, 0
    for ids in prompts:
        t0 = time.perf_counter()
        res = dec.generate(torch.tensor([ids]), max_new_tokens=n)
        t += time.perf_counter() - t0
        outs.append(res.sequences[0, len(ids):].tolist())
        st = res.stats
        steps += st.steps
        ls = st.per_drafter.get("layerskip", {})
        drafted, accepted = drafted + ls.get("proposed", 0), accepted + ls.get("accepted", 0)
    return t, outs, {"steps": steps, "layerskip_proposed": drafted, "layerskip_accepted": accepted}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.3, 0.5, 0.8])
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192], help="draft_vocab values (0: the whole vocabulary)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default="docs/benchmarks/quant/stop-threshold.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", QuantFallbackWarning)
    model, tok = swiftsd.load(a.model, dtype=torch.bfloat16 if a.dtype == "bf16" else torch.float32)
    prompts = one_per_group(tok)
    n = a.max_new_tokens
    grid = [(th, v) for th in a.thresholds for v in a.vocab]
    for th, v in grid:  # warm-up: each setting's costs measured and packed weights built once, untimed
        for opts in METHODS.values():
            timed_decoder(model, tok, prompts[:1], 8, {**opts, "quant_stop_threshold": th, "draft_vocab": v, "quant_draft_vocab": v})
    rows = []
    for r in range(a.repeats):
        plain_t, plain_out = timed_plain(model, prompts, n)
        for th, v in (grid if r % 2 == 0 else grid[::-1]):
            for name, opts in METHODS.items():
                t, outs, info = timed_decoder(model, tok, prompts, n,
                                              {**opts, "quant_stop_threshold": th, "draft_vocab": v, "quant_draft_vocab": v})
                same = sum(o == p for o, p in zip(outs, plain_out))
                rows.append({"round": r, "threshold": th, "draft_vocab": v, "method": name, "seconds": t,
                             "plain_seconds": plain_t, "speedup": plain_t / t, "same_as_plain": same, **info})
                print(f"round {r} threshold {th} vocab {v} {name:12s} {plain_t / t:.2f}x plain  steps "
                      f"{info['steps']}  layerskip {info['layerskip_accepted']}/{info['layerskip_proposed']}  "
                      f"same {same}/{len(prompts)}", flush=True)
    print("\n| threshold | draft vocab | method | speed-up over plain, per round | steps | layer-skip accepted/proposed |")
    print("|---|---|---|---|---|---|")
    for th, v in grid:
        for name in METHODS:
            rs = [x for x in rows if x["threshold"] == th and x["draft_vocab"] == v and x["method"] == name]
            sp = " / ".join(f"{x['speedup']:.2f}" for x in rs)
            print(f"| {th} | {v} | {name} | {sp} | {rs[0]['steps']} | "
                  f"{rs[0]['layerskip_accepted']}/{rs[0]['layerskip_proposed']} |")
    meta = {"model": a.model, "dtype": a.dtype, "cpu": cpu_name(), "torch": torch.__version__, "threads": 1,
            "prompts": len(prompts), "max_new_tokens": n, "swiftsd_commit": _commit()}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
