"""The benchmark loop: every method on every turn, repeated and interleaved, in one process.

Load on a shared machine slows whatever happens to run at that moment. So each
(method, turn) runs ``repeats`` times in rounds (every method once per round,
the order rotated each round), every repeat of a stateful method starts from
the same learned state, and the faster repeat is kept (its output and, for
swiftsd, the state it ended in). The record keeps every repeat's time, their
spread and the load average around the turn, so noise shows in the report.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Collection, Sequence

from .base import Method, RunParams, TurnOutput, accounting_problems
from .choices import NOISE_MARGIN
from .data import BUILTIN_PROMPTS, BenchPrompt, build_input
from .metrics import REFERENCE, Record, first_difference


def rotated(methods: Sequence[Method], i: int) -> list[Method]:
    """Method order for round ``i``: rotated by one each round, so no method always runs first."""
    k = i % len(methods) if methods else 0
    return list(methods[k:]) + list(methods[:k])


def turn_seed(seed: int, prompt_index: int, turn: int) -> int:
    """Same seed for every method and repeat of the same turn (sampling runs are then paired)."""
    return seed * 1_000_003 + prompt_index * 101 + turn


def interleave_categories(prompts: Sequence[BenchPrompt]) -> list[BenchPrompt]:
    """Round-robin over categories (first of each, then second of each, ...).

    A run cut short by a time budget or Ctrl-C then still covers every category
    about evenly, and the stream mixes tasks as a server's traffic does.
    """
    by_cat: dict[str, list[BenchPrompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    out: list[BenchPrompt] = []
    for k in range(max((len(v) for v in by_cat.values()), default=0)):
        out += [v[k] for v in by_cat.values() if k < len(v)]
    return out


def out_of_time(deadline: float | None, started: float, done: int, now: float) -> bool:
    """True when the next prompt, taking the mean time of those done, would end past ``deadline``."""
    if deadline is None:
        return False
    mean = (now - started) / done if done else 0.0
    return now + mean > deadline


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def make_record(method: str, prompt: BenchPrompt, turn: int, prompt_tokens: int, out: TurnOutput, seed: int
                ) -> Record:
    """One JSONL row. An impossible step log is kept but marked ``invalid`` (its figures are not reported)."""
    extra = dict(out.extra)
    problems = list(extra.pop("accounting_problems", [])) + accounting_problems(out)
    rec: Record = {
        "method": method, "prompt_id": prompt.id, "category": prompt.category, "turn": turn,
        "prompt_tokens": prompt_tokens, "new_tokens": len(out.new_ids), "wall_time": out.wall_time,
        "target_forwards": out.target_forwards, "draft_forwards": out.draft_forwards,
        "draft_lengths": out.draft_lengths, "accepted_lengths": out.accepted_lengths,
        "time_draft": out.time_draft, "time_optimize": out.time_optimize,
        "time_decode_forwards": out.time_decode_forwards, "time_prefill": out.time_prefill, "seed": seed,
        "new_ids": out.new_ids, **extra,
    }
    if problems:
        rec["invalid"] = problems
    return rec


def repeat_fields(runs: Sequence[TurnOutput], margin: float, load: tuple[float | None, float | None]
                  ) -> tuple[int, dict[str, Any]]:
    """(index of the fastest run, the fields that describe all repeats of one (method, turn)).

    Fastest by tokens per second, not by wall time: in bf16 a repeat can end on another text
    (a near-tie flips), and the shorter of two texts is not the faster run; with equal lengths
    the two orders agree."""
    walls = [r.wall_time for r in runs]
    rates = [len(r.new_ids) / r.wall_time if r.wall_time > 0 else 0.0 for r in runs]
    best = max(range(len(runs)), key=lambda i: (rates[i], -walls[i]))
    slowest = min(rates)
    spread = rates[best] / slowest - 1.0 if slowest > 0 else 0.0
    return best, {
        "repeats": len(runs), "repeat_wall_times": walls, "repeat_new_tokens": [len(r.new_ids) for r in runs],
        "repeat_chosen": best, "repeat_spread": spread, "unstable": len(runs) > 1 and spread > margin,
        "repeat_outputs_identical": all(r.new_ids == runs[0].new_ids for r in runs),
        "load_average": list(load),
    }


def warm_up(methods: Sequence[Method], tokenizer: Any, params: RunParams, n: int) -> None:
    """Run each method on ``n`` built-in prompts, untimed (kernels, allocator, caches).

    swiftsd methods warm up on a throwaway decoder so the measured stream starts
    with a fresh optimiser, as a new deployment would. At most 32 new tokens: enough
    to warm every code path, cheap on a slow machine.
    """
    params = replace(params, max_new_tokens=min(32, params.max_new_tokens))
    for k in range(n):
        prompt = BUILTIN_PROMPTS[k % len(BUILTIN_PROMPTS)]
        ids = build_input(tokenizer, prompt, 0, [])
        for m in methods:
            m.warmup(ids, params, seed=k)


def _run_turn(methods: Sequence[Method], inputs: dict[str, list[int]], params: RunParams, seed: int,
              repeats: int, first_round: int, tick: Callable[[Method, int], None]) -> dict[str, list[TurnOutput]]:
    """Every method ``repeats`` times on one turn, in rounds; each method ends in its fastest run's state."""
    base = {m.name: m.learned_state() for m in methods}
    runs: dict[str, list[TurnOutput]] = {m.name: [] for m in methods}
    ends: dict[str, list[Any]] = {m.name: [] for m in methods}
    for r in range(repeats):
        for m in rotated(methods, first_round + r):
            start = base[m.name] if r == repeats - 1 else m.copy_state(base[m.name])
            m.set_state(start)
            runs[m.name].append(m.generate(inputs[m.name], params, seed))
            ends[m.name].append(m.learned_state())
            tick(m, r)
    for m in methods:
        walls = [o.wall_time for o in runs[m.name]]
        m.set_state(ends[m.name][walls.index(min(walls))])
    return runs


