"""Per-request statistics, recorded by the decode loop, and the one line that says them.

One vocabulary everywhere (CLI, ``summary()``, /metrics, docs; the README's glossary):
*acceptance* is accepted draft tokens over draft positions, a position being one depth of
the deepest draft of a step (Spec-Bench's measure); *tokens/step* counts every token a
verification committed, bonus included; per drafter, counts are of *tree nodes* (a node two
drafters proposed counts for both). Time spent searching skip sets is *optimize* time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


@dataclass
class GenerationStats:
    """What one ``generate`` call did. Times are seconds of wall clock."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0  # decoding steps after the prefill (one full-model forward each)
    plain_steps: int = 0  # steps decoded without a draft (no skip set / fallback)
    draft_lengths: list[int] = field(default_factory=list)  # chain depth drafted per step
    accepted_lengths: list[int] = field(default_factory=list)  # draft tokens accepted per step
    tree_sizes: list[int] = field(default_factory=list)  # nodes verified per step (root included)
    time_prefill: float = 0.0
    time_draft: float = 0.0
    time_verify: float = 0.0
    time_optimize: float = 0.0
    time_other: float = 0.0
    wall_time: float = 0.0
    skip_set: dict[str, list[int]] | None = None
    optimizer: dict[str, Any] | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)  # per-step records (optimiser issue)
    per_drafter: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> proposed / accepted nodes
    draft_forwards: list[int] = field(default_factory=list)  # layer-skip draft forwards per step (0: not run)
    layerskip_accepted: list[int] = field(default_factory=list)  # accepted nodes the layer-skip draft proposed
    # per draft precision ("full", "int8", "int4"): the steps the model draft ran, its forwards, accepted nodes
    per_precision: dict[str, dict[str, int]] = field(default_factory=dict)

    def record_tree(self, sources: Sequence[Sequence[str]], size: int, depth: int, accepted: list[int]) -> None:
        """One verification: its tree's size and depth, the path accepted, and per drafter the
        nodes proposed and accepted (a node two drafters proposed counts for both)."""
        self.steps += 1
        self.plain_steps += int(size == 1)
        self.draft_lengths.append(depth)
        self.accepted_lengths.append(len(accepted))
        self.tree_sizes.append(size)
        hit = set(accepted)
        for i in range(1, size):
            for src in sources[i]:
                d = self.per_drafter.setdefault(src, {"proposed": 0, "accepted": 0})
                d["proposed"] += 1
                d["accepted"] += int(i in hit)

    def record_model_draft(self, precision: str | None, forwards: int, accepted: int) -> None:
        """One step's model draft: at ``precision`` (None: it did not run), its forwards and accepted nodes."""
        self.draft_forwards.append(forwards)
        self.layerskip_accepted.append(accepted)
        if precision is not None and forwards:
            d = self.per_precision.setdefault(precision, {"steps": 0, "forwards": 0, "accepted": 0})
            d["steps"], d["forwards"], d["accepted"] = d["steps"] + 1, d["forwards"] + forwards, d["accepted"] + accepted

    @property
    def draft_tokens(self) -> int:
        """Draft positions: the depth of each step's deepest draft, summed."""
        return sum(self.draft_lengths)

    @property
    def accepted_tokens(self) -> int:
        return sum(self.accepted_lengths)

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens committed per decoding step, bonus included (Spec-Bench's tau)."""
        return (self.new_tokens - 1) / self.steps if self.steps else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Draft tokens accepted per drafted step (bonus excluded)."""
        drafted = [a for a, d in zip(self.accepted_lengths, self.draft_lengths) if d > 0]
        return sum(drafted) / len(drafted) if drafted else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Acceptance: accepted draft tokens / draft positions (``draft_tokens``)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0

    def to_dict(self, with_lists: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_lists:
            for k in ("draft_lengths", "accepted_lengths", "tree_sizes", "trace", "draft_forwards",
                      "layerskip_accepted"):
                d.pop(k)
        d.update(
            draft_tokens=self.draft_tokens,
            accepted_tokens=self.accepted_tokens,
            mean_accepted_tokens=self.mean_accepted_tokens,
            mean_accepted_length=self.mean_accepted_length,
            acceptance_rate=self.acceptance_rate,
            tokens_per_s=self.tokens_per_s,
        )
        return d

    def summary(self) -> str:
        """The request in one line (what ``swiftsd generate`` prints): speed, steps, acceptance, time per phase."""
        drafted, accepted = self.draft_tokens, self.accepted_tokens
        if drafted:
            acceptance = f"acceptance {accepted}/{drafted} draft positions ({accepted / drafted:.0%})"
            parts = [f"{name} {d.get('accepted', 0)}/{d.get('proposed', 0)}" for name, d in self.per_drafter.items()
                     if d.get("proposed")]
            if parts:
                acceptance += f" (tree nodes accepted/proposed by drafter: {', '.join(parts)})"
            if self.per_precision:  # the layer-skip draft's weights, for the steps it ran
                acceptance += "; layerskip weights: " + ", ".join(
                    f"{p} {d['steps']} {'step' if d['steps'] == 1 else 'steps'}, {d['accepted']} accepted"
                    for p, d in self.per_precision.items())
        else:
            acceptance = "acceptance: nothing drafted"
        return (f"{_plural(self.new_tokens, 'token')} in {self.wall_time:.2f}s ({self.tokens_per_s:.1f} tok/s), "
                f"{_plural(self.steps, 'step')} ({self.mean_accepted_tokens:.2f} tokens/step), {acceptance}; "
                f"time prefill {self.time_prefill:.2f}s draft {self.time_draft:.2f}s verify {self.time_verify:.2f}s "
                f"optimize {self.time_optimize:.2f}s other {self.time_other:.2f}s")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
