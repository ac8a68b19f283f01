"""The verification tree builder, the confidence-to-width map and greedy acceptance."""

from __future__ import annotations

import pytest
import torch

from swiftsd.engine.tree import build_tree, widths_from_confidence
from swiftsd.engine.verify import greedy_verify


def _mask_from_pairs(n: int, pairs: set[tuple[int, int]]) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.bool)
    for i, j in pairs:
        m[i, j] = True
    return m


def test_build_tree_known_shape() -> None:
    # widths (3, 1, 2): root 0; depth 1: 1 (chain), 2, 3; depth 2: 4 (chain); depth 3: 5 (chain), 6.
    t = build_tree((3, 1, 2))
    assert t.size == 7
    assert t.widths == (3, 1, 2)
    assert t.depth.tolist() == [0, 1, 1, 1, 2, 3, 3]
    assert t.parent.tolist() == [-1, 0, 0, 0, 1, 4, 4]
    assert t.chain.tolist() == [0, 1, 4, 5]
    assert t.candidates == ((1, 2, 3), (4,), (5, 6))
    ancestors_or_self = {
        0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 3], 4: [0, 1, 4], 5: [0, 1, 4, 5], 6: [0, 1, 4, 6],
    }
    want = _mask_from_pairs(7, {(i, j) for i, js in ancestors_or_self.items() for j in js})
    assert torch.equal(t.mask, want)
    assert t.mask.dtype == torch.bool and t.depth.dtype == torch.long


def test_build_tree_chain_only_is_causal() -> None:
    t = build_tree((1, 1, 1, 1))
    assert torch.equal(t.mask, torch.ones(5, 5, dtype=torch.bool).tril())
    assert t.depth.tolist() == [0, 1, 2, 3, 4]
    assert t.chain.tolist() == [0, 1, 2, 3, 4]
    assert t.parent.tolist() == [-1, 0, 1, 2, 3]


def test_build_tree_root_only() -> None:
    t = build_tree(())
    assert t.size == 1
    assert t.mask.tolist() == [[True]]
    assert t.candidates == ()
    assert t.chain.tolist() == [0]


@pytest.mark.parametrize("widths", [(2,), (5, 3, 1), (10, 10, 10, 4), (1, 7)])
def test_build_tree_invariants(widths: tuple[int, ...]) -> None:
    """Every node attends exactly its ancestors and itself; siblings share the chain parent."""
    t = build_tree(widths)
    assert t.size == 1 + sum(widths)
    for i in range(t.size):
        anc, j = set(), i
        while j >= 0:
            anc.add(j)
            j = int(t.parent[j])
        assert set(torch.nonzero(t.mask[i]).flatten().tolist()) == anc
        assert int(t.depth[i]) == len(anc) - 1
    for d, cands in enumerate(t.candidates, start=1):
        assert cands[0] == int(t.chain[d])
        assert {int(t.parent[c]) for c in cands} == {int(t.chain[d - 1])}


def test_build_tree_is_memoised_and_validates() -> None:
    assert build_tree((4, 2, 1)) is build_tree((4, 2, 1))
    assert build_tree((4, 2, 1)) is not build_tree((4, 2))
    with pytest.raises(ValueError, match="widths"):
        build_tree((2, 0))


def test_widths_from_confidence_paper_mapping() -> None:
    th, w = (0.95, 0.8, 0.5), (1, 3, 5, 10)
    assert widths_from_confidence([0.99, 0.9, 0.6, 0.3], th, w, 10) == (1, 3, 5, 10)
    # thresholds are strict lower bounds: p == 0.95 is in (0.8, 0.95]
    assert widths_from_confidence([0.95, 0.8, 0.5, 0.0, 1.0], th, w, 10) == (3, 5, 10, 10, 1)
    assert widths_from_confidence([0.3, 0.6, 0.99], th, w, 4) == (4, 4, 1)  # clamped to max_width
    assert widths_from_confidence([], th, w, 10) == ()
    assert widths_from_confidence([0.9, 0.1], (0.5,), (2, 7), 10) == (2, 7)


def test_greedy_verify_chain_accepted_fully() -> None:
    t = build_tree((1, 1, 1))
    tokens = [10, 11, 12, 13]
    argmax_after = [11, 12, 13, 42]  # the target agrees with every draft token
    accepted, bonus = greedy_verify(tokens, argmax_after, t)
    assert accepted == [1, 2, 3]
    assert bonus == 42


def test_greedy_verify_sibling_accepted_stops() -> None:
    t = build_tree((3, 2))  # nodes: 0 | 1 2 3 | 4 5 (children of 1)
    tokens = [0, 20, 21, 22, 30, 31]
    argmax = [22, 30, 7, 99, 5, 6]  # target wants 22 (sibling node 3) at depth 1
    accepted, bonus = greedy_verify(tokens, argmax, t)
    assert accepted == [3]
    assert bonus == 99  # the target's argmax after the sibling, not after the chain


def test_greedy_verify_chain_then_sibling() -> None:
    t = build_tree((3, 2))
    tokens = [0, 20, 21, 22, 30, 31]
    argmax = [20, 31, 0, 0, 0, 55]
    accepted, bonus = greedy_verify(tokens, argmax, t)
    assert accepted == [1, 5]
    assert bonus == 55


def test_greedy_verify_nothing_accepted_gives_root_argmax() -> None:
    t = build_tree((3, 1))
    tokens = [0, 20, 21, 22, 30]
    argmax = [77, 30, 1, 2, 3]
    accepted, bonus = greedy_verify(tokens, argmax, t)
    assert accepted == []
    assert bonus == 77


def test_greedy_verify_empty_tree() -> None:
    accepted, bonus = greedy_verify([5], [8], build_tree(()))
    assert accepted == [] and bonus == 8
