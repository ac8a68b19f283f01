"""Random tries straight through the verifier and the KV compaction, on tiny fp32 models.

Each case plants the true greedy continuation (from ``model.generate``) as one
random path of a random trie (1-64 nodes), fills every other node with random
tokens or decoys (the true token of its depth under a wrong parent), verifies
the whole trie in one adapter forward, and checks that greedy acceptance finds
exactly the longest true prefix the trie holds. Then ``cache.keep`` compacts the
accepted path, whatever its shape, and plain decoding from the compacted cache
must give the stock model's own logits: a wrong slot kept, or a rejected
branch's KV left behind, would show there.
"""

from __future__ import annotations

import random

import pytest
import torch

from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.models import get_adapter
from swiftsd.engine.tree import build_tree
from swiftsd.engine.verify import greedy_verify
from tiny import COMMON, tiny_model

ATOL = 1e-5  # as in test_adapters: the adapter runs the very same modules
VOCAB = COMMON["vocab_size"]
AFTER = 4  # plain steps decoded from the compacted cache
FAMILIES = ["llama", "qwen3", "gemma2", "phi3"]  # gemma2: sliding window 24, crossed by every case
SEEDS = range(6)


@pytest.fixture(scope="module")
def models() -> dict:
    return {arch: tiny_model(arch, seed=4) for arch in FAMILIES}


def _record(seen: dict, parents: tuple[int, ...], tokens: list[int], truth: list[int], accepted: list[int]) -> None:
    layout = build_tree(parents)
    seen["cases"] += 1
    seen["nodes"] = max(seen["nodes"], len(parents))
    seen["deep"] += len(accepted) >= 3
    seen["sibling_path"] += any(layout.children[parents[a]][0] != a for a in accepted)
    seen["decoy"] += any(layout.depths[i] > len(accepted) and tokens[i] == truth[layout.depths[i]]
                         for i in range(1, len(parents)))


def _random_parents(rng: random.Random) -> tuple[int, ...]:
    n = rng.randint(1, 64)
    return tuple([-1] + [rng.randrange(i) for i in range(1, n)])


def _random_tokens(rng: random.Random, parents: tuple[int, ...], truth: list[int]) -> tuple[list[int], int]:
    """Tokens for the trie ``parents`` whose path to one random node carries ``truth[1:]``.

    Returns (tokens, planted node). Siblings never share a token (a trie merges
    shared prefixes); half of the other nodes are decoys.
    """
    n = len(parents)
    depth = build_tree(parents).depths
    planted = rng.randrange(n)
    tokens: list[int | None] = [None] * n
    node = planted
    while node > 0:
        tokens[node] = truth[depth[node]]
        node = parents[node]
    tokens[0] = truth[0]
    kids: dict[int, set[int]] = {}
    for i in range(1, n):
        if tokens[i] is not None:
            kids.setdefault(parents[i], set()).add(tokens[i])
    for i in range(1, n):
        if tokens[i] is None:
            taken = kids.setdefault(parents[i], set())
            wish = truth[depth[i]] if rng.random() < 0.5 else rng.randrange(VOCAB)
            tok = wish if wish not in taken else rng.choice([t for t in range(VOCAB) if t not in taken])
            tokens[i] = tok
            taken.add(tok)
    return [int(t) for t in tokens], planted  # type: ignore[arg-type]


def _longest_true_prefix(parents: tuple[int, ...], tokens: list[int], truth: list[int]) -> list[int]:
    """Walk down the trie by the true tokens (independent of greedy_verify)."""
    path, node = [], 0
    while True:
        nxt = [c for c in range(1, len(parents)) if parents[c] == node and tokens[c] == truth[len(path) + 1]]
        if not nxt:
            return path
        node = nxt[0]
        path.append(node)


def _stock_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _case(model, arch: str, seed: int) -> tuple[list[int], tuple[int, ...], list[int], list[int], int]:
    """One random case, the same on every call: (prompt, trie, its tokens, true continuation, planted node)."""
    rng = random.Random(FAMILIES.index(arch) * 1000 + seed)
    P = rng.randint(20, 40)  # prompts on both sides of gemma2's window; decoding always crosses it
    prompt = [rng.randrange(VOCAB) for _ in range(P)]
    parents = _random_parents(rng)
    layout = build_tree(parents)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, P, dtype=torch.long),
                             do_sample=False, max_new_tokens=layout.max_depth + AFTER + 2, pad_token_id=0)
    truth = out[0, P:].tolist()  # truth[0] is the root: the last committed token
    tokens, planted = _random_tokens(rng, parents, truth)
    return prompt, parents, tokens, truth, planted


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("arch", FAMILIES)
def test_random_trie_verify_then_compacted_cache_decodes_like_stock(arch: str, seed: int, models) -> None:
    model = models[arch]
    ad = get_adapter(model)
    prompt, parents, tokens, truth, planted = _case(model, arch, seed)
    P, layout = len(prompt), build_tree(parents)

    # the prefix cache as the decoder leaves it after prefill: the prompt, the root not yet in it
    cache = SlotKVCache(ad.num_layers, P + len(parents) + AFTER + 2)
    ad.forward(torch.tensor(prompt), torch.arange(P), cache=cache, block_mask=torch.ones(P, P, dtype=torch.bool).tril())
    cache.rollback(P)

    hidden = ad.forward(torch.tensor(tokens), P + layout.depth, cache=cache, slot_start=P, visible_prefix=P, block_mask=layout.mask, logits_rows="hidden")
    scored: list[int] = []

    def target(node: int) -> int:
        scored.append(node)
        return int(ad.logits(hidden[node : node + 1])[0].argmax())

    accepted, bonus = greedy_verify(tokens, target, layout)
    want = _longest_true_prefix(parents, tokens, truth)
    assert accepted == want, f"{arch}/{seed}: trie {parents}, tokens {tokens}"
    assert len(accepted) >= layout.depths[planted]  # the planted path is never cut short
    assert bonus == truth[len(accepted) + 1]
    assert scored == [0] + accepted  # only the walk reached the LM head

    cache.keep(P, [0] + accepted)
    m = len(accepted)
    assert cache.length == P + 1 + m
    seq = prompt + truth[: m + 2 + AFTER]
    stock = _stock_logits(model, seq)
    for j in range(AFTER + 1):
        pos = P + 1 + m + j  # the bonus first, then true tokens
        got = ad.forward(torch.tensor([seq[pos]]), torch.tensor([pos]), cache=cache, slot_start=pos, visible_prefix=pos, block_mask=torch.ones(1, 1, dtype=torch.bool))
        cache.rollback(pos + 1)
        torch.testing.assert_close(got[0], stock[pos], atol=ATOL, rtol=1e-5)


def test_random_tries_were_not_vacuous(models) -> None:
    """The cases above, rebuilt (each asserts that greedy_verify accepts exactly the longest true prefix):
    some accepted paths were deep, some left a parent's first child, some tries held a decoy deeper than
    what was accepted, and some tries were large. Self-contained, so xdist's scheduling cannot skip it."""
    seen = {"cases": 0, "nodes": 0, "deep": 0, "sibling_path": 0, "decoy": 0}
    for arch in FAMILIES:
        for seed in SEEDS:
            _, parents, tokens, truth, _ = _case(models[arch], arch, seed)
            _record(seen, parents, tokens, truth, _longest_true_prefix(parents, tokens, truth))
    assert seen["cases"] == len(FAMILIES) * len(SEEDS)
    assert seen["nodes"] >= 40 and seen["deep"] >= 3 and seen["sibling_path"] >= 3 and seen["decoy"] >= 3, seen
