"""`swiftsd bench`, the run: load the model, build the methods, measure, report (the method is in
``bench.py``'s docstring; its flags are there too, so ``--help`` needs no torch)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .common import check_skip_choice, load_model, start_skip_set
from ..config import SamplingParams
from ..errors import InvalidArgumentError
from ..engine.skipset import SkipSet
from ..bench import resume
from ..bench.data import load_prompts
from ..bench.methods import METHOD_NAMES, RunParams, Swift, build_methods
from ..bench.metrics import OVERALL, mismatches, summarize
from ..bench.report import (
    drafter_table, headlines, machine_info, markdown_table, mismatch_text, same_text_text, speedup_matrix, write_report,
)
from ..bench.runner import NOISE_MARGIN, interleave_categories, run_stream, warm_up

__all__ = ["run"]


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-")


def _dtype_short(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(name, name)


def _isolated_costs(methods: list, records: list) -> dict[str, Any]:
    """c of each swiftsd method's last skip set from ``cost.measure_draft_cost``: adapter forwards
    alone (no draft-loop overhead), next to the in-stream c of the table."""
    from ..engine.cost import measure_draft_cost

    out: dict[str, Any] = {}
    for m in methods:
        if not isinstance(m, Swift) or m.decoder is None:
            continue
        last = [r.get("skip_set") for r in records if r["method"] == m.name and r.get("skip_set")]
        if not last:
            continue
        res = measure_draft_cost(m.decoder, last[-1], n=20)
        out[m.name] = {k: res[k] for k in ("c", "full_ms", "draft_ms", "skip_set", "skipped_sublayers",
                                           "total_sublayers") if k in res}
    return out


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews timings, so the report says."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def recompute(path: str | Path) -> int:
    """Print the tables again from a raw JSONL (and its sibling .machine.json), running nothing."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"--from-jsonl file not found: {str(path)!r}")
    records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    machine = p.with_name(p.name[: -len(".jsonl")] + ".machine.json") if p.name.endswith(".jsonl") else None
    meta = json.loads(machine.read_text()) if machine is not None and machine.is_file() else {}
    greedy = float(meta.get("temperature", 0.0)) == 0.0
    rows = summarize(records, greedy)
    print(mismatch_text(records, greedy))
    print()
    for _, line in headlines(rows, float(meta.get("noise_margin") or NOISE_MARGIN)):
        print(line)
    print()
    print(markdown_table(rows, meta.get("unavailable") or {}))
    same = same_text_text(records, greedy)
    if same:
        print()
        print(same.rstrip())
    return 0


def _swift_options(args: argparse.Namespace) -> dict[str, Any]:
    """--method / --drafters / --draft-precision for the 'swiftsd' entry, passed to SwiftDecoder as given."""
    out: dict[str, Any] = {}
    if args.draft_precision is not None:
        out["draft_precision"] = args.draft_precision
    if args.swift_method is not None:
        out["method"] = args.swift_method
    if args.drafters is not None:
        out["drafters"] = tuple(args.drafters)
    return out


def _check_args(args: argparse.Namespace) -> RunParams:
    """Validate what needs no model; one clear error per problem."""
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    params = RunParams(sampling=sampling, max_new_tokens=args.max_new_tokens)
    if args.warmup < 0:
        raise InvalidArgumentError(f"--warmup must be >= 0, got {args.warmup}")
    if args.repeats < 1:
        raise InvalidArgumentError(f"--repeats must be >= 1 (2 or more to claim a speed-up), got {args.repeats}")
    if not 0.0 < args.noise_margin < 10.0:
        raise InvalidArgumentError(f"--noise-margin must be a share in (0, 10), e.g. 0.15; got {args.noise_margin}")
    unknown = [m for m in args.methods if m not in METHOD_NAMES]
    if unknown:
        raise InvalidArgumentError(f"unknown method(s) {unknown}; choose from {','.join(METHOD_NAMES)}")
    if (args.swift_method or args.drafters is not None or args.draft_precision) and "swiftsd" not in args.methods:
        raise InvalidArgumentError("--method / --drafters / --draft-precision configure the 'swiftsd' entry: add "
                                   "swiftsd to --methods")
    if args.threads is not None and args.threads < 1:
        raise InvalidArgumentError(f"--threads must be >= 1, got {args.threads}")
    if args.time_budget is not None and not args.time_budget > 0:
        raise InvalidArgumentError(f"--time-budget is in minutes and must be > 0, got {args.time_budget}")
    return params


