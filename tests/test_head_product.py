"""The LM head in verification: the transposed product, its measured choice, and scoring a chain of
nodes in one product, all without changing a single greedy token."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lossless_helpers import _first_diff, _ids, cached_plain_generate
from swiftsd import SkipSet, SwiftDecoder
from swiftsd.engine.cost import CostModel
from swiftsd.engine.timing import faster_head, measure_head
from swiftsd.engine.models import get_adapter, head_product
from swiftsd.engine.tree import build_tree
from swiftsd.drafters import DraftTrie
from tiny import ARCHS, tiny_model


@pytest.mark.parametrize("bias", [False, True])
def test_transposed_product_is_the_same_product(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 48, generator=gen)
    b = torch.randn(300, generator=gen) if bias else None
    for rows in (1, 2, 3, 8, 17):
        h = torch.randn(rows, 48, generator=gen)
        want = torch.nn.functional.linear(h, w, b)
        got = head_product(h, w, b, transposed=True)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_the_transposed_product_is_chosen_only_where_it_was_faster() -> None:
    linear = {1: 1.0, 2: 2.4, 4: 3.4, 8: 3.8}
    assert faster_head({False: linear, True: {1: 1.0, 2: 1.4, 4: 1.3, 8: 2.2}})  # fp32 on an AVX2 CPU
    assert not faster_head({False: linear, True: {1: 1.0, 2: 2.4, 4: 3.3, 8: 3.7}})  # within the margin
    assert not faster_head({False: {1: 1.0}, True: {1: 0.5}})  # one row says nothing about a product


def test_measure_head_times_both_products_for_every_row_count() -> None:
    ad = get_adapter(tiny_model("llama", seed=0))
    timed = measure_head(ad, rows=(1, 2, 4), rounds=1)
    assert set(timed) == {False, True} and all(set(t) == {1, 2, 4} for t in timed.values())
    assert all(v > 0 for t in timed.values() for v in t.values())


def _costs(**over) -> CostModel:
    base = CostModel(full_step=0.05, attn=0.0005, mlp=0.0008, lm_head=0.01, fixed=0.002, draft_extra=0.0,
                     verify_sizes=(1, 2, 4), verify_times=(0.05, 0.06, 0.07), num_layers=6)
    return replace(base, **over)


def test_head_cost_interpolates_and_round_trips() -> None:
    costs = _costs(head_rows=(1, 2, 4, 8), head_times=(0.01, 0.012, 0.013, 0.02), head_transposed=True)
    assert costs.head(1) == 0.01 and costs.head(3) == pytest.approx(0.0125) and costs.head(16) == pytest.approx(0.034)
    assert CostModel.from_dict(costs.to_dict()) == costs
    legacy = {k: v for k, v in _costs().to_dict().items() if not k.startswith("head_")}
    assert CostModel.from_dict(legacy).head(3) == pytest.approx(0.03)  # unmeasured: one product per row


class _Run:
    processor = None
    tokens: list[int] = []


class _CountingAdapter:
    """Logits are a fixed linear map of the hidden rows; counts the products asked for."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w, self.calls = w, []

    def logits(self, h: torch.Tensor, head=None, transposed: bool = False) -> torch.Tensor:
        self.calls.append((h.shape[0], transposed))
        return head_product(h, self.w, None, transposed).float()


def _chain_scores(probs: list[float], costs: CostModel):
    from swiftsd.core.run import TargetScores

    trie = DraftTrie.rooted(0)
    parent = 0
    for i, p in enumerate(probs):
        parent = trie.add(parent, i + 1, p, "lookup")
    trie.add(0, 50, 0.01, "lookup")  # an unlikely sibling of the chain's first node
    layout = build_tree(tuple(trie.parents))
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(len(trie), 16, generator=gen)
    ad = _CountingAdapter(torch.randn(64, 16, generator=gen))
    return TargetScores(ad, _Run(), trie, layout, hidden, costs), ad, hidden


