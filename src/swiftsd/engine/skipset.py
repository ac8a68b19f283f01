"""Skip sets: which attention / MLP sublayers the draft pass leaves out.

A skip set is a frozen value object so it can be hashed, compared, stored in
JSON and passed around as an argument; nothing about it lives on the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import InvalidSkipSetError


def _as_sorted_tuple(xs: Iterable[int], what: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(x) for x in xs}))
    except (TypeError, ValueError) as exc:
        raise InvalidSkipSetError(f"skip set {what} must be a list of integer layer indices, got {xs!r}") from exc
    return out


@dataclass(frozen=True)
class SkipSet:
    """Decoder-layer indices whose attention / MLP sublayer the draft skips.

    A skipped sublayer adds nothing to the residual stream (``h = h + 0``).
    """

    attn: tuple[int, ...] = field(default_factory=tuple)
    mlp: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attn", _as_sorted_tuple(self.attn, "'attn'"))
        object.__setattr__(self, "mlp", _as_sorted_tuple(self.mlp, "'mlp'"))

    # -- construction -------------------------------------------------------
    @classmethod
    def uniform(cls, num_layers: int) -> "SkipSet":
        """The paper's starting point: every other layer (first and last kept)."""
        inner = [i for i in range(1, num_layers - 1) if i % 2 == 1]
        return cls(attn=inner, mlp=inner)

    @classmethod
    def from_flags(cls, flags: Iterable[int | bool], num_layers: int) -> "SkipSet":
        """From the optimiser's 2·(L−2) flag vector: attention flags for layers 1..L−2, then MLP flags."""
        f = [bool(x) for x in flags]
        n = num_layers - 2
        if len(f) != 2 * n:
            raise InvalidSkipSetError(f"expected {2 * n} flags for {num_layers} layers, got {len(f)}")
        return cls(attn=[i + 1 for i in range(n) if f[i]], mlp=[i + 1 for i in range(n) if f[n + i]])

    def to_flags(self, num_layers: int) -> list[int]:
        n = num_layers - 2
        a, m = set(self.attn), set(self.mlp)
        return [int(i + 1 in a) for i in range(n)] + [int(i + 1 in m) for i in range(n)]

    @classmethod
    def from_dict(cls, d: Any) -> "SkipSet":
        if isinstance(d, SkipSet):
            return d
        if not isinstance(d, dict) or not set(d) <= {"attn", "mlp"}:
            raise InvalidSkipSetError(
                f'a skip set is a JSON object {{"attn": [...], "mlp": [...]}} of layer indices, got {d!r}'
            )
        return cls(attn=d.get("attn", ()), mlp=d.get("mlp", ()))

    @classmethod
    def from_json(cls, text: str) -> "SkipSet":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSkipSetError(f"skip set is not valid JSON ({exc.msg}): {text!r}") from exc
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, list[int]]:
        return {"attn": list(self.attn), "mlp": list(self.mlp)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # -- queries ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.attn) + len(self.mlp)

    def is_empty(self) -> bool:
        return not self.attn and not self.mlp

    def validate(self, num_layers: int) -> "SkipSet":
        """Raise unless every index names a layer of a ``num_layers``-layer model."""
        bad = [i for i in (*self.attn, *self.mlp) if not 0 <= i < num_layers]
        if bad:
            raise InvalidSkipSetError(
                f"skip set names layer(s) {sorted(set(bad))} but the model has {num_layers} decoder layers "
                f"(valid indices 0..{num_layers - 1})"
            )
        return self

    def __str__(self) -> str:
        return f"SkipSet(attn={list(self.attn)}, mlp={list(self.mlp)})"