def _build(args: argparse.Namespace, model: Any, tok: Any, static: SkipSet | None) -> tuple[list, dict[str, str]]:
    options = _swift_options(args)
    methods = build_methods(args.methods, model, tok, static, args.pld_tokens, args.early_exit_layer, options,
                            quant_group=args.quant_group)
    unavailable = {m.name: why for m in methods if (why := m.unavailable())}
    if options and "swiftsd" in unavailable:
        raise InvalidArgumentError(f"--method / --drafters: {unavailable['swiftsd']}")
    for name, why in unavailable.items():
        print(f"swiftsd bench: {name}: n/a: {why}", file=sys.stderr)
    return [m for m in methods if m.name not in unavailable], unavailable


def _stem(args: argparse.Namespace, dtype: str, meta: dict[str, Any], device: Any, greedy: bool) -> str:
    dev_name = "cpu" if device.type == "cpu" else _slug(meta.get("gpu") or device.type)
    return args.name or "-".join(filter(None, [
        _slug(Path(args.model).stem if "/" in args.model else args.model), dtype, dev_name,
        None if greedy else f"t{args.temperature:g}"]))


def _measure(args: argparse.Namespace, methods: list, tok: Any, prompts: list, params: RunParams,
             jsonl: Path, slices: resume.RunFile, records: list) -> tuple[list, str | None]:
    """Warm up, then the stream after ``records`` (an earlier slice's); each finished prompt's
    records are appended to ``jsonl`` at once, and the run file then says it is done.

    Returns (records, why the run stopped early or None). Ctrl-C keeps the prompts
    already finished: an hour-long run is not lost to one interruption.
    """
    import torch

    run_path = resume.run_file_path(jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with jsonl.open("w") as f, torch.inference_mode():
        f.writelines(json.dumps(r) + "\n" for r in records)  # an earlier slice's, without a line cut short

        def keep(mine: list) -> None:
            records.extend(mine)
            f.writelines(json.dumps(r) + "\n" for r in mine)
            f.flush()
            os.fsync(f.fileno())
            states = {m.name: st for m in methods if (st := m.state_dict()) is not None}
            resume.record_prompt(slices, mine[0]["prompt_id"], states)
            resume.save(run_path, slices)

        warm_up(methods, tok, params, args.warmup)
        for m in methods:  # after the warm-up, which runs on throwaway state
            if m.name in slices.states:
                m.load_state_dict(slices.states[m.name])
        resume.save(run_path, slices)
        deadline = None if args.time_budget is None else time.monotonic() + 60.0 * args.time_budget
        try:
            run_stream(methods, tok, prompts, params, args.seed, progress=False if args.no_progress else None,
                       repeats=args.repeats, margin=args.noise_margin, deadline=deadline, on_prompt=keep,
                       skip=set(slices.done))
        except KeyboardInterrupt:
            print("\nswiftsd bench: interrupted: reporting the prompts that finished", file=sys.stderr)
            return records, "interrupted"
    done = len({r["prompt_id"] for r in records})
    return records, (None if done == len(prompts) else f"--time-budget {args.time_budget:g} min")


def _slices(args: argparse.Namespace, meta: dict[str, Any], jsonl: Path) -> tuple[resume.RunFile, list]:
    """The run file and the records of an earlier slice (``--resume``), or a new run's."""
    if not args.resume:
        return resume.new_run(args, meta), []
    run_file = resume.load_for_resume(resume.run_file_path(jsonl), args, meta)
    records = resume.kept_records(jsonl, run_file.done)
    print(f"swiftsd bench: resuming {jsonl.name}: {len(run_file.done)} prompts done in "
          f"{len(run_file.slices)} earlier slice(s)", file=sys.stderr)
    return run_file, records


def run(args: argparse.Namespace) -> int:
    if args.from_jsonl:
        return recompute(args.from_jsonl)
    import torch
    from transformers.utils import logging as hf_logging

    params = _check_args(args)
    prompts = interleave_categories(load_prompts(args.data, args.categories, args.n_per_category))
    check_skip_choice(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # generate() warns about flags per call; the table is what matters
    model, tok = load_model(args)
    static, _ = start_skip_set(args, model)  # --skip-set, else the store's set (an error if it has none)
    device = model.get_input_embeddings().weight.device
    methods, unavailable = _build(args, model, tok, static)
    if args.repeats == 1:
        print("swiftsd bench: WARNING: --repeats 1: one run per turn cannot tell a speed-up from load; "
              "the report will quote no speed-up as a result", file=sys.stderr)

    dtype = _dtype_short(model.dtype)
    meta = machine_info(dtype, str(device))  # before the run: the date and commit of what is measured
    load_before = _loadavg()
    stem = _stem(args, dtype, meta, device, params.greedy)
    jsonl = Path(args.out) / f"{stem}.jsonl"
    slices, earlier = _slices(args, meta, jsonl)
    resume.start_slice(slices, load_before)
    records, stopped = _measure(args, methods, tok, prompts, params, jsonl, slices, earlier)
    if not records:
        raise InvalidArgumentError("no prompt finished, so there is nothing to report; give a longer "
                                   "--time-budget or fewer --n-per-category")
    ran = list(dict.fromkeys(r["prompt_id"] for r in records))
    with torch.inference_mode():
        isolated = _isolated_costs(methods, records)
    meta.update(
        model=args.model, data=args.data or "built-in",
        categories=list(dict.fromkeys(p.category for p in prompts if p.id in ran)),
        prompts=len(ran), turns=len({(r["prompt_id"], r["turn"]) for r in records}),
        prompts_planned=len(prompts), stopped_early=stopped, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed, warmup=args.warmup,
        repeats=args.repeats, noise_margin=args.noise_margin,
        methods={m.name: m.describe() for m in methods}, unavailable=unavailable,
        static_skip_source="--skip-set" if args.skip_set else ("store" if static is not None else "decoder default"),
        draft_cost_isolated=isolated, command=" ".join(sys.argv),
        load_average_before=load_before, load_average_after=_loadavg(), slices=slices.slices,
    )
    rows = summarize(records, params.greedy)
    paths = write_report(Path(args.out), stem, records, rows, meta, params.greedy, unavailable)
    _print_summary(records, rows, unavailable, params.greedy, args.noise_margin)
    if stopped:
        print(f"swiftsd bench: stopped early ({stopped}): {len(ran)} of {len(prompts)} prompts ran", file=sys.stderr)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 130 if stopped == "interrupted" else 0


def _print_summary(records: list, rows: list, unavailable: dict[str, str], greedy: bool, margin: float) -> None:
    print(mismatch_text(records, greedy))
    print()
    for warn, line in headlines(rows, margin):
        print(line)
        if warn:
            print(f"swiftsd bench: {line}", file=sys.stderr)
    print()
    print(markdown_table([r for r in rows if r.category == OVERALL], unavailable))
    print()
    print(speedup_matrix(rows))
    table = drafter_table(records)
    if table:
        print(f"\n{table}")
    if greedy and mismatches(records):
        print(f"swiftsd bench: {mismatch_text(records, True)}", file=sys.stderr)
