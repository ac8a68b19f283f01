"""The trie layout builder, the paper's chain-with-siblings shape, the confidence-to-width map
and greedy acceptance over any trie."""

from __future__ import annotations

import random

import pytest
import torch

from swiftsd.engine.tree import build_tree, chain_with_siblings, widths_from_confidence
from swiftsd.engine.verify import greedy_verify


def _mask_from_pairs(n: int, pairs: set[tuple[int, int]]) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.bool)
    for i, j in pairs:
        m[i, j] = True
    return m


def test_chain_with_siblings_known_shape() -> None:
    # widths (3, 1, 2): root 0; depth 1: 1 (chain), 2, 3; depth 2: 4 (chain); depth 3: 5 (chain), 6.
    parents = chain_with_siblings((3, 1, 2))
    assert parents == (-1, 0, 0, 0, 1, 4, 4)
    t = build_tree(parents)
    assert t.size == 7
    assert t.depth.tolist() == [0, 1, 1, 1, 2, 3, 3]
    assert t.children[0] == (1, 2, 3) and t.children[1] == (4,) and t.children[4] == (5, 6)
    ancestors_or_self = {
        0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 3], 4: [0, 1, 4], 5: [0, 1, 4, 5], 6: [0, 1, 4, 6],
    }
    want = _mask_from_pairs(7, {(i, j) for i, js in ancestors_or_self.items() for j in js})
    assert torch.equal(t.mask, want)
    assert t.mask.dtype == torch.bool and t.depth.dtype == torch.long
    assert t.paths[5].tolist() == [0, 1, 4, 5] and t.paths[2].tolist() == [0, 2, -1, -1]
    assert t.path(6) == [1, 4, 6] and t.path(0) == []


def test_chain_only_is_causal() -> None:
    t = build_tree(chain_with_siblings((1, 1, 1, 1)))
    assert torch.equal(t.mask, torch.ones(5, 5, dtype=torch.bool).tril())
    assert t.depth.tolist() == [0, 1, 2, 3, 4]
    assert t.parent.tolist() == [-1, 0, 1, 2, 3]


def test_root_only() -> None:
    t = build_tree((-1,))
    assert t.size == 1 and t.max_depth == 0
    assert t.mask.tolist() == [[True]]
    assert t.children == ((),)


def _random_parents(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple([-1] + [rng.randrange(i) for i in range(1, n)])


@pytest.mark.parametrize("seed", range(12))
def test_random_tries_invariants(seed: int) -> None:
    """Any trie (1-64 nodes): every node attends exactly its ancestors and itself, depths add up,
    children lists invert the parent array, retrieval paths walk root to node."""
    rng = random.Random(seed)
    parents = _random_parents(rng, rng.randint(1, 64))
    t = build_tree(parents)
    assert t.size == len(parents)
    for i in range(t.size):
        anc, j = [], i
        while j >= 0:
            anc.append(j)
            j = parents[j]
        assert set(t.mask[i].nonzero().flatten().tolist()) == set(anc)
        assert t.depths[i] == len(anc) - 1 == int(t.depth[i])
        assert t.paths[i, : len(anc)].tolist() == anc[::-1]
        assert (t.paths[i, len(anc):] == -1).all()
        for c in t.children[i]:
            assert parents[c] == i
    assert sum(len(c) for c in t.children) == t.size - 1


def test_build_tree_is_memoised_and_validates() -> None:
    assert build_tree((-1, 0, 0, 1)) is build_tree((-1, 0, 0, 1))
    assert build_tree((-1, 0, 0, 1)) is not build_tree((-1, 0, 1, 1))
    with pytest.raises(ValueError):
        build_tree((0, 0))  # no root
    with pytest.raises(ValueError):
        build_tree((-1, 2, 0))  # a parent after its child
    with pytest.raises(ValueError):
        chain_with_siblings((2, 0))


def test_widths_from_confidence_paper_table() -> None:
    th, w = (0.95, 0.8, 0.5), (1, 3, 5, 10)
    assert widths_from_confidence([0.99, 0.9, 0.6, 0.1, 0.95, 0.8, 0.5], th, w, 10) == (1, 3, 5, 10, 3, 5, 10)
    assert widths_from_confidence([0.1, 0.6], th, w, 4) == (4, 4)  # capped at max_width


def test_greedy_verify_chain_accepted_fully() -> None:
    t = build_tree(chain_with_siblings((1, 1, 1)))
    tokens = [7, 11, 12, 13]
    argmax_after = [11, 12, 13, 99]
    accepted, bonus = greedy_verify(tokens, argmax_after, t)
    assert accepted == [1, 2, 3] and bonus == 99


def test_greedy_verify_sibling_then_its_children() -> None:
    """In a general trie a sibling has children too: the walk goes on under it."""
    parents = (-1, 0, 0, 0, 1, 2, 5)  # 2 is a sibling of 1 with a child 5, which has a child 6
    t = build_tree(parents)
    tokens = [7, 10, 20, 30, 11, 21, 22]
    argmax = [20, 0, 21, 0, 0, 22, 55]
    accepted, bonus = greedy_verify(tokens, argmax, t)
    assert accepted == [2, 5, 6] and bonus == 55


def test_greedy_verify_callable_scores_only_the_walk() -> None:
    t = build_tree(chain_with_siblings((3, 2)))  # 0 | 1 2 3 | 4 5
    tokens = [0, 5, 6, 7, 8, 9]
    argmax = [5, 9, 0, 0, 0, 4]
    seen = []

    def target(node: int) -> int:
        seen.append(node)
        return argmax[node]

    accepted, bonus = greedy_verify(tokens, target, t)
    assert accepted == [1, 5] and bonus == 4
    assert seen == [0, 1, 5]  # rejected branches were never scored


def test_greedy_verify_nothing_accepted_gives_root_argmax() -> None:
    t = build_tree(chain_with_siblings((3, 1)))
    accepted, bonus = greedy_verify([1, 2, 3, 4, 5], [42, 0, 0, 0, 0], t)
    assert accepted == [] and bonus == 42


def test_greedy_verify_root_only() -> None:
    accepted, bonus = greedy_verify([5], [8], build_tree((-1,)))
    assert accepted == [] and bonus == 8
