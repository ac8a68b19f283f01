"""Measure the on-the-fly optimiser on a stream of Spec-Bench prompts (issue 3's measurements).

    flock /tmp/swiftsd-bench.lock python docs/benchmarks/optimizer-measure.py \
        --model qwen2.5-coder-0.5b --dtype bf16 --n 12 --max-new-tokens 128

For each prompt of the stream, in rotating order: plain ``model.generate`` (the
reference), swiftsd with the paper's optimiser (``OptimizerConfig.reference()``:
fixed skip ratio 0.45, matchness objective) and swiftsd with the default
cost-aware optimiser; each swiftsd decoder keeps its optimiser state over the
stream. Then, offline, on windows of the plain outputs (first 32 generated
tokens of a few prompts, scored from the full model's prompt cache):

* the matchness of the set each optimiser held after every request (trajectory,
  requests to reach 95 % of the final value);
* a lazy greedy search (add the sublayer that keeps matchness highest; after the
  first full pass only the ``--greedy-topk`` best candidates are re-scored);
* the greedy path's predicted speed-ups under the device cost model, and a
  fixed-set speed check of the greedy-best and cost-aware sets.

Writes ``optimizer-<model>-<dtype>.json`` (everything), ``-reference.trace.json``
/ ``-costaware.trace.json`` and their PNGs under ``docs/benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from swiftsd import OptimizerConfig, SkipSet, SwiftDecoder, load
from swiftsd.bench.data import build_input, evenly_spaced, load_prompts
from swiftsd.engine.cache import SlotKVCache
from swiftsd.cli.trace import plot_trace, read_trace, write_trace

HERE = Path(__file__).resolve().parent


def plain_generate(model: Any, ids: list[int], max_new: int) -> tuple[list[int], float]:
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False)
    return out[0, len(ids):].tolist(), time.perf_counter() - t0


class Windows:
    """Prompt caches of the full model + the first ``window`` plain tokens, to score sets offline."""

    def __init__(self, dec: SwiftDecoder, rows: list[tuple[list[int], list[int]]], window: int = 32) -> None:
        self.dec, self.window, self.items = dec, window, []
        ad = dec.adapter
        for ids, new in rows:
            P = len(ids)
            cache = SlotKVCache(ad.num_layers, P + window + 2)
            mask = torch.ones(P, P, dtype=torch.bool).tril_()
            ad.forward(torch.tensor(ids), torch.arange(P), cache=cache, block_mask=mask, logits_rows=slice(P - 1, P))
            cache.rollback(P)
            self.items.append((ids + new[: window + 1], P, cache))
        self.memo: dict[SkipSet, float] = {}
        self.evaluations = 0

    def score(self, skip: SkipSet) -> float:
        if skip not in self.memo:
            self.evaluations += 1
            self.memo[skip] = sum(self.dec.matchness(skip, toks, P, cache, self.window)
                                  for toks, P, cache in self.items) / len(self.items)
        return self.memo[skip]


def lazy_greedy(win: Windows, num_layers: int, max_size: int, topk: int) -> list[dict[str, Any]]:
    """Grow a skip set one sublayer at a time, keeping matchness highest."""
    n = num_layers - 2
    flags = [("attn", i + 1) for i in range(n)] + [("mlp", i + 1) for i in range(n)]

    def with_(cur: SkipSet, f: tuple[str, int]) -> SkipSet:
        a, m = set(cur.attn), set(cur.mlp)
        (a if f[0] == "attn" else m).add(f[1])
        return SkipSet(attn=a, mlp=m)

    cur, path = SkipSet(), []
    last: dict[tuple[str, int], float] = {f: win.score(with_(cur, f)) for f in flags}
    while len(cur) < max_size and last:
        order = sorted(last, key=lambda f: -last[f])
        for f in order[:topk]:
            last[f] = win.score(with_(cur, f))
        f = max(order[:topk], key=lambda f: last[f])
        cur = with_(cur, f)
        del last[f]
        path.append({"size": len(cur), "skip_set": cur.to_dict(), "matchness": win.score(cur)})
        print(f"  greedy {len(cur):2d}: +{f[0]}{f[1]} matchness {path[-1]['matchness']:.3f}", file=sys.stderr)
    return path


def to_95(values: list[float]) -> int | None:
    """1-based index of the first request whose value reaches 95 % of the final one."""
    if not values or values[-1] <= 0:
        return None
    target = 0.95 * values[-1]
    return next(i + 1 for i, v in enumerate(values) if v >= target)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--windows", type=int, default=6, help="prompts whose plain output scores sets offline")
    ap.add_argument("--greedy-max-frac", type=float, default=0.5)
    ap.add_argument("--greedy-topk", type=int, default=12)
    ap.add_argument("--greedy-from", default=None, metavar="JSON",
                    help="reuse the greedy path of an earlier run on the same prompts and windows")
    ap.add_argument("--fixed-check", type=int, default=4, help="last prompts re-run with fixed sets")
    ap.add_argument("--out", default=None, help="output prefix (default docs/benchmarks/optimizer-<model>-<dtype>)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine a second OpenMP thread makes every "
                         "neighbouring job a 10x slowdown; one thread keeps the plain/swiftsd ratio honest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prefix = Path(args.out) if args.out else HERE / f"optimizer-{args.model}-{args.dtype}"

    model, tok = load(args.model, dtype=args.dtype)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or tok.eos_token_id
    prompts = evenly_spaced(load_prompts("spec-bench"), args.n)
    inputs = [build_input(tok, p, 0, []) for p in prompts]
    M = args.max_new_tokens
    decs = {"reference": SwiftDecoder(model, tok, optimizer=OptimizerConfig.reference()),
            "costaware": SwiftDecoder(model, tok)}
    plain_generate(model, inputs[0], 8)  # warm-up (no optimiser state touched)

    rows: list[dict[str, Any]] = []
    stats: dict[str, list[Any]] = {k: [] for k in decs}
    t_all = time.perf_counter()
    for i, (p, ids) in enumerate(zip(prompts, inputs)):
        order = ["plain", "reference", "costaware"]
        order = order[i % 3:] + order[: i % 3]
        row: dict[str, Any] = {"i": i, "id": p.id, "category": p.category, "prompt_tokens": len(ids)}
        outs: dict[str, list[int]] = {}
        for m in order:
            if m == "plain":
                outs[m], row["plain_s"] = plain_generate(model, ids, M)
            else:
                t0 = time.perf_counter()
                res = decs[m].generate(ids, max_new_tokens=M)
                row[f"{m}_s"] = time.perf_counter() - t0
                outs[m] = res.new_tokens
                stats[m].append(res.stats)
                o = res.stats.optimizer or {}
                row[f"{m}_opt_s"] = res.stats.time_optimize
                row[f"{m}_tau"] = res.stats.mean_accepted_tokens
                row[f"{m}_phase"] = o.get("phase")
                row[f"{m}_pred"] = o.get("predicted_speedup")
                row[f"{m}_meas"] = o.get("measured_speedup")
        for m in decs:
            row[f"{m}_tokens"] = len(outs[m])
            row[f"{m}_identical"] = outs[m] == outs["plain"]
        row["plain_tokens"] = len(outs["plain"])
        row["plain_new"] = outs["plain"]
        rows.append(row)
        print(f"[{i + 1}/{len(prompts)}] {p.category:15s} plain {row['plain_s']:.1f}s  ref {row['reference_s']:.1f}s "
              f"(tau {row['reference_tau']:.2f})  cost {row['costaware_s']:.1f}s (tau {row['costaware_tau']:.2f}, "
              f"{row['costaware_phase']})  elapsed {time.perf_counter() - t_all:.0f}s", file=sys.stderr, flush=True)

    meta = {"model": args.model, "dtype": args.dtype}
    for m, dec in decs.items():
        path = prefix.with_name(prefix.name + f"-{m}.trace.json")
        write_trace(path, stats[m], meta=dict(meta, label=m))
        plot_trace(read_trace(path), path.with_suffix("").with_suffix(".png"))

    # -- offline: windows, trajectories, greedy ------------------------------------------
    ev = SwiftDecoder(model, tok, optimizer=False)
    eligible = [j for j, r in enumerate(rows) if len(r["plain_new"]) >= 33]
    chosen = [eligible[(k * len(eligible)) // args.windows] for k in range(min(args.windows, len(eligible)))]
    win = Windows(ev, [(inputs[j], rows[j]["plain_new"]) for j in chosen])
    L = ev.num_layers
    trajectories = {m: [win.score(SkipSet.from_dict(s.optimizer["best_set"])) for s in stats[m]] for m in decs}
    t0 = time.perf_counter()
    if args.greedy_from:
        old = json.loads(Path(args.greedy_from).read_text())
        assert old["windows"]["prompts"] == [rows[j]["id"] for j in chosen], "different windows"
        greedy, t_greedy = old["greedy"]["path"], old["greedy"]["seconds"]
    else:
        greedy = lazy_greedy(win, L, int(round(2 * (L - 2) * args.greedy_max_frac)), args.greedy_topk)
        t_greedy = time.perf_counter() - t0
    cost_opt = decs["costaware"].optimizer
    costs, w = cost_opt.costs, cost_opt.state.nodes_per_depth
    for g in greedy:
        pr = costs.predict(cost_opt.acceptance(g["matchness"]), SkipSet.from_dict(g["skip_set"]), 25, w)
        g.update(predicted_speedup=pr.speedup, draft_cost=pr.draft_cost, draft_len=pr.draft_len)
    greedy_best = max(greedy, key=lambda g: g["predicted_speedup"])

    finals: dict[str, Any] = {}
    for m, dec in decs.items():
        opt = dec.optimizer
        best = opt.best()[0]
        st = opt.state_dict()
        same_size = next((g for g in greedy if g["size"] == len(best)), None)
        m_win = win.score(best)
        pr = costs.predict(opt.acceptance(m_win), best, 25, opt.state.nodes_per_depth)
        tok_s = sum(r[f"{m}_tokens"] for r in rows) / sum(r[f"{m}_s"] for r in rows)
        plain_tok_s = sum(r["plain_tokens"] for r in rows) / sum(r["plain_s"] for r in rows)
        finals[m] = {
            "tokens_per_s": tok_s, "plain_tokens_per_s": plain_tok_s, "speedup_vs_plain": tok_s / plain_tok_s,
            "share_optimizing": sum(r[f"{m}_opt_s"] for r in rows) / sum(r[f"{m}_s"] for r in rows),
            "identical_outputs": sum(r[f"{m}_identical"] for r in rows), "prompts": len(rows),
            "iterations": st["iterations"], "phase": st["phase"], "stop_reason": st["stop_reason"],
            "best_set": best.to_dict(), "best_size": len(best), "best_matchness_online": st["best_matchness"],
            "best_matchness_windows": m_win, "predicted_speedup_windows": pr.speedup,
            "predicted_speedup_online": st["predicted_speedup"], "measured_speedup_online": st["measured_speedup"],
            "draft_cost": pr.draft_cost, "trajectory_windows": trajectories[m],
            "miss_scale": st["miss_scale"], "nodes_per_depth": st["nodes_per_depth"],
            "requests_to_95pct": to_95(trajectories[m]),
            "greedy_same_size_matchness": same_size["matchness"] if same_size else None,
            "greedy_same_size_predicted_speedup": same_size["predicted_speedup"] if same_size else None,
        }

    # -- fixed-set speed check on the last prompts (plain interleaved again) ----------------
    fixed: dict[str, Any] = {}
    if args.fixed_check:
        sets = {"greedy_best": SkipSet.from_dict(greedy_best["skip_set"]),
                "costaware_final": decs["costaware"].optimizer.best()[0],
                "reference_final": decs["reference"].optimizer.best()[0]}
        fdecs = {k: SwiftDecoder(model, tok, skip_set=s, optimizer=False) for k, s in sets.items()}
        acc: dict[str, list[float]] = {k: [0.0, 0.0, 0.0] for k in ["plain", *sets]}  # tokens, seconds, tau sum
        for j in range(len(rows) - args.fixed_check, len(rows)):
            for k in ["plain", *sets]:
                if k == "plain":
                    out, s = plain_generate(model, inputs[j], M)
                    acc[k][0] += len(out)
                    acc[k][1] += s
                else:
                    t0 = time.perf_counter()
                    res = fdecs[k].generate(inputs[j], max_new_tokens=M)
                    acc[k][0] += len(res.new_tokens)
                    acc[k][1] += time.perf_counter() - t0
                    acc[k][2] += res.stats.mean_accepted_tokens
        plain_rate = acc["plain"][0] / acc["plain"][1]
        for k, s in sets.items():
            fixed[k] = {"skip_set": s.to_dict(), "size": len(s), "speedup_vs_plain": acc[k][0] / acc[k][1] / plain_rate,
                        "mean_tau": acc[k][2] / args.fixed_check, "matchness_windows": win.score(s)}

    summary = {
        "model": args.model, "dtype": args.dtype, "prompts": len(rows), "max_new_tokens": M,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "windows": {"prompts": [rows[j]["id"] for j in chosen], "window": 32, "set_evaluations": win.evaluations},
        "costs": costs.to_dict(), "nodes_per_depth": w, "n_flags": 2 * (L - 2),
        "configs": finals, "greedy": {"seconds": t_greedy, "path": greedy, "best_by_prediction": greedy_best},
        "fixed_set_check": {"prompts": args.fixed_check, "results": fixed},
        "rows": [{k: v for k, v in r.items() if k != "plain_new"} for r in rows],
        "wall_seconds": time.perf_counter() - t_all,
    }
    out = prefix.with_name(prefix.name + ".json")
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({m: {k: v for k, v in f.items() if k not in ("trajectory_windows",)} for m, f in finals.items()},
                     indent=1))
    print(json.dumps(fixed, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
