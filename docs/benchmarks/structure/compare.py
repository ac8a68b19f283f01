"""Compare two `swiftsd bench` runs of the same prompts made by two versions of the code.

    python3 docs/benchmarks/structure/compare.py BEFORE.jsonl AFTER.jsonl [--out STEM]

For every (method, prompt, turn) it says whether the generated ids and the tokens committed per step
are identical, and sets each version's speed-up over its own plain decoding side by side, per
category and overall (totals of tokens over totals of time, as the bench reports them). Prints a
markdown table; with --out also writes STEM.md and STEM.json.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def _records(path: str) -> dict[tuple[str, str, int], dict]:
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out[(r["method"], r["prompt_id"], r["turn"])] = r
    return out


def _speedups(recs: dict[tuple[str, str, int], dict]) -> dict[str, dict[str, float]]:
    tok: dict[tuple[str, str], float] = defaultdict(float)
    sec: dict[tuple[str, str], float] = defaultdict(float)
    for (method, _, _), r in recs.items():
        for cat in (r["category"], "overall"):
            tok[method, cat] += r["new_tokens"]
            sec[method, cat] += r["wall_time"]
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (method, cat), t in tok.items():
        plain = tok["plain", cat] / sec["plain", cat]
        out[method][cat] = (t / sec[method, cat]) / plain
    return out


def compare(before: str, after: str) -> dict:
    a, b = _records(before), _records(after)
    keys = sorted(set(a) & set(b))
    same_ids = {f"{m}@{p}#{t}": a[m, p, t]["new_ids"] == b[m, p, t]["new_ids"] for m, p, t in keys}
    same_steps = {f"{m}@{p}#{t}": a[m, p, t].get("committed_per_step") == b[m, p, t].get("committed_per_step")
                  for m, p, t in keys}
    return {"before": before, "after": after, "turns": len(keys), "identical_ids": same_ids,
            "identical_steps": same_steps, "speedup_before": _speedups(a), "speedup_after": _speedups(b),
            "only_in_one": sorted(f"{k}" for k in set(a) ^ set(b))}


def markdown(res: dict) -> str:
    ids, steps = res["identical_ids"], res["identical_steps"]
    lines = [f"{sum(ids.values())}/{len(ids)} (method, turn) outputs identical, "
             f"{sum(steps.values())}/{len(steps)} with identical tokens per step.", ""]
    diff = sorted(k for k, v in ids.items() if not v)
    if diff:
        lines += [f"Outputs that differ: {', '.join(diff)}", ""]
    sb, sa = res["speedup_before"], res["speedup_after"]
    cats = sorted({c for m in sb.values() for c in m} - {"overall"}) + ["overall"]
    lines += ["| method | version | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
    for m in sorted(set(sb) - {"plain"}):
        for name, s in (("before", sb), ("after", sa)):
            lines.append(f"| {m} | {name} | " + " | ".join(f"{s[m].get(c, float('nan')):.2f}x" for c in cats) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json too")
    args = p.parse_args()
    res = compare(args.before, args.after)
    text = markdown(res)
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text, encoding="utf-8")
        Path(args.out + ".json").write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
