"""The verification tree: a pure, memoised function of per-depth widths.

Layout (node 0 is the root, i.e. the last committed token)::

    depth:    0      1            2            ...
    nodes:  [root, c1, s1_1.., c2, s2_1.., ...]

``c_d`` is the draft's top-1 token at depth d (the chain); ``s_d_j`` are its
siblings (the draft's next candidates at the same depth), children of
``c_{d-1}``. Only the chain grows deeper, as in SWIFT's reference tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class TreeLayout:
    """Index tensors for one tree shape (all on CPU; move once per step)."""

    widths: tuple[int, ...]  # candidates per depth, chain node included
    mask: torch.Tensor  # [N, N] bool, True = node i may attend node j (its ancestors and itself)
    depth: torch.Tensor  # [N] long, 0 for the root
    parent: torch.Tensor  # [N] long, -1 for the root
    chain: torch.Tensor  # [D+1] long, node index of the chain node at each depth (root first)
    candidates: tuple[tuple[int, ...], ...]  # per depth d=1..D: node indices, chain node first

    @property
    def size(self) -> int:
        return int(self.depth.numel())


@lru_cache(maxsize=4096)
def build_tree(widths: tuple[int, ...]) -> TreeLayout:
    """Mask, depths, parents and candidate indices for a chain-with-siblings tree."""
    if any(w < 1 for w in widths):
        raise ValueError(f"tree widths must be >= 1, got {widths}")
    parent = [-1]
    depth = [0]
    chain = [0]
    candidates: list[tuple[int, ...]] = []
    for d, w in enumerate(widths, start=1):
        first = len(parent)
        for _ in range(w):
            parent.append(chain[-1])
            depth.append(d)
        candidates.append(tuple(range(first, first + w)))
        chain.append(first)
    n = len(parent)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parent[j]
    return TreeLayout(
        widths=tuple(widths),
        mask=mask,
        depth=torch.tensor(depth, dtype=torch.long),
        parent=torch.tensor(parent, dtype=torch.long),
        chain=torch.tensor(chain, dtype=torch.long),
        candidates=tuple(candidates),
    )


def widths_from_confidence(
    top1_probs: list[float], thresholds: tuple[float, ...], widths: tuple[int, ...], max_width: int
) -> tuple[int, ...]:
    """Per-depth sibling count from the draft's top-1 probability (paper §4.2).

    ``thresholds`` are descending lower bounds: a depth with p > thresholds[i]
    gets widths[i]; below every threshold it gets widths[-1].
    """
    out = []
    for p in top1_probs:
        k = widths[-1]
        for t, w in zip(thresholds, widths):
            if p > t:
                k = w
                break
        out.append(max(1, min(k, max_width)))
    return tuple(out)
