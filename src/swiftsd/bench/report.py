"""Benchmark output: markdown table, raw JSONL, machine description, PNG plots."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .metrics import (OVERALL, REFERENCE, Record, Row, committed_per_step, mismatches, per_drafter, same_text_records,
                      summarize)


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _identical(r: Row) -> str:
    if r.compared is None:
        return "n/a (sampling)"
    if r.method == "plain":
        return "reference"
    return f"{r.identical}/{r.compared}" + ("" if r.identical == r.compared else " **MISMATCH**")


HEADER = ("| method | category | turns | tokens | time s | tok/s | speed-up (total) | speed-up (mean/turn) "
          "| repeats: range, unstable turns | tokens/step τ | acceptance | draft cost c | optimize % "
          "| identical to plain |")
_COLUMNS = HEADER.count("|") - 1


def _acceptance(r: Row) -> str:
    if r.invalid:
        return f"invalid ({r.invalid} turn(s))"
    return _f(r.acceptance, "{:.0%}")


def _noise(r: Row) -> str:
    """How far the repeats leave the speed-up open, and how many turns they disagreed on."""
    if r.method == REFERENCE:
        return f"{r.unstable} unstable" if r.repeats > 1 else "1 run"
    if r.repeats < 2:
        return "1 run: unchecked"
    if r.speedup_low is None or r.speedup_high is None:
        return "n/a"
    return (f"{r.speedup_low:.2f}–{r.speedup_high:.2f}×, {r.unstable} unstable"
            + (" **within noise**" if r.verdict == "within noise" else ""))


def markdown_table(rows: Sequence[Row], unavailable: dict[str, str] | None = None) -> str:
    lines = [HEADER, "|" + "---|" * _COLUMNS]
    for r in rows:
        cat = f"**{r.category}**" if r.category == OVERALL else r.category
        lines.append(
            f"| {r.method} | {cat} | {r.turns} | {r.new_tokens} | {r.wall_time:.1f} | {_f(r.tokens_per_s, '{:.1f}')} "
            f"| {_f(r.speedup_total, '{:.2f}×')} | {_f(r.speedup_mean, '{:.2f}×')} | {_noise(r)} | {_f(r.tau)} "
            f"| {_acceptance(r)} | {_f(r.draft_cost)} | {_f(r.opt_share, '{:.1%}')} | {_identical(r)} |"
        )
    for name, why in (unavailable or {}).items():
        lines.append(f"| {name} | all | n/a: {why} |" + " |" * (_COLUMNS - 3))
    return "\n".join(lines)


def _cell(r: Row) -> str:
    mark = {"within noise": " (noise)", "unchecked": " (1 run)"}.get(r.verdict, "")
    return _f(r.speedup_total, "{:.2f}×") + mark


def speedup_matrix(rows: Sequence[Row]) -> str:
    """Compact view: speed-up (total) per method × category; '(noise)': the repeats leave it open."""
    cats = list(dict.fromkeys(r.category for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    cell = {(r.method, r.category): r for r in rows}
    lines = ["| method | " + " | ".join(cats) + " |", "|" + "---|" * (len(cats) + 1)]
    for m in methods:
        vals = [_cell(cell[(m, c)]) if (m, c) in cell else "" for c in cats]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def decode_text(rows: Sequence[Row]) -> str:
    """The decode-phase speed-ups, prefill taken out, with plain's prefill share ('' for runs that lack it)."""
    if not any(r.speedup_decode is not None for r in rows if r.method != REFERENCE):
        return ""
    cats = list(dict.fromkeys(r.category for r in rows))
    cell = {(r.method, r.category): r for r in rows}
    lines = ["| method | " + " | ".join(cats) + " |", "|" + "---|" * (len(cats) + 1)]
    for m in dict.fromkeys(r.method for r in rows):
        if m == REFERENCE:
            vals = [_f(cell[(m, c)].prefill_share, "prefill {:.0%}") if (m, c) in cell else "" for c in cats]
        else:
            vals = [_f(cell[(m, c)].speedup_decode, "{:.2f}×") if (m, c) in cell else "" for c in cats]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return ("## Speed-up of the decoding alone (prefill taken out)\n\n"
            "Every method runs the same prompt forward, so its time only dilutes the speed-ups above; the "
            "plain row gives its share of plain's time. Each cell: (tokens ÷ (time − prefill)) over plain's "
            "same ratio, the same turns and runs as above.\n\n" + "\n".join(lines) + "\n\n")


