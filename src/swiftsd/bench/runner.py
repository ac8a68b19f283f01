"""The benchmark loop: every method on every prompt, interleaved, in one process."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable, Sequence

from .data import BUILTIN_PROMPTS, BenchPrompt, build_input
from .methods import GenParams, Method, TurnOutput
from .metrics import REFERENCE, Record, first_difference


def rotated(methods: Sequence[Method], i: int) -> list[Method]:
    """Method order for prompt ``i``: rotated by one each prompt, so no method always runs first."""
    k = i % len(methods) if methods else 0
    return list(methods[k:]) + list(methods[:k])


def turn_seed(seed: int, prompt_index: int, turn: int) -> int:
    """Same seed for every method on the same turn (sampling runs are then paired)."""
    return seed * 1_000_003 + prompt_index * 101 + turn


def make_record(method: str, prompt: BenchPrompt, turn: int, prompt_tokens: int, out: TurnOutput, seed: int
                ) -> Record:
    return {
        "method": method, "prompt_id": prompt.id, "category": prompt.category, "turn": turn,
        "prompt_tokens": prompt_tokens, "new_tokens": len(out.new_ids), "wall_time": out.wall_time,
        "target_forwards": out.target_forwards, "draft_forwards": out.draft_forwards,
        "draft_lengths": out.draft_lengths, "accepted_lengths": out.accepted_lengths,
        "time_draft": out.time_draft, "time_optimize": out.time_optimize,
        "time_decode_forwards": out.time_decode_forwards, "seed": seed, "new_ids": out.new_ids, **out.extra,
    }


def warm_up(methods: Sequence[Method], tokenizer: Any, params: GenParams, n: int) -> None:
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


def run_stream(methods: Sequence[Method], tokenizer: Any, prompts: Sequence[BenchPrompt], params: GenParams,
               seed: int = 0, progress: bool = True, say: Callable[[str], None] | None = None) -> list[Record]:
    """Every method on every turn of every prompt; returns one record per (method, prompt, turn).

    Greedy outputs are compared with plain decoding's as soon as a prompt is done;
    a mismatch is announced at once through ``say`` (and stays in the records).
    """
    from tqdm import tqdm

    total = sum(len(p.turns) for p in prompts) * len(methods)
    bar = tqdm(total=total, unit="gen", desc="bench", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    say = say or (lambda msg: tqdm.write(msg, file=sys.stderr))
    records: list[Record] = []
    try:
        for i, prompt in enumerate(prompts):
            mine: list[Record] = []
            for m in rotated(methods, i):
                answers: list[str] = []
                for t in range(len(prompt.turns)):
                    ids = build_input(tokenizer, prompt, t, answers)
                    s = turn_seed(seed, i, t)
                    out = m.generate(ids, params, s)
                    answers.append(tokenizer.decode(out.new_ids, skip_special_tokens=True))
                    mine.append(make_record(m.name, prompt, t, len(ids), out, s))
                    bar.set_postfix_str(f"{prompt.category}:{prompt.id} {m.name}", refresh=False)
                    bar.update(1)
            if params.greedy:
                _announce_mismatches(mine, say)
            records += mine
    finally:
        bar.close()
    return records


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
