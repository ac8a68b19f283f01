"""A/B of decoder variants on the bench's stream, beside plain decoding, for one change at a time.

Variants: ``swiftsd`` (the default decoder), ``no-probe`` (``copy_probe=False``) and
``row-by-row-head`` (the cost model without LM-head timings: verification scores one node per
LM-head product with F.linear, as before chains were scored together). The bench's order
(round-robin over Spec-Bench groups), first turns, 128 new tokens, greedy, one thread; two
independent passes (fresh decoders each pass, methods in rotated order per prompt), so the
spread between passes shows. Step counts are exact; wall times carry the machine's load. Usage:

    python docs/benchmarks/token-trees/step-ab.py MODEL DTYPE N_PROMPTS OUT_STEM [CATEGORIES [VARIANTS [PASSES]]]

VARIANTS (comma-separated) may also name ``no-search-gate`` (the optimiser searches even where
``planner.layerskip_ceiling`` says no skip set can pay) and ``stream-calibration`` (copy
acceptance from the stream's counts alone, without the per-request weighting) and ``lookup-only``
(the copy drafters without layer-skip).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import replace

import torch

from swiftsd import SwiftDecoder
from swiftsd.bench.data import build_input, load_prompts
from swiftsd.bench.runner import interleave_categories, load_average
from swiftsd.loading import load

DATA = "/work/shared/data/spec_bench/question.jsonl"
VARIANTS = ("swiftsd", "no-probe", "row-by-row-head")


def _row_by_row(model, tok) -> SwiftDecoder:
    dec = SwiftDecoder(model, tok)
    dec.costs = replace(dec.costs, head_rows=(1,), head_times=(), head_transposed=False)
    return dec


def _no_search_gate(model, tok) -> SwiftDecoder:
    """The optimiser searches even where planner.layerskip_ceiling says no skip set can pay."""
    return SwiftDecoder(model, tok, search_gate=False)


def _stream_calibration(model, tok) -> SwiftDecoder:
    """The copy drafters' acceptance from the stream's counts alone (no per-request weighting)."""
    dec = SwiftDecoder(model, tok)
    for name in ("lookup", "suffix"):
        d = dec.drafters.get(name)
        if d is not None:
            d._calibration = lambda req, d=d: d.calib
    return dec


BUILDERS = {
    "swiftsd": lambda m, t: SwiftDecoder(m, t),
    "no-probe": lambda m, t: SwiftDecoder(m, t, copy_probe=False),
    "row-by-row-head": _row_by_row,
    "no-search-gate": _no_search_gate,
    "stream-calibration": _stream_calibration,
    "lookup-only": lambda m, t: SwiftDecoder(m, t, drafters=("lookup", "suffix")),
}


def _decoders(model, tok) -> dict[str, SwiftDecoder]:
    return {name: BUILDERS[name](model, tok) for name in VARIANTS}


def main(model_name: str, dtype: str, n: int, stem: str, categories: str | None = None) -> None:
    torch.set_num_threads(1)
    model, tok = load(model_name, dtype=dtype, device="cpu")
    prompts = interleave_categories(load_prompts(DATA, None, 3))[:n]
    if categories:
        prompts = [p for p in prompts if p.category in categories.split(",")]
    rows = []
    names = ["plain", *VARIANTS]
    with torch.inference_mode():
        for rep in range(PASSES):
            decs = _decoders(model, tok)
            for i, p in enumerate(prompts):
                ids = torch.tensor([build_input(tok, p, 0, [])])
                for name in names[i % len(names):] + names[: i % len(names)]:
                    t = time.perf_counter()
                    if name == "plain":
                        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                             max_new_tokens=128, pad_token_id=tok.eos_token_id)
                        new, steps, per, tv = out.shape[1] - ids.shape[1], out.shape[1] - ids.shape[1] - 1, {}, None
                        td = None
                    else:
                        s = decs[name].generate(ids, max_new_tokens=128).stats
                        new, steps, per, tv = s.new_tokens, s.steps, s.per_drafter, s.time_verify
                        td = s.time_draft
                    rows.append(dict(pass_=rep, prompt=p.id, category=p.category, method=name, new=new, steps=steps,
                                     wall=time.perf_counter() - t, time_verify=tv, time_draft=td, per_drafter=per,
                                     load=load_average()))
                    print(json.dumps(rows[-1]), flush=True)
    with open(f"{stem}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(f"{stem}.md", "w") as f:
        f.write(report(rows, model_name, dtype))


def report(rows: list[dict], model_name: str, dtype: str) -> str:
    cats = list(dict.fromkeys(r["category"] for r in rows))
    out = [f"# Decoder A/B: {model_name} {dtype}, {platform.processor() or platform.machine()}, 1 thread\n",
           f"{PASSES} pass(es); speed-up = plain wall / method wall per pass, then the range over passes.\n",
           "| category | method | steps (per pass) | lookup accepted / proposed | layer-skip accepted / proposed | "
           "draft s / verify s (pass 1) | "
           "speed-up vs plain (passes) |",
           "|---|---|---|---|---|---|---|"]
    for c in cats + ["overall"]:
        ref = [r for r in rows if r["method"] == "plain" and (c == "overall" or r["category"] == c)]
        for m in VARIANTS:
            sel = [r for r in rows if r["method"] == m and (c == "overall" or r["category"] == c)]
            sp = []
            for rep in range(PASSES):
                a = sum(r["wall"] for r in ref if r["pass_"] == rep)
                b = sum(r["wall"] for r in sel if r["pass_"] == rep)
                sp.append(a / b if b else float("nan"))
            steps = [sum(r["steps"] for r in sel if r["pass_"] == rep) for rep in range(PASSES)]
            first = [r for r in sel if r["pass_"] == 0]
            acc = sum(r["per_drafter"].get("lookup", {}).get("accepted", 0) for r in first)
            prop = sum(r["per_drafter"].get("lookup", {}).get("proposed", 0) for r in first)
            tv = sum(r["time_verify"] or 0.0 for r in first)
            td = sum(r.get("time_draft") or 0.0 for r in first)
            ls = [sum(r["per_drafter"].get("layerskip", {}).get(k, 0) for r in first) for k in ("accepted", "proposed")]
            out.append(f"| {c} | {m} | {' / '.join(map(str, steps))} | {acc} / {prop} | {ls[0]} / {ls[1]} | "
                       f"{td:.1f} / {tv:.1f} | "
                       f"{min(sp):.2f}×–{max(sp):.2f}× |")
    return "\n".join(out) + "\n"


PASSES = 2

if __name__ == "__main__":
    if len(sys.argv) > 6:
        VARIANTS = tuple(sys.argv[6].split(","))
    if len(sys.argv) > 7:
        PASSES = int(sys.argv[7])
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None)
