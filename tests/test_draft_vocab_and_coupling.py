"""The draft vocabulary subset and the seed-coupled sampler.

- A draft restricted to part of the vocabulary only proposes; the full LM head
  verifies, so greedy output still equals ``model.generate``.
- Coupled sampling makes the sample a function of the seed alone: the skip set,
  the tree, the draft vocabulary and the optimiser's state must not change it,
  and it must equal the plain (no-draft) path of the same decoder.
"""

from __future__ import annotations

import random

import pytest
import torch

from swiftsd import SkipSet, SwiftDecoder
from swiftsd.engine.verify import PositionNoise, coupled_sample
from swiftsd.config import SamplingParams
from tiny import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_lossless_with_small_draft_vocab(arch: str) -> None:
    model = tiny_model(arch, seed=3)
    rng = random.Random(arch)
    hits = 0
    for k, vocab in enumerate([8, 30, 60]):
        dec = SwiftDecoder(model, optimizer=False, draft_vocab=vocab, stop_threshold=0.0, max_draft=6)
        torch.manual_seed(k)
        ids = torch.randint(0, model.config.vocab_size, (1, rng.randint(1, 40)))
        skip = SkipSet(attn=rng.sample(range(1, 5), 2), mlp=rng.sample(range(1, 5), 1))
        ref = model.generate(ids, do_sample=False, max_new_tokens=40)
        res = dec.generate(ids, max_new_tokens=40, skip_set=skip)
        assert torch.equal(res.sequences, ref), f"{arch} draft_vocab={vocab}"
        hits += res.stats.accepted_tokens
    assert hits > 0  # the restricted draft was right sometimes: the subset path really ran


def test_draft_vocab_prefers_prompt_and_generated_tokens() -> None:
    model = tiny_model("llama")
    dec = SwiftDecoder(model, optimizer=False, draft_vocab=10)
    head = dec.draft_head([90, 91], eos={96})
    ids = set(head.token_ids.tolist())
    assert {90, 91, 96} <= ids and len(ids) == 10
    assert set(range(7)) <= ids  # the rest are the lowest ids
    dec.generate([90, 91], max_new_tokens=20)
    generated = set(torch.nonzero(dec.token_counts.counts).flatten().tolist())
    ids_after = set(dec.draft_head([5], eos=set()).token_ids.tolist())
    assert len(generated & ids_after) == min(len(generated), 9)  # tokens the stream produced come first


SAMPLE = dict(max_new_tokens=40, temperature=0.9, top_p=0.95, top_k=30)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen3"])
def test_coupled_sample_depends_only_on_the_seed(arch: str) -> None:
    model = tiny_model(arch, seed=1)
    prompt = [1, 2, 3, 4]
    plain = SwiftDecoder(model, optimizer=False, max_draft=0).generate(prompt, seed=11, **SAMPLE).new_tokens
    outs = []
    for skip, vocab, tree in [(SkipSet(), 0, True), (SkipSet(attn=[1, 2, 3, 4], mlp=[2, 3]), 20, True),
                              (SkipSet(attn=[2], mlp=[3]), 0, False)]:
        dec = SwiftDecoder(model, optimizer=False, stop_threshold=0.0, draft_vocab=vocab, use_tree=tree,
                           planner=False)  # draft with the layer-skip model every step
        res = dec.generate(prompt, seed=11, skip_set=skip, **SAMPLE)
        outs.append(res.new_tokens)
        assert res.stats.draft_tokens > 0
    with_optimizer = SwiftDecoder(model, stop_threshold=0.0)
    for _ in range(3):  # the optimiser learns between calls; the sample must not move
        outs.append(with_optimizer.generate(prompt, seed=11, **SAMPLE).new_tokens)
    assert all(o == plain for o in outs)
    assert SwiftDecoder(model, optimizer=False).generate(prompt, seed=12, **SAMPLE).new_tokens != plain


def test_position_noise_is_a_function_of_seed_and_position() -> None:
    a, b = PositionNoise(5, 50, torch.device("cpu")), PositionNoise(5, 50, torch.device("cpu"))
    assert torch.equal(a.at(7), b.at(7)) and not torch.equal(a.at(7), a.at(8))
    a.forget_before(8)
    assert torch.equal(a.at(7), b.at(7))  # recomputed identically
    assert not torch.equal(PositionNoise(6, 50, torch.device("cpu")).at(7), b.at(7))


def test_coupled_sample_never_picks_a_removed_token() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 40, generator=g)
    params = SamplingParams(temperature=0.8, top_k=3)
    noise = -torch.log(-torch.log(torch.rand(200, 40, generator=g).clamp(min=1e-20)))
    picked = coupled_sample(logits, params, noise)
    top3 = torch.topk(logits, 3, dim=-1).indices
    assert (top3 == picked[:, None]).any(-1).all()


def _coupled_context(noise: PositionNoise | None, temperature: float = 1.0):
    from swiftsd.drafters.base import DraftContext

    return DraftContext(adapter=None, cache=None, skip=None, head=None, params=SamplingParams(temperature=temperature),
                        generator=torch.Generator(), noise=noise, rejection=False, max_depth=4, frontier=1,
                        min_mass=0.0, widths=((0.5,), (1,)), stop_threshold=0.5)


def test_coupled_draft_confidence_is_its_probability_under_the_targets_noise() -> None:
    """A flat q the noise separates: the target (near q) picks the noisy top-1, so the chain's
    confidence is softmax(warped + noise), not q's own top-1 (which would stop it at once)."""
    from swiftsd.drafters.layerskip import LayerSkipDrafter, _confidence

    V, pos = 50, 7
    noise = PositionNoise(seed=3, vocab=V, device=torch.device("cpu"))
    g = noise.at(pos)
    logits = torch.zeros(1, V)  # q uniform: its own top-1 is 1/V
    toks, p, q = LayerSkipDrafter()._children(logits, 3, _coupled_context(noise), pos)
    want = torch.softmax(g, -1)
    assert q is None and toks[0].tolist() == torch.topk(g, 3).indices.tolist()
    assert torch.allclose(p[0], want[toks[0]])
    assert _confidence(p, q)[0] == pytest.approx(float(want.max()))
    assert _confidence(p, q)[0] > 1.5 / V  # the noise's lead, not q's flat 1/V
    # no noise: the warped softmax, as greedy's confidence is the plain softmax
    sharp = torch.tensor([[2.0, 1.0] + [0.0] * (V - 2)])
    toks, p, _ = LayerSkipDrafter()._children(sharp, 2, _coupled_context(None, temperature=0.5), pos)
    assert toks[0].tolist() == [0, 1]
    assert torch.allclose(p[0], torch.softmax(sharp[0] / 0.5, -1)[:2])
