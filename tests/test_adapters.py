"""Contract test: each adapter with no skip set computes the stock model's own forward."""

from __future__ import annotations

import pytest
import torch

from swiftsd import SkipSet, UnsupportedModelError
from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.models import get_adapter, supported_model_types
from swiftsd.engine.tree import build_tree, chain_with_siblings
from tiny import ARCHS, tiny_model


ATOL = 1e-5  # fp32; the adapter calls the very same modules, only rounding-order noise is allowed
PROMPT = 40  # longer than the Gemma sliding window (24) of the tiny configs, so the window matters


def _causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def _ids(n: int, seed: int = 0, vocab: int = 97) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _stock_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None]).logits[0].float()


# Gemma 2 has no SDPA path in transformers; every other family is checked with both kernels.
@pytest.fixture(scope="module", params=[(a, impl) for a in ARCHS for impl in ("sdpa", "eager")
                                        if not (a == "gemma2" and impl == "sdpa")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def model(request):
    arch, impl = request.param
    return tiny_model(arch, seed=1, attn_implementation=impl)


def test_full_prefill_equals_stock_forward(model) -> None:
    ad = get_adapter(model)
    ids = _ids(PROMPT)
    cache = SlotKVCache(ad.num_layers, PROMPT + 8)
    got = ad.forward(ids, torch.arange(PROMPT), cache=cache, block_mask=_causal(PROMPT))
    torch.testing.assert_close(got, _stock_logits(model, ids), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("n", [PROMPT, 20])  # longer and shorter than the tiny Gemma sliding window (24)
def test_causal_prefill_without_explicit_mask_equals_stock_forward(model, n: int) -> None:
    """block_mask=None (the decoder's prefill) lets SDPA apply causality; it must compute the same logits."""
    ad = get_adapter(model)
    ids = _ids(n, seed=5)
    cache = SlotKVCache(ad.num_layers, n + 8)
    got = ad.forward(ids, torch.arange(n), cache=cache)
    torch.testing.assert_close(got, _stock_logits(model, ids), atol=ATOL, rtol=1e-5)
    cache.rollback(n - 1)  # a later block after a mask-free prefill still sees exactly the prefix
    last = ad.forward(ids[n - 1:], torch.tensor([n - 1]), cache=cache, slot_start=n - 1, visible_prefix=n - 1)
    torch.testing.assert_close(last, _stock_logits(model, ids)[n - 1:], atol=ATOL, rtol=1e-5)


def test_mask_is_left_to_sdpa_only_where_it_is_exact(model) -> None:
    """No mask only for SDPA over a block that is the whole cache and fits the sliding window;
    eager attention adds no causal mask of its own, so it must always get one."""
    ad = get_adapter(model)
    window = ad.sliding_window
    short = ad.build_masks(torch.arange(8), 0, 0, None)
    long = ad.build_masks(torch.arange(PROMPT), 0, 0, None)
    later = ad.build_masks(torch.arange(8, 12), 8, 8, None)
    sdpa = model.config._attn_implementation == "sdpa"
    assert all(m is None for m in short.values()) == sdpa
    assert all(m is None for m in long.values()) == (sdpa and (window is None or PROMPT <= window))
    assert all(m is not None and m.shape == (1, 1, 4, 12) for m in later.values())
    one = ad.build_masks(torch.tensor([8]), 8, 8, torch.ones(1, 1, dtype=torch.bool))
    grouped = model.config.num_key_value_heads < model.config.num_attention_heads
    assert ad.mask_single_query == (sdpa and grouped)
    for m in one.values():  # a plain step: nothing to hide, so a mask only where it selects the faster kernel
        assert (m is None) != ad.mask_single_query
        assert m is None or (m.shape == (1, 1, 1, 9) and not m.any())


def test_incremental_two_chunks_equals_stock_forward(model) -> None:
    ad = get_adapter(model)
    ids = _ids(PROMPT, seed=3)
    want = _stock_logits(model, ids)
    split = 27  # second chunk crosses the sliding window boundary
    cache = SlotKVCache(ad.num_layers, PROMPT + 8)
    first = ad.forward(ids[:split], torch.arange(split), cache=cache, block_mask=_causal(split))
    cache.rollback(split)
    q = PROMPT - split
    second = ad.forward(ids[split:], torch.arange(split, PROMPT), cache=cache, slot_start=split, visible_prefix=split, block_mask=_causal(q))
    torch.testing.assert_close(first, want[:split], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(second, want[split:], atol=ATOL, rtol=1e-5)


def test_logits_rows_selects_positions(model) -> None:
    ad = get_adapter(model)
    ids = _ids(12, seed=5)
    cache = SlotKVCache(ad.num_layers, 16)
    got = ad.forward(ids, torch.arange(12), cache=cache, block_mask=_causal(12), logits_rows=slice(11, 12))
    assert got.shape == (1, model.config.vocab_size)
    torch.testing.assert_close(got, _stock_logits(model, ids)[11:12], atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_forward_equals_stock_forward_of_each_path(arch: str) -> None:
    """One forward over a tree = the stock forward of prefix + each node's own path."""
    model = tiny_model(arch, seed=2)
    ad = get_adapter(model)
    prefix = _ids(30, seed=7)
    layout = build_tree(chain_with_siblings((3, 2, 1)))
    tree_tokens = _ids(layout.size, seed=8)
    P = prefix.numel()
    cache = SlotKVCache(ad.num_layers, P + layout.size + 4)
    ad.forward(prefix[:-1], torch.arange(P - 1), cache=cache, block_mask=_causal(P - 1))
    cache.rollback(P - 1)
    tree_tokens[0] = prefix[-1]  # the root is the last committed token
    got = ad.forward(tree_tokens, (P - 1) + layout.depth, cache=cache, slot_start=P - 1, visible_prefix=P - 1, block_mask=layout.mask)
    for node in range(layout.size):
        path, j = [], node
        while j >= 0:
            path.append(int(tree_tokens[j]))
            j = int(layout.parent[j])
        seq = torch.cat([prefix[:-1], torch.tensor(path[::-1])])
        want = _stock_logits(model, seq)[-1]
        torch.testing.assert_close(got[node], want, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_drafting_depth_by_depth_equals_stock_forward(arch: str) -> None:
    """Tree drafting writes one depth per forward and lets each node see its ancestors in
    earlier forwards' slots (``past_visible`` / ``past_positions``): every node's logits equal
    the stock forward over prefix + its path, sliding windows included (a 40-token prefix)."""
    model = tiny_model(arch, seed=3)
    ad = get_adapter(model)
    prefix = _ids(40, seed=9)
    P = prefix.numel()
    cache = SlotKVCache(ad.num_layers, P + 16)
    ad.forward(prefix[:-1], torch.arange(P - 1), cache=cache, block_mask=_causal(P - 1))
    cache.rollback(P - 1)
    root = P - 1
    # depth 0: the root alone; depth 1: two children of the root; depth 2: one child of each
    parents = {0: -1, 1: 0, 2: 0, 3: 1, 4: 2}
    tokens = {0: int(prefix[-1]), 1: 5, 2: 17, 3: 33, 4: 8}
    slots = {0: root}
    depth_nodes = [[0], [1, 2], [3, 4]]
    next_slot = root
    for d, nodes in enumerate(depth_nodes):
        past_vis = past_pos = None
        if d:
            n_past = next_slot - root
            past_vis = torch.zeros(len(nodes), n_past, dtype=torch.bool)
            for j, node in enumerate(nodes):
                a = parents[node]
                while a >= 0:
                    past_vis[j, slots[a] - root] = True
                    a = parents[a]
            past_pos = torch.empty(n_past, dtype=torch.long)
            for node, slot in slots.items():
                dd = next(k for k, ns in enumerate(depth_nodes) if node in ns)
                past_pos[slot - root] = root + dd
        got = ad.forward(torch.tensor([tokens[n] for n in nodes]), torch.full((len(nodes),), root + d), cache=cache, slot_start=next_slot, visible_prefix=root, block_mask=torch.eye(len(nodes), dtype=torch.bool), past_visible=past_vis, past_positions=past_pos)
        for j, node in enumerate(nodes):
            slots[node] = next_slot + j
            path, a = [], node
            while a >= 0:
                path.append(tokens[a])
                a = parents[a]
            want = _stock_logits(model, torch.cat([prefix[:-1], torch.tensor(path[::-1])]))[-1]
            torch.testing.assert_close(got[j], want, atol=ATOL, rtol=1e-5)
        next_slot += len(nodes)


@pytest.mark.parametrize("arch", ARCHS)
def test_skipped_sublayer_changes_logits(arch: str) -> None:
    model = tiny_model(arch, seed=1)
    ad = get_adapter(model)
    ids = _ids(10, seed=4)
    out = {}
    for name, skip in {"full": None, "empty": SkipSet(), "attn": SkipSet(attn=[2]),
                       "mlp": SkipSet(mlp=[3]), "both": SkipSet(attn=[1, 4], mlp=[2])}.items():
        cache = SlotKVCache(ad.num_layers, 16)
        out[name] = ad.forward(ids, torch.arange(10), cache=cache, block_mask=_causal(10), skip=skip)
    assert torch.equal(out["full"], out["empty"])  # an empty skip set is the full model
    for name in ("attn", "mlp", "both"):
        assert (out[name] - out["full"]).abs().max() > 1e-3, f"skipping {name} did not change the logits"
    assert (out["attn"] - out["mlp"]).abs().max() > 1e-3


def test_skipping_is_per_call_and_leaves_model_untouched() -> None:
    model = tiny_model("llama", seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ad = get_adapter(model)
    ids = _ids(8)
    cache = SlotKVCache(ad.num_layers, 16)
    ad.forward(ids, torch.arange(8), cache=cache, block_mask=_causal(8), skip=SkipSet(attn=[1, 2, 3], mlp=[1, 2, 3, 4]))
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    torch.testing.assert_close(
        ad.forward(ids, torch.arange(8), cache=SlotKVCache(ad.num_layers, 16), block_mask=_causal(8)),
        _stock_logits(model, ids), atol=ATOL, rtol=1e-5)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def _bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64))


def _llama_base():
    from transformers import AutoModel

    return AutoModel.from_config(tiny_model("llama").config)  # a supported type, but no LM head


@pytest.mark.parametrize("make", [_gpt2, _bert, _llama_base], ids=["gpt2", "bert", "llama-no-lm-head"])
def test_unsupported_model_raises_listing_supported(make) -> None:
    from swiftsd import SwiftDecoder

    model = make()
    with pytest.raises(UnsupportedModelError) as info:
        get_adapter(model)
    msg = str(info.value)
    for t in supported_model_types():
        assert t in msg
    assert type(model).__name__ in msg
    with pytest.raises(UnsupportedModelError):
        SwiftDecoder(model)


def test_supported_types_cover_the_seven_families() -> None:
    assert set(supported_model_types()) == {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"}


def test_measure_draft_cost_reports_c() -> None:
    from swiftsd import InvalidSkipSetError, SwiftDecoder
    from swiftsd.engine.cost import measure_draft_cost

    dec = SwiftDecoder(tiny_model("qwen2", seed=0), optimizer=False)
    r = measure_draft_cost(dec, {"attn": [1, 2], "mlp": [3]}, n=3, context=16, warmup=1, verify_sizes=(2, 40))
    assert r["c_of_medians"] == pytest.approx(r["draft_ms"] / r["full_ms"])
    assert r["c"] > 0
    assert r["full_ms"] > 0 and r["draft_ms"] > 0
    assert r["skipped_sublayers"] == 3 and r["total_sublayers"] == 12
    assert set(r["verify_relative"]) == {2, 40} and all(v > 0 for v in r["verify_relative"].values())
    assert r["dtype"] == "float32" and r["device"] == "cpu"
    assert measure_draft_cost(dec.adapter, '{"mlp": [2]}', n=1, context=4)["skip_set"] == {"attn": [], "mlp": [2]}
    with pytest.raises(InvalidSkipSetError, match="99"):
        measure_draft_cost(dec, {"attn": [99]})


# -- packed grouped-query attention (engine/attention.py) ------------------------------------
def _phi3_gqa():
    """Phi-3 with grouped KV heads: the fused qkv projection on the packed path."""
    from transformers import AutoModelForCausalLM, Phi3Config

    from tiny import COMMON

    torch.manual_seed(4)
    cfg = Phi3Config(**{**COMMON, "num_key_value_heads": 2})
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _tree_logits(ad, seed: int) -> torch.Tensor:
    prefix = _ids(30, seed=seed)
    layout = build_tree(chain_with_siblings((3, 2, 2, 1)))
    tokens = _ids(layout.size, seed=seed + 1)
    cache = SlotKVCache(ad.num_layers, 30 + layout.size + 4)
    ad.forward(prefix, torch.arange(30), cache=cache)
    cache.rollback(30)
    return ad.forward(tokens, 30 + layout.depth, cache=cache, slot_start=30, visible_prefix=30, block_mask=layout.mask)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3-gqa"])
def test_packed_attention_is_taken_for_grouped_sdpa_and_equals_repeat_kv(arch: str) -> None:
    """Every grouped-query SDPA family takes the packed path, and a tree forward on it equals the
    same forward through the stock modules' own attention (repeat_kv), sliding windows included."""
    model = _phi3_gqa() if arch == "phi3-gqa" else tiny_model(arch, seed=2)
    ad = get_adapter(model)
    assert ad.packed_gqa
    packed = _tree_logits(ad, seed=11)
    ad.packed_gqa = False  # the adapter's own switch; the model is not touched
    stock = _tree_logits(ad, seed=11)
    torch.testing.assert_close(packed, stock, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch,impl", [("phi3", "sdpa"), ("llama", "eager"), ("gemma2", "eager")])
def test_packed_attention_is_not_taken_without_grouped_sdpa(arch: str, impl: str) -> None:
    """No key/value groups (tiny Phi-3), eager attention, or Gemma 2's soft-capping: the stock path."""
    assert not get_adapter(tiny_model(arch, seed=1, attn_implementation=impl)).packed_gqa


def test_packed_attention_is_refused_when_it_disagrees_with_the_module(monkeypatch) -> None:
    """If the packed path stops computing what the module computes (a transformers release that
    changes an attention module), the adapter's run-time check keeps the stock path."""
    from swiftsd.engine import attention

    model = tiny_model("llama", seed=1)
    assert get_adapter(model).packed_gqa
    original = attention._project

    def skewed(attn, x, *linear):
        q, k, v = original(attn, x, *linear)
        return q * 1.5, k, v

    monkeypatch.setattr(attention, "_project", skewed)
    assert not get_adapter(model).packed_gqa


def test_packed_attention_check_that_raises_keeps_the_stock_path(monkeypatch) -> None:
    """A module the packed path does not fit (it raises inside the check) loads on the stock path."""
    from swiftsd.engine import attention

    def broken(attn, x, *linear):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(attention, "_project", broken)
    model = tiny_model("qwen2", seed=1)
    ad = get_adapter(model)
    assert not ad.packed_gqa
    assert _tree_logits(ad, seed=3).shape[-1] == model.config.vocab_size