def test_a_likely_chain_is_scored_in_one_product_and_scores_the_same() -> None:
    flat = _costs(head_rows=(1, 2, 4, 8), head_times=(0.010, 0.011, 0.012, 0.016), head_transposed=True)
    scores, ad, hidden = _chain_scores([0.9, 0.9, 0.9, 0.9], flat)
    assert scores.rows_from(0) == [0, 1, 2, 3, 4]  # the root and the whole likely chain, not the sibling
    for node in (0, 1, 2, 3, 4):
        torch.testing.assert_close(scores.logits(node), torch.nn.functional.linear(hidden[node], ad.w),
                                   atol=1e-5, rtol=1e-5)
    assert ad.calls == [(5, True)]  # one product for the five nodes the walk visited

    unlikely, ad2, _ = _chain_scores([0.05, 0.05, 0.05, 0.05], flat)
    assert unlikely.rows_from(0) == [0]  # a chain the walk will not reach is not worth a wider product
    steep = _costs(head_rows=(1, 2, 4, 8), head_times=(0.010, 0.024, 0.034, 0.038))  # F.linear on that CPU
    assert _chain_scores([0.9, 0.9, 0.9, 0.9], steep)[0].rows_from(0) == [0, 1, 2, 3, 4]
    assert _chain_scores([0.5, 0.5, 0.5, 0.5], steep)[0].rows_from(0) == [0]  # 2 rows cost 2.4: not at 0.5
    assert _chain_scores([0.9], _costs())[0].rows_from(0) == [0]  # no head timings: one row at a time


def test_rows_are_taken_best_first_over_the_whole_tree_siblings_included() -> None:
    """Two likely branches: the walk may take either, so both are scored in the first product."""
    from swiftsd.core.run import TargetScores

    flat = _costs(head_rows=(1, 2, 4, 8), head_times=(0.010, 0.010, 0.010, 0.012), head_transposed=True)
    trie = DraftTrie.rooted(0)
    a = trie.add(0, 1, 0.5, "lookup")
    b = trie.add(0, 2, 0.4, "lookup")
    a2 = trie.add(a, 3, 0.9, "lookup")
    b2 = trie.add(b, 4, 0.9, "lookup")
    rare = trie.add(0, 5, 0.001, "lookup")
    layout = build_tree(tuple(trie.parents))
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(len(trie), 16, generator=gen)
    ad = _CountingAdapter(torch.randn(64, 16, generator=gen))
    scores = TargetScores(ad, _Run(), trie, layout, hidden, flat)
    rows = scores.rows_from(0)
    assert rows == [0, a, a2, b, b2]  # by reach: 0.5, 0.45, 0.4, 0.36; the 0.001 sibling costs more than it saves
    assert rare not in rows
    for node in (0, b, b2):  # the walk takes the second branch: still one product
        torch.testing.assert_close(scores.logits(node), torch.nn.functional.linear(hidden[node], ad.w),
                                   atol=1e-5, rtol=1e-5)
    assert ad.calls == [(5, True)]
    torch.testing.assert_close(scores.logits(rare), torch.nn.functional.linear(hidden[rare], ad.w),
                               atol=1e-5, rtol=1e-5)
    assert ad.calls == [(5, True), (1, True)]  # an unscored node gets its own product, one row

    steep = _costs(head_rows=(1, 2, 4, 8), head_times=(0.010, 0.024, 0.034, 0.038))
    assert TargetScores(ad, _Run(), trie, layout, hidden, steep).rows_from(0) == [0]  # 2 rows cost 2.4 at reach 0.5


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_output_is_unchanged_with_chains_scored_by_the_transposed_product(arch: str) -> None:
    """Repeating prompts, so lookup chains are accepted and scored several rows per product."""
    model = tiny_model(arch, seed=1)
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[2], mlp=[3]), cost_cache=False)
    dec.costs = replace(dec.costs, head_rows=(1, 2, 4, 8, 16), head_times=(1e-3, 1.05e-3, 1.1e-3, 1.2e-3, 1.4e-3),
                         head_transposed=True)  # a device where wide products are nearly free
    calls: list[int] = []
    real = dec.adapter.logits

    def spy(h, head=None, transposed=False):
        if head is None:
            calls.append(h.shape[0])
        return real(h, head, transposed)

    dec.adapter.logits = spy  # an instance attribute of our adapter, not of the model
    for k, ids in enumerate([_ids(12, seed=3).repeat(1, 3), _ids(30, seed=4), _ids(9, seed=5).repeat(1, 4)]):
        want = cached_plain_generate(model, ids, 40)
        got = dec.generate(ids, max_new_tokens=40).sequences
        assert torch.equal(got, want), f"{arch} prompt {k}: diverged at {_first_diff(got, want)}"
    assert max(calls) >= 3, f"{arch}: no chain was scored in one product: {sorted(set(calls))}"
