"""Reproduce docs/compare-qwen2.5-coder-0.5b.md: pick a skip set by hand, measure c, run --compare.

    PYTHONPATH=src python docs/benchmarks/compare-qwen2.5-coder-0.5b.py [--max-new-tokens 128]

1. Selection (untimed, fp32): for each candidate skip set, matchness (share of
   the full model's greedy tokens the draft predicts, one parallel draft forward
   from the prompt's full-model cache, as SWIFT scores sets) on four Spec-Bench
   coding prompts that are NOT the ones timed later.
2. Draft cost c of every candidate, fp32 and bf16 (swiftsd.engine.cost.measure_draft_cost).
3. `swiftsd generate --compare --json` on four other Spec-Bench coding prompts,
   bf16 and fp32, with the chosen set, each run as its own process.
Timed steps run under `flock /tmp/swiftsd-bench.lock` so no two timed jobs overlap.
Writes docs/benchmarks/compare-qwen2.5-coder-0.5b.json.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers

from swiftsd import SkipSet, SwiftDecoder, load
from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.cost import measure_draft_cost

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT.parent / "shared" / "data" / "spec_bench" / "question.jsonl"
OUT = Path(__file__).with_suffix(".json")
MODEL = "qwen2.5-coder-0.5b"
SELECT_IDS = (123, 125, 126, 129)  # chooses the set
TIMED_IDS = (121, 122, 127, 130)  # measures it
LOCK = "/tmp/swiftsd-bench.lock"

CANDIDATES: dict[str, SkipSet] = {
    "attn-4 (10,12,14,16)": SkipSet(attn=[10, 12, 14, 16]),
    "attn-8 (8-15)": SkipSet(attn=range(8, 16)),
    "attn-12 (6-17)": SkipSet(attn=range(6, 18)),
    "attn-8 late (14-21)": SkipSet(attn=range(14, 22)),
    "mlp-4 (10,12,14,16)": SkipSet(mlp=[10, 12, 14, 16]),
    "mlp-6 (9-14)": SkipSet(mlp=range(9, 15)),
    "mix-8 attn(9,11,13,15) mlp(10,12,14,16)": SkipSet(attn=[9, 11, 13, 15], mlp=[10, 12, 14, 16]),
    "mix-12 attn(8-15) mlp(10,12,14,16)": SkipSet(attn=range(8, 16), mlp=[10, 12, 14, 16]),
    "layers-4 (12-15)": SkipSet(attn=range(12, 16), mlp=range(12, 16)),
    "uniform (paper start, every other)": SkipSet.uniform(24),
}


@contextmanager
def bench_lock():
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def questions(ids) -> list[str]:
    rows = {r["question_id"]: r for r in map(json.loads, QUESTIONS.read_text().splitlines())}
    return [rows[i]["turns"][0] for i in ids]


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, transformers=transformers.__version__,
                python=platform.python_version(), torch_threads=torch.get_num_threads())


def matchness_table(max_new: int) -> dict:
    model, tok = load(MODEL, dtype="float32", device="cpu")
    dec = SwiftDecoder(model, tok, optimizer=False)
    ad = dec.adapter
    scores: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for text in questions(SELECT_IDS):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = tok(chat, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.inference_mode():
            seq = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                                 repetition_penalty=1.0)[0].tolist()
        P, w = len(ids), len(seq) - len(ids) - 1
        cache = SlotKVCache(ad.num_layers, P + w + 2)
        causal = torch.ones(P, P, dtype=torch.bool).tril()
        ad.forward(torch.tensor(ids), torch.arange(P), cache=cache, block_mask=causal, logits_rows=slice(P - 1, P))
        cache.rollback(P)
        for name, skip in CANDIDATES.items():
            scores[name].append(dec.matchness(skip, seq, P, cache, w))
    return {name: dict(skip_set=CANDIDATES[name].to_dict(), sublayers=len(CANDIDATES[name]),
                       matchness_per_prompt=s, matchness=sum(s) / len(s)) for name, s in scores.items()}


def cost_table() -> dict:
    out = {}
    for dtype in ("float32", "bfloat16"):
        model, _ = load(MODEL, dtype=dtype, device="cpu")
        dec = SwiftDecoder(model, optimizer=False)
        with bench_lock():
            rows = {name: measure_draft_cost(dec, skip, n=40, context=128) for name, skip in CANDIDATES.items()}
            # verification blocks do not depend on the skip set: time them once
            blocks = measure_draft_cost(dec, SkipSet(), n=20, context=128, verify_sizes=(2, 4, 8, 16, 32))
        out[dtype] = dict(candidates=rows, verify_relative=blocks["verify_relative"], full_ms=blocks["full_ms"])
        del model, dec
    return out


def compare_runs(skip: SkipSet, max_new: int, n_prompts: int) -> list[dict]:
    runs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    ids = TIMED_IDS[:n_prompts]
    for dtype in ("bfloat16", "float32"):
        for qid, text in zip(ids, questions(ids)):
            cmd = ["flock", LOCK, sys.executable, "-m", "swiftsd.cli.main", "generate", "--model", MODEL,
                   "--dtype", dtype, "--device", "cpu", "--chat", "--prompt", text, "--max-new-tokens", str(max_new),
                   "--skip-set", skip.to_json(), "--compare", "--json"]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            d = json.loads(proc.stdout)
            print(f"{dtype} q{qid}: ratio {d['compare']['ratio']:.2f} identical={d['compare']['identical']} "
                  f"({time.time() - t0:.0f}s)", flush=True)
            runs.append(dict(dtype=dtype, question_id=qid, prompt=text, command=" ".join(cmd[2:4] + cmd[4:]),
                             text=d["text"], stats=d["stats"], compare=d["compare"]))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--select-tokens", type=int, default=64)
    ap.add_argument("--skip-set", default=None, help="skip the selection rule; use this JSON set")
    ap.add_argument("--resume", action="store_true", help="keep the phases already in the JSON file")
    ap.add_argument("--prompts", type=int, default=len(TIMED_IDS), help="timed prompts per dtype")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads here and in the timed subprocesses (1: one core per job, so a "
                         "neighbouring job on the other core does not skew the ratio)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = json.loads(OUT.read_text()) if args.resume and OUT.is_file() else {}
    report.update(model=MODEL, machine=machine(), date=time.strftime("%Y-%m-%d"))
    if "matchness" not in report:
        report["matchness"] = matchness_table(args.select_tokens)
        OUT.write_text(json.dumps(report, indent=2))
    for name, row in sorted(report["matchness"].items(), key=lambda kv: -kv[1]["matchness"]):
        print(f"matchness {row['matchness']:.3f}  {name}", flush=True)
    if "cost" not in report:
        report["cost"] = cost_table()
        OUT.write_text(json.dumps(report, indent=2))
    for dtype, table in report["cost"].items():
        for name, row in table["candidates"].items():
            print(f"{dtype} c={row['c']:.3f} full={row['full_ms']:.1f}ms draft={row['draft_ms']:.1f}ms  {name}",
                  flush=True)
        print(f"{dtype} verify block / single token: {table['verify_relative']}", flush=True)
    chosen = SkipSet.from_json(args.skip_set) if args.skip_set else CANDIDATES[pick(report)]
    report["chosen"] = chosen.to_dict()
    report["runs"] = compare_runs(chosen, args.max_new_tokens, args.prompts)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


def pick(report: dict) -> str:
    """Best predicted bf16 speed-up for a chain draft of k tokens with per-token acceptance a = matchness:
    E[tokens/step] = (1 - a^(k+1)) / (1 - a), cost/step = k*c + v(k+1), v from the measured block times."""
    best, best_name = 0.0, ""
    table = report["cost"]["bfloat16"]
    v = {int(k): x for k, x in table["verify_relative"].items()}
    for name, m in report["matchness"].items():
        a = min(m["matchness"], 0.999)
        c = table["candidates"][name]["c"]
        for k in (1, 3, 7, 15):
            speed = ((1 - a ** (k + 1)) / (1 - a)) / (k * c + v[k + 1])
            if speed > best:
                best, best_name = speed, name
    print(f"chosen: {best_name} (predicted {best:.2f}x in bf16)", flush=True)
    return best_name


if __name__ == "__main__":
    main()
