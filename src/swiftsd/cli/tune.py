"""`swiftsd tune`: run a stream of prompts with the optimizer on, then store the tuned skip set.

    swiftsd tune --model qwen2.5-coder-0.5b --out sets.json          # bench's built-in prompts
    swiftsd tune --model qwen2.5-coder-0.5b --data question.jsonl --category qa --n 20 --out sets.json

Prompts use the Spec-Bench ``question.jsonl`` format (``question_id``, ``category``,
``turns``), or without ``--data`` the built-in set ``swiftsd bench`` uses; each
question's first turn is sent through the model's chat template.
The result is stored under (model identity, ``--task``), ready for
``--skip-set-store sets.json --task qa`` in ``generate``, ``bench`` and ``serve``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from typing import Any

from .common import add_draft_precision, add_model_arguments, build_decoder, costs_before_bars, flag, load_model
from ..config import OptimizerConfig
from ..errors import InvalidArgumentError

_OPT_FIELDS = {f.name: f for f in fields(OptimizerConfig)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--data", default=None, metavar="FILE",
                   help="JSONL of prompts in Spec-Bench question.jsonl format (question_id, category, turns), "
                        "e.g. data/spec_bench/question.jsonl from github.com/hemingkx/Spec-Bench; 'spec-bench' "
                        "reads the file named by $SWIFTSD_SPEC_BENCH (default: the built-in prompt set of "
                        "swiftsd bench, 12 prompts in 7 groups)")
    p.add_argument("--category", default=None, metavar="NAME",
                   help="only this category, e.g. a Spec-Bench group: mt_bench, translation, summarization, qa, "
                        "math_reasoning, rag (default: all)")
    p.add_argument("--n", type=int, default=20, metavar="N", help="prompts in the stream")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="skip-set store (JSON) to write; entries for other models and tasks are kept")
    p.add_argument("--task", default=None, metavar="NAME",
                   help="task name to store under (default: --category, else 'default')")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="new tokens per prompt at most")
    p.add_argument("--reference", action="store_true",
                   help="the paper's optimizer: fixed skip ratio, matchness objective, no fallback, no drift")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="set an optimizer option, repeatable, e.g. --opt skip_ratio=0.3; KEY is one of "
                        f"{', '.join(k for k in _OPT_FIELDS if k != 'enabled')} (docs/optimizer.md says what each "
                        "does) (default: the optimizer's defaults, except max_opt_share=1: tune searches with no "
                        "cap on its share of the time)")
    add_draft_precision(p, "the searched draft")
    p.add_argument("--resume", action="store_true", help="start from the set already stored in --out for this task")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write the per-step optimizer trace as JSON (default: no trace)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the optimizer's proposals")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")


def parse_opt_overrides(items: list[str]) -> dict[str, Any]:
    """``["skip_ratio=0.3", "fallback=false"]`` -> typed OptimizerConfig fields."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _OPT_FIELDS or key == "enabled":
            valid = ", ".join(k for k in _OPT_FIELDS if k != "enabled")
            raise InvalidArgumentError(f"--opt expects KEY=VALUE with KEY one of: {valid}; got {item!r}")
        default = getattr(OptimizerConfig(), key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float):
                value = float(raw)
            elif isinstance(default, tuple):
                value = tuple(float(x) for x in raw.split(","))
            else:
                value = raw
        except ValueError as exc:
            raise InvalidArgumentError(f"--opt {key}: cannot read {raw!r} as {type(default).__name__}") from exc
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from ..bench.data import build_input, evenly_spaced, load_prompts
    from ..hf.options import GenerateArgs
    from ..persist.store import load_skip_set, model_key, save_optimizer_result
    from .trace import write_trace

    if args.n < 1:
        raise InvalidArgumentError(f"--n must be >= 1, got {args.n}")
    request = GenerateArgs(max_new_tokens=args.max_new_tokens, seed=args.seed).check(flag)
    over = parse_opt_overrides(args.opt)
    over.setdefault("seed", args.seed)
    # a tune run exists to search: no wall-clock cap on the search's share of decoding (a server's
    # default is 5 %, which on a fast machine or a short stream can leave a tune run with nothing scored)
    over.setdefault("max_opt_share", 1.0)
    opt_cfg = OptimizerConfig.reference(**over) if args.reference else OptimizerConfig(**over)
    prompts = evenly_spaced(load_prompts(args.data, [args.category] if args.category else None), args.n)
    task = args.task or args.category or "default"

    model, tok = load_model(args)
    key = model_key(model)
    start = load_skip_set(args.out, key, task, missing_ok=True) if args.resume else None
    # asked to search: search even where the cost model says no set can pay here (search_gate)
    precision = {k: v for k, v in (("draft_precision", args.draft_precision), ("quant_group", args.quant_group))
                 if v is not None}
    dec = build_decoder(args, model, tok, skip=start, optimizer=opt_cfg, search_gate=False, **precision)
    assert dec.optimizer is not None
    opt = dec.optimizer

    costs_before_bars(dec)
    runs = []
    t0 = time.perf_counter()
    bar = _progress(prompts, f"tune {key}/{task}", args.no_progress)
    for prompt in bar:
        ids = build_input(tok, prompt, 0, [])
        res = dec.generate(ids, **request.as_kwargs())
        runs.append(res.stats)
        d = opt.status()
        bar.set_postfix(phase=d["phase"], it=d["iterations"], m=_f(d["best_matchness"]),
                        pred=_f(d["predicted_speedup"]), meas=_f(d["measured_speedup"]))
    bar.close()
    wall = time.perf_counter() - t0

    saved = save_optimizer_result(args.out, model, task, opt)
    if args.trace:
        write_trace(args.trace, runs, meta={"model": args.model, "model_key": key, "task": task,
                                            "dtype": str(model.dtype).replace("torch.", ""),
                                            "label": "reference" if args.reference else opt_cfg.objective,
                                            "optimizer_config": _jsonable(opt_cfg)})
    _report(args, opt, runs, wall, f"stored under {key!r} / {task!r} in {args.out}" if saved else
            f"nothing stored: no generation was longer than the context window ({opt_cfg.context_window} tokens); "
            f"raise --max-new-tokens")
    return 0


def _report(args: argparse.Namespace, opt: Any, runs: list, wall: float, stored: str) -> None:
    """The result on stdout: the optimizer's state, the best set, the stream's totals, where it went."""
    tokens = sum(s.new_tokens for s in runs)
    t_opt = sum(s.time_optimize for s in runs)
    t_gen = sum(s.wall_time for s in runs)
    print(opt.summary())
    print(f"best set: {opt.best()[0].to_json()}")
    print(f"{len(runs)} prompts, {tokens} tokens in {wall:.1f}s ({tokens / t_gen if t_gen else 0:.1f} tok/s while "
          f"generating), {100 * t_opt / t_gen if t_gen else 0:.1f}% of generation time optimizing")
    print(stored)
    if args.trace:
        print(f"trace written to {args.trace} (draw it with: swiftsd plot-trace {args.trace})")


def _progress(prompts: list, desc: str, off: bool) -> Any:
    """One tick per request, on stderr (stdout keeps only the result); none when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(prompts, desc=desc, unit="prompt", dynamic_ncols=True, file=sys.stderr, leave=False,
                disable=True if off else None)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _jsonable(cfg: OptimizerConfig) -> dict[str, Any]:
    return {f: (list(v) if isinstance(v, tuple) else v) for f in _OPT_FIELDS for v in [getattr(cfg, f)]}
