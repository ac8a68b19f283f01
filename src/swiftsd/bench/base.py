"""What every benchmarked method shares: run settings, one turn's output, and the method interface.

A method turns one prompt (token ids) into a :class:`TurnOutput`: the new token
ids, the wall time and a step log (full-model forwards, drafted and accepted
tokens per step, draft time). The step log is checked before it is recorded
(:func:`accounting_problems`), so an impossible figure (more accepted than
drafted, an acceptance above 100 %) is never printed as a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..config import SamplingParams
from ..hf.options import GenerateArgs


class AccountingError(RuntimeError):
    """The bench's own step accounting is inconsistent: a bug in swiftsd's bench, never a user error."""


@dataclass(frozen=True)
class RunParams:
    """Decoding settings shared by every method of one run: the project's
    :class:`~swiftsd.config.SamplingParams` plus the bench-only token budget."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        GenerateArgs(max_new_tokens=self.max_new_tokens).check(lambda name: "--" + name.replace("_", "-"))

    @property
    def greedy(self) -> bool:
        return self.sampling.greedy


@dataclass
class TurnOutput:
    """What one method did on one prompt. ``accepted_lengths``/``draft_lengths`` are per decoding step."""

    new_ids: list[int]
    wall_time: float
    target_forwards: int  # full-model forwards, the prefill included
    draft_forwards: int = 0  # draft-model forwards (one per drafted depth)
    draft_lengths: list[int] = field(default_factory=list)  # tokens drafted per step
    accepted_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per step (bonus excluded)
    time_draft: float | None = None  # None: not measurable for this method
    time_optimize: float = 0.0
    time_decode_forwards: float | None = None  # summed time of full-model forwards after the prefill
    time_prefill: float | None = None  # the prompt's forward, up to the first new token
    extra: dict[str, Any] = field(default_factory=dict)


def accounting_problems(out: TurnOutput) -> list[str]:
    """What is impossible in ``out``'s step log (empty: it is consistent).

    Checked per step, so no sum can hide a bad step: lengths agree, nothing is
    negative, no step accepts more than it drafted, and per drafter no more is
    accepted than proposed.
    """
    bad: list[str] = []
    d, a = out.draft_lengths, out.accepted_lengths
    if len(d) != len(a):
        bad.append(f"{len(d)} drafted-length entries but {len(a)} accepted-length entries")
    steps = [i for i, (x, y) in enumerate(zip(d, a)) if x < 0 or y < 0 or y > x]
    if steps:
        i = steps[0]
        bad.append(f"{len(steps)} step(s) with accepted > drafted or a negative count "
                   f"(first: step {i}, drafted {d[i]}, accepted {a[i]})")
    if out.target_forwards < 1:
        bad.append(f"{out.target_forwards} full-model forwards")
    for name, c in (out.extra.get("per_drafter") or {}).items():
        if not 0 <= c.get("accepted", 0) <= c.get("proposed", 0):
            bad.append(f"drafter {name!r}: accepted {c.get('accepted')} of {c.get('proposed')} proposed")
    return bad


def sync(device: torch.device) -> None:
    """Wait for the device, so a wall-clock reading covers the work it follows."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trim_at_eos(ids: Sequence[int], eos: set[int]) -> list[int]:
    """Cut after the first EOS (HF assisted decoding may append accepted tokens past it)."""
    out = []
    for t in ids:
        out.append(int(t))
        if t in eos:
            break
    return out


def eos_ids(model: Any) -> set[int]:
    from ..hf.eos import resolve_eos  # the one EOS resolver (decoder, server, CLI, bench)

    return resolve_eos(model)


class Method:
    """One decoding method. ``unavailable()`` names why it cannot run here (None: it can).

    Stateful methods (swiftsd learns across requests) expose their state through
    :meth:`state` / :meth:`copy_state` / :meth:`set_state`, so the runner can start
    every repeat of a turn from the same state and keep the state of the run it uses.
    """

    name = "method"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = model.get_input_embeddings().weight.device
        self.eos = eos_ids(model)

    def unavailable(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    def generate(self, input_ids: list[int], params: RunParams, seed: int) -> TurnOutput:
        raise NotImplementedError

    def warmup(self, input_ids: list[int], params: RunParams, seed: int) -> None:
        """An untimed run that leaves no state behind."""
        self.generate(input_ids, params, seed)

    def learned_state(self) -> Any:
        """The live learned state (None: the method keeps none)."""
        return None

    def copy_state(self, state: Any) -> Any:
        """An independent copy of ``state``."""
        return state

    def set_state(self, state: Any) -> None:
        """Continue from ``state`` (which the method then owns and changes)."""

    def state_dict(self) -> dict[str, Any] | None:
        """The learned state as plain JSON data, for a run continued later (``--resume``); None: none."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