def run_stream(methods: Sequence[Method], tokenizer: Any, prompts: Sequence[BenchPrompt], params: RunParams,
               seed: int = 0, progress: bool | None = None, say: Callable[[str], None] | None = None,
               repeats: int = 2, margin: float = NOISE_MARGIN, deadline: float | None = None,
               on_prompt: Callable[[list[Record]], None] | None = None,
               clock: Callable[[], float] = time.monotonic, skip: Collection[str] = ()) -> list[Record]:
    """Every method on every turn of every prompt; one record per (method, prompt, turn), from its fastest repeat.

    ``progress``: None shows a bar on a terminal only, False never. Greedy outputs
    are compared with plain decoding's as soon as a prompt is done; a mismatch or
    an impossible step log is announced at once through ``say``. ``on_prompt``
    gets each prompt's records when they are final (so a killed run keeps them).
    ``deadline`` (on ``clock``): no prompt starts that would, at the mean pace so
    far, end after it; the records then cover the prompts that ran. ``skip``: ids of
    prompts an earlier slice ran (``--resume``); the others keep their place, and seeds.
    """
    from tqdm import tqdm

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in skip]
    total = sum(len(p.turns) for _, p in todo) * len(methods) * repeats
    bar = tqdm(total=total, unit="run", desc="bench", file=sys.stderr, dynamic_ncols=True, leave=False,
               disable=None if progress is None else not progress)
    say = say or (lambda msg: tqdm.write(msg, file=sys.stderr))
    records: list[Record] = []
    rounds = 0
    started = clock()
    try:
        for ran, (i, prompt) in enumerate(todo):
            if out_of_time(deadline, started, ran, clock()):
                say(f"swiftsd bench: time budget reached: stopping after {ran} of {len(todo)} prompts")
                break
            answers: dict[str, list[str]] = {m.name: [] for m in methods}
            mine: list[Record] = []
            for t in range(len(prompt.turns)):
                inputs = {m.name: build_input(tokenizer, prompt, t, answers[m.name]) for m in methods}
                s = turn_seed(seed, i, t)

                def tick(m: Method, r: int) -> None:
                    bar.set_postfix_str(f"{prompt.category}:{prompt.id}#{t} {m.name} run {r + 1}/{repeats}",
                                        refresh=False)
                    bar.update(1)

                before = load_average()
                runs = _run_turn(methods, inputs, params, s, repeats, rounds, tick)
                rounds += repeats
                load = (before, load_average())
                for m in methods:
                    rec, text = _turn_record(m.name, runs[m.name], prompt, t, len(inputs[m.name]), s, margin, load,
                                             tokenizer, say)
                    answers[m.name].append(text)
                    mine.append(rec)
            if params.greedy:
                _announce_mismatches(mine, say)
            records += mine
            if on_prompt is not None:
                on_prompt(mine)
    finally:
        bar.close()
    return records


def _turn_record(method: str, runs: Sequence[TurnOutput], prompt: BenchPrompt, turn: int, prompt_tokens: int,
                 seed: int, margin: float, load: tuple[float | None, float | None], tokenizer: Any,
                 say: Callable[[str], None]) -> tuple[Record, str]:
    """The record of one (method, turn) from its fastest repeat, and that repeat's text (the next turn's history)."""
    best, fields = repeat_fields(runs, margin, load)
    out = runs[best]
    rec = make_record(method, prompt, turn, prompt_tokens, out, seed)
    rec.update(fields)
    if "invalid" in rec:
        say(f"BENCH ACCOUNTING: {method} on prompt {prompt.id} turn {turn}: "
            f"{'; '.join(rec['invalid'])} (its acceptance is not reported)")
    return rec, tokenizer.decode(out.new_ids, skip_special_tokens=True)


def _announce_mismatches(records: Sequence[Record], say: Callable[[str], None]) -> None:
    ref = {r["turn"]: r["new_ids"] for r in records if r["method"] == REFERENCE}
    for r in records:
        if r["method"] == REFERENCE or r["turn"] not in ref:
            continue
        pos = first_difference(r["new_ids"], ref[r["turn"]])
        r["identical"] = pos is None
        if pos is not None:
            say(f"GREEDY MISMATCH: {r['method']} differs from plain on prompt {r['prompt_id']} turn {r['turn']} "
                f"({r['category']}) from token {pos}")