def headlines(rows: Sequence[Row], margin: float) -> list[tuple[bool, str]]:
    """(is_warning, line) per method overall: a speed-up is stated only when its repeats cannot undo it."""
    out: list[tuple[bool, str]] = []
    for r in rows:
        if r.category != OVERALL or r.method == REFERENCE or r.speedup_total is None:
            continue
        s, v = r.speedup_total, r.verdict
        load = f"; load average up to {r.load_max:.1f}" if r.load_max is not None else ""
        if v == "unchecked":
            out.append((True, f"WARNING: {r.method}: {s:.2f}× plain from one run per turn, not checked against "
                              f"load{load}; rerun with --repeats 2 or more before quoting it"))
        elif v == "within noise":
            out.append((True, f"WARNING: {r.method}: {s:.2f}× plain is within the noise: taking each turn's other "
                              f"repeat would give {r.speedup_low:.2f}×–{r.speedup_high:.2f}×; {r.unstable} turn(s) "
                              f"disagreed by more than {margin:.0%}{load}. Not a result: rerun on a quiet machine"))
        elif v in ("faster", "slower"):
            out.append((False, f"{r.method}: {s:.2f}× plain ({r.speedup_low:.2f}×–{r.speedup_high:.2f}× over its "
                               f"repeats; fastest of {r.repeats} runs per turn; {r.unstable} unstable turn(s))"))
    return out


def drafter_table(records: Sequence[Record]) -> str:
    """Proposed and accepted draft tokens per method and drafter ('' when no method reports them)."""
    totals = per_drafter(records)
    if not totals:
        return ""
    lines = ["| method | drafter | proposed | accepted | acceptance |", "|---|---|---|---|---|"]
    for m, per in totals.items():
        for name, c in per.items():
            rate = _f(c["accepted"] / c["proposed"], "{:.0%}") if c["proposed"] else "n/a"
            lines.append(f"| {m} | {name} | {c['proposed']} | {c['accepted']} | {rate} |")
    return "\n".join(lines)


def same_text_text(records: Sequence[Record], greedy: bool) -> str:
    """The speed-ups over the turns every method decoded identically to plain ('' when all or none did)."""
    if not greedy or not mismatches(records):
        return ""
    same = same_text_records(records)
    turns = {(r["prompt_id"], r["turn"]) for r in records}
    kept = {(r["prompt_id"], r["turn"]) for r in same}
    order = [*dict.fromkeys(r["category"] for r in records), OVERALL]
    if not kept:
        return "## Speed-up on the same text\n\nNo turn was decoded identically to plain by every method.\n\n"
    return ("## Speed-up on the same text\n\n"
            f"Only the {len(kept)} of {len(turns)} turns that every method decoded token for token as plain "
            "did: the same prompt and the same output, so these speeds compare like for like. Elsewhere a "
            "bf16 near-tie sent a method down another continuation (see the mismatches above), which may "
            "copy more or less of its context. A category with no such turn is left out.\n\n"
            + speedup_matrix(sorted(summarize(same, greedy), key=lambda r: order.index(r.category))) + "\n\n")


