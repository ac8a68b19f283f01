"""The verification tree: a pure, memoised function of a trie's parent array.

Any token trie can be verified in one forward pass. Node 0 is the root (the
last committed token); ``parents[i] < i`` is node i's parent, so nodes come
in an order where every parent precedes its children (the order drafters
create them in). Everything the loop needs per shape is computed here once
and memoised: the attention mask (each node sees its ancestors and itself),
depths (positions are ``committed + depth``), children lists and the
retrieval indices (each node's path from the root).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class TreeLayout:
    """Index tensors for one trie shape (all on CPU; move once per step)."""

    parents: tuple[int, ...]  # [N] parent node of each node, -1 for the root
    mask: torch.Tensor  # [N, N] bool, True = node i may attend node j (its ancestors and itself)
    depth: torch.Tensor  # [N] long, 0 for the root
    parent: torch.Tensor  # [N] long, -1 for the root
    children: tuple[tuple[int, ...], ...]  # [N] child nodes of each node, in node order
    paths: torch.Tensor  # [N, D+1] long: node i's path root..i, padded with -1 (retrieval indices)
    depths: tuple[int, ...]  # [N] depth of each node, as ints for the loop's Python side

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def path(self, node: int) -> list[int]:
        """Node indices from the root's first child down to ``node`` (the root excluded)."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


@lru_cache(maxsize=4096)
def build_tree(parents: tuple[int, ...]) -> TreeLayout:
    """Mask, depths, children and retrieval indices for the trie ``parents`` (memoised by shape)."""
    if not parents or parents[0] != -1:
        raise ValueError(f"a trie's parent array starts with -1 (the root), got {parents[:4]}")
    n = len(parents)
    for i in range(1, n):
        if not 0 <= parents[i] < i:
            raise ValueError(f"node {i} has parent {parents[i]}: parents must precede their children")
    anc: list[list[int]] = [[0]]  # root..i, built from the parent's list: parents come first
    kids: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        anc.append(anc[parents[i]] + [i])
        kids[parents[i]].append(i)
    depth = [len(a) - 1 for a in anc]
    rows = [i for i, a in enumerate(anc) for _ in a]
    cols = [j for a in anc for j in a]
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[rows, cols] = True
    paths = torch.full((n, max(depth) + 1), -1, dtype=torch.long)
    paths[rows, [d for a in anc for d in range(len(a))]] = torch.tensor(cols, dtype=torch.long)
    return TreeLayout(
        parents=tuple(parents),
        mask=mask,
        depth=torch.tensor(depth, dtype=torch.long),
        parent=torch.tensor(parents, dtype=torch.long),
        children=tuple(tuple(k) for k in kids),
        paths=paths,
        depths=tuple(depth),
    )


@lru_cache(maxsize=1024)
def chain_with_siblings(widths: tuple[int, ...]) -> tuple[int, ...]:
    """SWIFT's reference tree as a parent array: a top-1 chain, with ``widths[d-1] - 1``
    siblings of the chain node at each depth d (children of the chain node above).

    Node order per depth: the chain node first, then its siblings, so the chain
    node at depth d is the first node of that depth.
    """
    if any(w < 1 for w in widths):
        raise ValueError(f"tree widths must be >= 1, got {widths}")
    parents = [-1]
    chain = 0
    for w in widths:
        first = len(parents)
        parents.extend([chain] * w)
        chain = first
    return tuple(parents)


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
