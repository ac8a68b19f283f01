"""Optimizer traces: write the per-step records as JSON (``--trace FILE``) and draw them.

``swiftsd plot-trace FILE --out PNG`` draws three panels over decoding steps:
matchness of every scored proposal with the best so far, rolling acceptance,
and predicted vs measured speed-up, with the optimizer's phase shaded and
request boundaries marked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import InvalidArgumentError

if TYPE_CHECKING:
    from ..core.decoder import GenerationResult
    from ..stats import GenerationStats

TRACE_VERSION = 1
PHASE_COLOURS = {"search": "#fde9c8", "accelerate": "#d7f0d2", "plain": "#e6e6e6"}
SOURCE_COLOURS = {"random": "#9e9e9e", "local": "#1f77b4", "bayes": "#d62728", "rescore": "#2ca02c", "given": "#000"}


def trace_document(runs: Iterable["GenerationStats | GenerationResult"], meta: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """One JSON document from the stats of one or more requests (in order)."""
    requests, steps = [], []
    for i, run in enumerate(runs):
        st = getattr(run, "stats", run)
        requests.append({
            "index": i, "prompt_tokens": st.prompt_tokens, "new_tokens": st.new_tokens, "steps": st.steps,
            "wall_time": st.wall_time, "time_optimize": st.time_optimize, "time_draft": st.time_draft,
            "time_verify": st.time_verify, "acceptance_rate": st.acceptance_rate,
            "mean_accepted_tokens": st.mean_accepted_tokens, "skip_set": st.skip_set, "optimizer": st.optimizer,
        })
        steps.extend(dict(rec, request_index=i) for rec in st.trace)
    return {"version": TRACE_VERSION, "meta": meta or {}, "requests": requests, "steps": steps}


def write_trace(path: str | Path, runs: Iterable["GenerationStats | GenerationResult"],
                meta: dict[str, Any] | None = None) -> None:
    """Write ``--trace FILE``: per-request summaries and per-step optimizer records."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(trace_document(runs, meta), indent=1) + "\n")


def read_trace(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"trace file {str(p)!r} does not exist; write one with --trace FILE")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"trace file {str(p)!r} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise InvalidArgumentError(f"{str(p)!r} is not a swiftsd trace (no 'steps' list); write one with --trace FILE")
    return doc


def _legend(ax, ncol: int = 1, loc: str = "lower right") -> None:
    """A legend only where something was drawn (an empty one makes matplotlib warn)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=7, ncol=ncol)


def _series(steps: list[dict[str, Any]], key: str) -> list[float]:
    """Values per step, NaN where missing, so lines break instead of bridging gaps."""
    return [float("nan") if s.get(key) is None else float(s[key]) for s in steps]


def _spans(xs: list[int], labels: list[str]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for x, lab in zip(xs, labels):
        if out and out[-1][2] == lab:
            out[-1] = (out[-1][0], x, lab)
        else:
            out.append((x, x, lab))
    return out


def plot_trace(doc: dict[str, Any], out: str | Path, title: str | None = None) -> Path:
    """Draw a trace document as a PNG; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = doc["steps"]
    if not steps:
        raise InvalidArgumentError("the trace has no steps to draw (did the optimizer run? it needs generations "
                                   "longer than its context window)")
    x = list(range(1, len(steps) + 1))
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True, constrained_layout=True)
    for ax in axes:
        for a, b, phase in _spans(x, [s.get("phase", "") for s in steps]):
            ax.axvspan(a - 0.5, b + 0.5, color=PHASE_COLOURS.get(phase, "white"), lw=0, zorder=0)
        starts = [xi for xi, s, prev in zip(x[1:], steps[1:], steps) if s.get("request") != prev.get("request")]
        for xs in starts:
            ax.axvline(xs - 0.5, color="#bbbbbb", lw=0.5, zorder=1)

    ax = axes[0]
    for src, colour in SOURCE_COLOURS.items():
        pts = [(xi, s["matchness"]) for xi, s in zip(x, steps) if s.get("eval_source") == src
               and s.get("matchness") is not None]
        if pts:
            ax.scatter(*zip(*pts), s=7, color=colour, label=src, zorder=3)
    if any(s.get("best_matchness") is not None for s in steps):
        ax.plot(x, _series(steps, "best_matchness"), color="black", lw=1.2, label="best set", zorder=4)
    ax.set_ylabel("matchness")
    ax.set_ylim(-0.02, 1.02)
    _legend(ax, ncol=3)

    ax = axes[1]
    if any(s.get("acceptance") is not None for s in steps):
        ax.plot(x, _series(steps, "acceptance"), color="#1f77b4", lw=1.2, label="rolling acceptance")
    ax.set_ylabel("acceptance")
    ax.set_ylim(-0.02, 1.02)
    _legend(ax)

    ax = axes[2]
    for key, colour, label in (("predicted_speedup", "#ff7f0e", "predicted"), ("measured_speedup", "#2ca02c",
                                                                             "measured (rolling)")):
        if any(s.get(key) is not None for s in steps):
            ax.plot(x, _series(steps, key), color=colour, lw=1.2, label=label)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_ylabel("speed-up vs plain")
    ax.set_xlabel("decoding step (grey lines: request boundaries; shading: search / accelerate / plain)")
    _legend(ax, loc="upper right")

    meta = doc.get("meta") or {}
    fig.suptitle(title or " · ".join(str(v) for v in (meta.get("model"), meta.get("dtype"), meta.get("label"))
                                     if v) or "swiftsd optimizer trace")
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


# -- `swiftsd plot-trace` --------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="FILE", help="trace JSON written by tune --trace")
    p.add_argument("--out", default=None, metavar="PNG", help="output image (default: FILE with .png)")
    p.add_argument("--title", default=None, metavar="TEXT",
                   help="the figure's title (default: the trace's model, dtype and label)")


def run(args: argparse.Namespace) -> int:
    doc = read_trace(args.trace)
    out = args.out or str(Path(args.trace).with_suffix(".png"))
    path = plot_trace(doc, out, args.title)
    print(f"wrote {path} ({len(doc['steps'])} steps, {len(doc.get('requests', []))} requests)")
    return 0