def mismatch_text(records: Sequence[Record], greedy: bool) -> str:
    if not greedy:
        return "Sampling run: outputs are not expected to equal plain decoding's token for token."
    mm = mismatches(records)
    if not mm:
        return "Greedy: every output is identical to plain decoding's."
    items = ", ".join(f"{m['method']}@{m['prompt_id']}#{m['turn']} (token {m['first_diff']})" for m in mm)
    return f"**GREEDY MISMATCH: {len(mm)} output(s) differ from plain decoding:** {items}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(dtype: str, device: str) -> dict[str, Any]:
    import torch
    import transformers

    from .. import __version__

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "swiftsd": __version__,
        "dtype": dtype, "device": device, "gpu": None,
    }
    if device == "cpu":  # whether half-precision forwards over many tokens are fast here at all
        from ..loading.hardware import native_half_matmul

        info["native_matmul"] = {"bfloat16": native_half_matmul(torch.bfloat16),
                                 "float16": native_half_matmul(torch.float16)}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def plot_speedup(rows: Sequence[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(r.category for r in rows))
    methods = [m for m in dict.fromkeys(r.method for r in rows) if m != "plain"]
    cell = {(r.method, r.category): r for r in rows}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cats)), 4))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(cats))]
        got = [cell.get((m, c)) for c in cats]
        ys = [(r.speedup_total or 0.0) if r else 0.0 for r in got]
        lo = [max(0.0, y - (r.speedup_low or y)) if r else 0.0 for y, r in zip(ys, got)]
        hi = [max(0.0, (r.speedup_high or y) - y) if r else 0.0 for y, r in zip(ys, got)]
        bars = ax.bar(xs, ys, width, label=m, yerr=[lo, hi], capsize=2, error_kw={"lw": 0.8})
        for b, r in zip(bars, got):
            if r is not None and r.verdict in ("within noise", "unchecked"):
                b.set_hatch("//")
    ax.axhline(1.0, color="black", lw=1, ls="--", label="plain")
    ax.set_xticks(range(len(cats)), cats, rotation=20)
    ax.set_ylabel("speed-up over plain (bars: repeats' range; hatched: not a result)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accepted(records: Sequence[Record], methods: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    hists = {m: committed_per_step(records, m) for m in methods if m != "plain"}
    hists = {m: h for m, h in hists.items() if h}
    top = max((max(h) for h in hists.values()), default=1)
    width = 0.8 / max(1, len(hists))
    for i, (m, h) in enumerate(hists.items()):
        total = sum(h.values())
        xs = [k + (i - (len(hists) - 1) / 2) * width for k in range(1, top + 1)]
        ax.bar(xs, [h.get(k, 0) / total for k in range(1, top + 1)], width, label=m)
    ax.set_xlabel("tokens committed per full-model forward (accepted draft tokens + 1)")
    ax.set_ylabel("share of steps")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, stem: str, records: Sequence[Record], rows: Sequence[Row], meta: dict[str, Any],
                 greedy: bool, unavailable: dict[str, str]) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.jsonl``, ``<stem>.machine.json`` and two PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{stem}{suffix}" for k, suffix in (
        ("md", ".md"), ("jsonl", ".jsonl"), ("machine", ".machine.json"),
        ("speedup", ".speedup.png"), ("accepted", ".accepted.png"))}
    with paths["jsonl"].open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    paths["machine"].write_text(json.dumps(meta, indent=2) + "\n")
    title = f"{meta.get('model')} {meta.get('dtype')} on {meta.get('gpu') or meta.get('cpu')}"
    plot_speedup(rows, paths["speedup"], title)
    plot_accepted(records, [r.method for r in rows if r.category == OVERALL], paths["accepted"], title)
    paths["md"].write_text(render_markdown(records, rows, meta, greedy, unavailable, stem))
    return paths


