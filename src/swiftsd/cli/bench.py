"""`swiftsd bench`: Spec-Bench-style speed measurement against plain decoding and training-free peers.

Every method runs on the same prompts in the same process after a warm-up; each
(method, turn) runs ``--repeats`` times, interleaved in rounds (order rotated), and
the faster run counts, so load on a shared machine cannot make a headline (the
report flags turns whose repeats disagree and warns when that spread could undo
a speed-up). Output: a markdown table (stdout and ``--out``), raw per-turn JSONL
from which every number can be recomputed, a machine description and two PNG plots.

This module holds the flags only; the run (``bench_run.py``) imports torch and the
methods when the command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import re

from .common import add_draft_precision, add_model_arguments, add_skip_arguments
from ..bench.choices import DEFAULT_METHODS, METHOD_NAMES, NOISE_MARGIN

__all__ = ["add_arguments", "run"]

SPEC_BENCH_GROUPS = "mt_bench, translation, summarization, qa, math_reasoning, rag"


def _csv(value: str) -> list[str]:
    return [v for v in re.split(r"[,\s]+", value.strip()) if v]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_skip_arguments(p, "the skip set of the swiftsd-static method",
                       "the --skip-set-store set, else every other layer")
    p.add_argument("--static-skip-set", dest="skip_set", help=argparse.SUPPRESS)  # deprecated: --skip-set
    p.add_argument("--data", default=None, metavar="FILE",
                   help="Spec-Bench question.jsonl, any JSONL with 'turns', 'prompt' or 'text', 'spec-bench' "
                        "(the shared copy) or 'humaneval' (default: a small built-in prompt set)")
    p.add_argument("--categories", type=_csv, default=None, metavar="LIST",
                   help=f"comma-separated groups to run, e.g. Spec-Bench's {SPEC_BENCH_GROUPS} "
                        "(default: every group in the data)")
    p.add_argument("--n-per-category", type=int, default=None, metavar="N",
                   help="questions per group, evenly spaced (default: every question)")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="new tokens per turn at most")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass; 1 = off")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest tokens; 0 = off")
    p.add_argument("--methods", type=_csv, default=list(DEFAULT_METHODS), metavar="LIST",
                   help=f"comma-separated, from {', '.join(METHOD_NAMES)} (plain always runs: it is the "
                        "reference)")
    p.add_argument("--method", dest="swift_method", default=None, metavar="NAME",
                   help="algorithm of the swiftsd entry: swiftsd or swift-paper (default: swiftsd)")
    p.add_argument("--drafters", type=_csv, default=None, metavar="LIST",
                   help="drafters of the swiftsd entry, comma-separated from layerskip, lookup, suffix "
                        "(default: all three)")
    add_draft_precision(p, "the swiftsd entry's layer-skip draft")
    p.add_argument("--repeats", type=int, default=2, metavar="N",
                   help="runs per (method, turn), interleaved; the faster counts. 1 only with a warning: a single "
                        "run cannot tell a speed-up from load")
    p.add_argument("--noise-margin", type=float, default=NOISE_MARGIN, metavar="X",
                   help="flag a turn whose repeats differ by more than this share (0.15 = 15 %%)")
    p.add_argument("--out", default="bench-results", metavar="DIR", help="directory for the report files")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="file stem of the report files (default: <model>-<dtype>-<device>[-t<T>])")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of sampled runs")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed warm-up prompts per method")
    p.add_argument("--pld-tokens", type=int, default=10, metavar="N", help="prompt_lookup_num_tokens of pld")
    p.add_argument("--early-exit-layer", type=int, default=None, metavar="L",
                   help="assistant_early_exit of early-exit (default: half the layers)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                   help="start no prompt that would end past this many minutes; prompts run round-robin over "
                        "categories, so a cut run covers every category, and the report says it was cut "
                        "(default: no limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run of the same --out and --name that a time budget, Ctrl-C or a crash cut "
                        "short: its finished prompts are kept, the methods' learned state is restored, and the "
                        "rest runs (same arguments and code only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--from-jsonl", default=None, metavar="FILE",
                   help="run nothing: recompute and print the tables from a raw JSONL this command wrote "
                        "(default: run the benchmark)")


def run(args: argparse.Namespace) -> int:
    from .bench_run import run as run_bench

    return run_bench(args)
