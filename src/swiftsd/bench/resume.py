"""A bench run in slices: ``--resume`` continues a run that a time budget, Ctrl-C or a crash cut short.

On a slow CPU one Spec-Bench run of a 0.5B model in bf16 takes hours, more than one
sitting. So after each finished prompt the bench writes ``<stem>.run.json`` beside
its JSONL: the arguments that define the run, the code it measures, the prompts
done, and each stateful method's learned state (``SwiftDecoder.state_dict()``). The
next slice refuses to mix in anything else (other arguments, other code, another
model), restores that state and continues the stream where the last slice ended,
as one long-lived server would, so the joined run is the run that was planned.
The file is replaced atomically: a kill at any moment leaves the old one or the new.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..errors import InvalidArgumentError
from ..persist.state_file import write_atomically
from .metrics import Record

RUN_FILE_FORMAT = "swiftsd-bench-run"
RUN_FILE_VERSION = 1

# What a slice must share with the run it continues (everything that changes a measured figure).
DEFINING_ARGS = ("model", "dtype", "device", "skip_set", "skip_set_store", "task", "data", "categories",
                 "n_per_category", "max_new_tokens", "temperature", "top_p", "top_k", "methods", "swift_method",
                 "drafters", "repeats", "noise_margin", "seed", "warmup", "pld_tokens", "early_exit_layer",
                 "threads")
# What the measured code is: a slice of other code would join two versions into one table.
CODE_KEYS = ("git_commit", "swiftsd", "torch", "transformers", "cpu", "gpu")


@dataclass
class RunFile:
    """The state of a run between slices (see the module docstring)."""

    args: dict[str, Any]
    code: dict[str, Any]
    done: list[str] = field(default_factory=list)
    states: dict[str, Any] = field(default_factory=dict)
    slices: list[dict[str, Any]] = field(default_factory=list)


def run_file_path(jsonl: Path) -> Path:
    return jsonl.with_name(jsonl.name[: -len(".jsonl")] + ".run.json")


def defining_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k, None) for k in DEFINING_ARGS}


def new_run(args: argparse.Namespace, meta: dict[str, Any]) -> RunFile:
    return RunFile(args=defining_args(args), code={k: meta.get(k) for k in CODE_KEYS})


def start_slice(run: RunFile, load: Any) -> None:
    now = _now()
    run.slices.append({"started": now, "ended": now, "prompts": 0, "load_average_before": load})


def record_prompt(run: RunFile, prompt_id: str, states: dict[str, Any]) -> None:
    """One prompt finished: it is done, and the methods' state is the state after it."""
    run.done.append(prompt_id)
    run.states = states
    run.slices[-1]["prompts"] += 1
    run.slices[-1]["ended"] = _now()


def save(path: Path, run: RunFile) -> None:
    write_atomically(path, json.dumps({"format": RUN_FILE_FORMAT, "version": RUN_FILE_VERSION, **asdict(run)}))


def load_for_resume(path: Path, args: argparse.Namespace, meta: dict[str, Any]) -> RunFile:
    """The run to continue; refused, with what to do, when this command would measure something else."""
    if not path.is_file():
        raise InvalidArgumentError(f"--resume: nothing to resume: {path} does not exist (it is written by a run "
                                   "with the same --out and --name); run without --resume to start one")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != RUN_FILE_FORMAT or raw.get("version") != RUN_FILE_VERSION:
            raise ValueError("not a swiftsd bench run file of this version")
        run = RunFile(**{k: raw[k] for k in ("args", "code", "done", "states", "slices")})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgumentError(f"--resume: {path} is not a readable run file ({exc}); "
                                   "run without --resume to start again") from None
    mine = defining_args(args)
    differ = [f"--{k.replace('_', '-')} {run.args.get(k)!r} -> {mine[k]!r}"
              for k in DEFINING_ARGS if _norm(run.args.get(k)) != _norm(mine[k])]
    if differ:
        raise InvalidArgumentError("--resume: this command differs from the run it would continue: "
                                   f"{'; '.join(differ)}. Give the same arguments, or a new --name")
    code = {k: meta.get(k) for k in CODE_KEYS}
    changed = [f"{k} {run.code.get(k)!r} -> {code[k]!r}" for k in CODE_KEYS if run.code.get(k) != code[k]]
    if changed:
        raise InvalidArgumentError("--resume: the run began on other code or another machine "
                                   f"({'; '.join(changed)}), and one table must measure one version: check out "
                                   "what it began with, or start a new run without --resume")
    return run


def kept_records(jsonl: Path, done: Sequence[str]) -> list[Record]:
    """The records of the prompts the run file lists as done (a line cut short by a kill is dropped)."""
    if not jsonl.is_file():
        raise InvalidArgumentError(f"--resume: {jsonl} is missing, though its run file lists {len(done)} "
                                   "prompts done; run without --resume to start again")
    keep, out = set(done), []
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("prompt_id") in keep:
            out.append(rec)
    missing = keep - {r["prompt_id"] for r in out}
    if missing:
        raise InvalidArgumentError(f"--resume: {jsonl} lacks the records of prompts {sorted(missing)} that its "
                                   "run file lists as done; run without --resume to start again")
    return out


def _norm(v: Any) -> Any:
    """JSON turns tuples into lists: compare what a round trip keeps."""
    return json.loads(json.dumps(v))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