def render_markdown(records: Sequence[Record], rows: Sequence[Row], meta: dict[str, Any], greedy: bool,
                    unavailable: dict[str, str], stem: str = "") -> str:
    hw = meta.get("gpu") or f"{meta.get('cpu')} ({meta.get('cpu_cores')} cores)"
    if not meta.get("gpu") and meta.get("torch_threads"):
        hw += f", {meta['torch_threads']} torch thread(s)"
    slow = [k for k, native in (meta.get("native_matmul") or {}).items() if native is False]
    if slow:
        hw += f", no native {' or '.join(slow)} matmul"
    mode = "greedy" if greedy else f"sampling, temperature {meta.get('temperature')}"
    overall = [r for r in rows if r.category == OVERALL]
    return (
        f"# swiftsd bench: {meta.get('model')}, {meta.get('dtype')}, {meta.get('device')}\n\n"
        f"{hw}; torch {meta.get('torch')}, transformers {meta.get('transformers')}; {mode}; "
        f"{meta.get('max_new_tokens')} new tokens; data {meta.get('data')}; "
        f"{meta.get('prompts')} prompts ({meta.get('turns')} turns){_stopped_text(meta)}; seed {meta.get('seed')}; "
        f"{_repeats_text(meta)} after {meta.get('warmup')} warm-up prompt(s); "
        f"load average before/after {meta.get('load_average_before')} / {meta.get('load_average_after')}."
        f"{_slices_text(meta)}\n\n"
        f"{mismatch_text(records, greedy)}\n\n"
        f"## Result\n\n{_headline_text(rows, meta)}\n\n"
        f"## Overall\n\n{markdown_table(overall, unavailable)}\n\n"
        f"## Speed-up by category (total)\n\n{speedup_matrix(rows)}\n\n"
        f"{decode_text(rows)}"
        f"{same_text_text(records, greedy)}"
        f"## Every method × category\n\n{markdown_table(rows)}\n\n"
        f"{_drafter_text(records)}"
        "Columns: speed-up (total) = method tok/s ÷ plain tok/s over the same turns (the ratio of total times "
        "when outputs match); speed-up (mean/turn) = mean of per-turn ratios; τ = new tokens ÷ full-model "
        "forwards (prefill counted); acceptance = accepted draft tokens ÷ draft positions; c = mean draft-forward "
        "time ÷ mean plain decode-forward time, measured in this run; repeats: the speed-up had every turn taken the "
        "repeat least / most in the method's favour, and the turns whose repeats differ by more than the margin. "
        "Raw rows: "
        f"`{stem}.jsonl`; machine: `{stem}.machine.json`.\n\n"
        f"{_isolated_text(meta)}"
        f"Methods: {json.dumps(meta.get('methods'))}\n"
    )


def _isolated_text(meta: dict[str, Any]) -> str:
    iso = meta.get("draft_cost_isolated") or {}
    if not iso:
        return ""
    parts = [f"{m}: c = {v['c']:.2f} ({v.get('skipped_sublayers')}/{v.get('total_sublayers')} sublayers skipped, "
             f"draft {v['draft_ms']:.1f} ms vs full {v['full_ms']:.1f} ms)" for m, v in iso.items()]
    return ("Draft cost of each swiftsd method's final skip set measured in isolation (`cost.measure_draft_cost`: "
            "one-token adapter forwards, no draft-loop overhead): " + "; ".join(parts) + ".\n\n")


def _slices_text(meta: dict[str, Any]) -> str:
    """A run continued with --resume names its slices: when each ran, and how many prompts."""
    slices = meta.get("slices") or []
    if len(slices) < 2:
        return ""
    parts = [f"{s.get('started')} to {s.get('ended')}: {s.get('prompts')} prompts" for s in slices]
    return (f" Ran in {len(slices)} slices (`--resume`; same arguments and code, the learned state carried "
            f"from each slice to the next): {'; '.join(parts)}.")


def _stopped_text(meta: dict[str, Any]) -> str:
    """A run cut short says so next to its prompt count (prompts ran round-robin over categories)."""
    why = meta.get("stopped_early")
    if not why:
        return ""
    return (f" **of {meta.get('prompts_planned')} planned: stopped early ({why})**; prompts ran round-robin "
            "over categories, so each category has about the same share of the planned questions")


def _repeats_text(meta: dict[str, Any]) -> str:
    n = meta.get("repeats", 1)
    margin = meta.get("noise_margin")
    if n and n > 1:
        return (f"each (method, turn) ran {n} times, interleaved in rounds (order rotated each round), "
                f"and the faster run is reported (repeats more than {margin:.0%} apart are flagged);")
    return "each (method, turn) ran once (**no check against load**);"


def _headline_text(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    lines = headlines(rows, meta.get("noise_margin") or 0.15)
    return "\n".join(f"- {'**' + t + '**' if warn else t}" for warn, t in lines) or "- no method to compare"


def _drafter_text(records: Sequence[Record]) -> str:
    table = drafter_table(records)
    return (f"## Draft tokens per drafter\n\n{table}\n\nTree nodes each drafter proposed and verification "
            "accepted (`stats.per_drafter`); a prefix several drafters proposed counts for each.\n\n"
            if table else "")
