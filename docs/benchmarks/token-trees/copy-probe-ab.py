"""A/B of the copy probe (planner.CopyProbe): swiftsd with and without it, beside plain decoding.

The bench's stream order (round-robin over Spec-Bench groups, first turns, 128 new tokens,
greedy, one thread), run as two independent passes (fresh decoders each pass, methods in
rotated order per prompt), so the spread between passes shows. Step counts are exact;
wall times carry the machine's load. Usage:

    python docs/benchmarks/token-trees/copy-probe-ab.py MODEL DTYPE N_PROMPTS OUT_STEM [CATEGORIES]

CATEGORIES (comma-separated) keeps only those groups' prompts among the first N_PROMPTS.
"modelled" is each run's verification time from the decoder's cached cost model, in plain
steps (sum of V(tree size) over its steps; plain decoding: one per step): unlike the wall
time it carries no load, so it shows what probing costs on a shared machine.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import torch

from swiftsd import SwiftDecoder
from swiftsd.bench.data import build_input, load_prompts
from swiftsd.bench.runner import interleave_categories, load_average
from swiftsd.loading import load
from swiftsd.planner import relative_verify

DATA = "/work/shared/data/spec_bench/question.jsonl"


def main(model_name: str, dtype: str, n: int, stem: str, categories: str | None = None) -> None:
    torch.set_num_threads(1)
    model, tok = load(model_name, dtype=dtype, device="cpu")
    prompts = interleave_categories(load_prompts(DATA, None, 3))[:n]
    if categories:
        prompts = [p for p in prompts if p.category in categories.split(",")]
    rows = []
    with torch.inference_mode():
        for rep in range(2):
            decs = {"probe": SwiftDecoder(model, tok, copy_probe=True),
                    "no-probe": SwiftDecoder(model, tok, copy_probe=False)}
            for i, p in enumerate(prompts):
                ids = torch.tensor([build_input(tok, p, 0, [])])
                names = ["plain", "probe", "no-probe"]
                for name in names[i % 3:] + names[: i % 3]:
                    t = time.perf_counter()
                    if name == "plain":
                        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                             max_new_tokens=128, pad_token_id=tok.eos_token_id)
                        new, steps, per = out.shape[1] - ids.shape[1], out.shape[1] - ids.shape[1] - 1, {}
                        modelled = float(steps)
                    else:
                        s = decs[name].generate(ids, max_new_tokens=128).stats
                        new, steps, per = s.new_tokens, s.steps, s.per_drafter
                        modelled = sum(relative_verify(decs[name].costs, k) for k in s.tree_sizes)
                    rows.append(dict(pass_=rep, prompt=p.id, category=p.category, method=name, new=new, steps=steps,
                                     wall=time.perf_counter() - t, per_drafter=per, load=load_average(),
                                     modelled=round(modelled, 2)))
                    print(json.dumps(rows[-1]), flush=True)
    with open(f"{stem}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(f"{stem}.md", "w") as f:
        f.write(report(rows, model_name, dtype))


def report(rows: list[dict], model_name: str, dtype: str) -> str:
    cats = list(dict.fromkeys(r["category"] for r in rows))
    out = [f"# Copy probe A/B: {model_name} {dtype}, {platform.processor() or platform.machine()}, 1 thread\n",
           "Two passes of the stream; speed-up = plain wall / method wall per pass, then the range over passes.\n",
           "| category | method | steps (pass 1 / 2) | lookup accepted / proposed | modelled speed-up | "
           "speed-up vs plain (passes) |",
           "|---|---|---|---|---|---|"]
    for c in cats + ["overall"]:
        for m in ("probe", "no-probe"):
            sel = [r for r in rows if r["method"] == m and (c == "overall" or r["category"] == c)]
            ref = [r for r in rows if r["method"] == "plain" and (c == "overall" or r["category"] == c)]
            sp = []
            for rep in (0, 1):
                a = sum(r["wall"] for r in ref if r["pass_"] == rep)
                b = sum(r["wall"] for r in sel if r["pass_"] == rep)
                sp.append(a / b if b else float("nan"))
            steps = [sum(r["steps"] for r in sel if r["pass_"] == rep) for rep in (0, 1)]
            acc = sum(r["per_drafter"].get("lookup", {}).get("accepted", 0) for r in sel if r["pass_"] == 0)
            prop = sum(r["per_drafter"].get("lookup", {}).get("proposed", 0) for r in sel if r["pass_"] == 0)
            model_m = sum(r.get("modelled", float("nan")) for r in sel if r["pass_"] == 0)
            model_p = sum(r.get("modelled", float("nan")) for r in ref if r["pass_"] == 0)
            out.append(f"| {c} | {m} | {steps[0]} / {steps[1]} | {acc} / {prop} | {model_p / model_m:.2f}× | "
                       f"{min(sp):.2f}×–{max(sp):.2f}× |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
