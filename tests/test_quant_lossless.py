"""The quantized self-draft is lossless (issue 33, "How it is checked").

Greedy: equal to ``model.generate`` in fp32 with the draft forced to int8 and to int4, on all 7
families, with and without the copy drafters, over a stream of requests on one decoder (a prompt
that repeats itself, one that does not, one sharing the first's prefix); on widths that no int4
group divides (48: int4 falls back to int8) and that no kernel takes (40: the model's own weight);
with the optimiser scoring skip sets at the quantized precision; on the real SmolLM2 with chat
prompts. Sampling: the chi-square harness of test_sampling.py on the output distribution with the
quantized draft, for both samplers, alone and mixed with copy drafts.
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

from lossless_helpers import _first_diff, _ids, cached_plain_generate
from swiftsd import SkipSet, SwiftDecoder
from swiftsd.config import SamplingParams
from swiftsd.engine.quant_pack import kernel_works
from swiftsd.errors import QuantFallbackWarning
from test_sampling import CTX, P_MIN, SMALL_VOCAB, _exact_targets, chi_square_pvalue
from tiny import ARCHS, tiny_model

pytestmark = pytest.mark.skipif(not (kernel_works("int8", "cpu", torch.bfloat16)
                                     and kernel_works("int4", "cpu", torch.bfloat16)),
                                reason="this torch build has no working CPU int8/int4 weight-only kernels")


@pytest.fixture(scope="module")
def models() -> dict:
    return {}


def _model(models: dict, arch: str, **over):
    key = (arch, tuple(sorted(over.items())))
    if key not in models:
        models[key] = tiny_model(arch, seed=0, **over)
    return models[key]


def _stream(model, dec: SwiftDecoder, seed: int, n_new: int = 40) -> dict[str, int]:
    """Three requests on ``dec``, each equal to ``model.generate``; the layer-skip draft's proposed / accepted."""
    base = _ids(14, seed=seed)
    prompts = [base.repeat(1, 3), _ids(25, seed=seed + 1), torch.cat([base, _ids(6, seed=seed + 2)], 1)]
    totals = {"proposed": 0, "accepted": 0}
    for ids in prompts:
        want = cached_plain_generate(model, ids, n_new)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QuantFallbackWarning)  # vocabulary 97: no int4 shape, int8 it is
            res = dec.generate(ids, max_new_tokens=n_new)
        assert torch.equal(res.sequences, want), f"diverged at {_first_diff(res.sequences, want)}"
        for k in totals:
            totals[k] += res.stats.per_drafter.get("layerskip", {}).get(k, 0)
    return totals


COPY = {"alone": ("layerskip",), "with-copy": ("layerskip", "lookup", "suffix")}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("drafters", list(COPY), ids=list(COPY))
def test_greedy_equals_generate_with_a_forced_quantized_draft(arch, precision, drafters, models) -> None:
    model = _model(models, arch)
    frontier = 1 + (ARCHS.index(arch) + len(drafters)) % 2  # the chain and the two-node frontier across cases
    dec = SwiftDecoder(model, optimizer=False, planner=False, cost_cache=False, draft_precision=precision,
                       drafters=COPY[drafters], quant_frontier=frontier, quant_stop_threshold=0.3)
    got = _stream(model, dec, seed=ARCHS.index(arch))
    assert got["accepted"] > 0, f"{arch} {precision}: the quantized draft never had a token accepted: {got}"
    assert dec.draft_weights.built()[precision].precision == precision


@pytest.mark.parametrize("hidden,expect", [(48, "int8"), (40, "full")])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_widths_the_kernels_refuse_fall_back_and_stay_lossless(arch, hidden, expect, models) -> None:
    """48: no int4 group divides it (q/k/v/gate/up run int8); 40: not even int8's 16 (the own weight)."""
    model = _model(models, arch, hidden_size=hidden, intermediate_size=2 * hidden)
    dec = SwiftDecoder(model, optimizer=False, planner=False, cost_cache=False, draft_precision="int4",
                       drafters=("layerskip", "lookup"), quant_stop_threshold=0.3)
    got = _stream(model, dec, seed=11)
    qw = dec.draft_weights.built()["int4"]
    assert qw.fallbacks  # said once, as a QuantFallbackWarning (test_quant.py checks the warning itself)
    q_proj = model.model.layers[1].self_attn.q_proj
    assert qw.precision_of(q_proj) == expect
    assert got["proposed"] > 0


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_greedy_with_the_optimiser_scoring_at_the_quantized_precision(arch, models) -> None:
    """The default optimiser and planner, the draft forced to int8, over a stream: still lossless."""
    from tiny import cheap_tree_costs

    model = _model(models, arch)
    dec = SwiftDecoder(model, cost_cache=False, draft_precision="int8", optimizer={"context_window": 8,
                                                                                       "max_opt_share": 1.0})
    dec.costs = cheap_tree_costs()  # a device where drafting pays, so the planner lets it run
    for seed in (21, 24, 27):
        _stream(model, dec, seed=seed, n_new=48)
    assert dec.optimizer is not None and dec.optimizer.state.iterations > 0  # it searched at int8


# -- the real model ------------------------------------------------------------------------------------------
@pytest.mark.real_model
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_greedy_equals_generate_smollm2_chat_with_a_quantized_draft(smollm2, precision) -> None:
    model, tok = smollm2
    dec = SwiftDecoder(model, tok, optimizer=False, planner=False, cost_cache=False, draft_precision=precision,
                       max_draft=6, max_nodes=16)
    accepted = 0
    for text in ("Write a haiku about autumn leaves.", "What is the capital of France? Answer in one sentence."):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = tok(chat, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32)
        res = dec.generate(ids, max_new_tokens=32)
        assert torch.equal(res.sequences, want), f"{precision}: diverged at {_first_diff(res.sequences, want)}"
        accepted += res.stats.per_drafter.get("layerskip", {}).get("accepted", 0)
    assert accepted > 10  # the int8 / int4 copy of SmolLM2 agrees with it most of the time
    assert not dec.draft_weights.built()[precision].fallbacks  # every SmolLM2 shape fits the kernels


# -- sampling ------------------------------------------------------------------------------------------------
N_SAMPLES = 1500


@pytest.fixture(scope="module")
def small_model():
    return tiny_model("llama", seed=0, vocab_size=SMALL_VOCAB, num_hidden_layers=3, hidden_size=32,
                      intermediate_size=64)


@pytest.mark.parametrize("sampler", ["coupled", "rejection"])
@pytest.mark.parametrize("drafters", list(COPY), ids=list(COPY))
def test_sampling_with_a_quantized_draft_follows_the_target(small_model, sampler, drafters) -> None:
    """Tokens 2 and 3 come from the speculative path: the int4 draft (int8 where int4 cannot) drafts two
    deep each first step, alone or merged with the suffix index's point masses."""
    params = SamplingParams(temperature=1.0)
    j12, j23 = _exact_targets(small_model, params)
    frontier = 2 if sampler == "coupled" else 1  # the rejection sampler's fixed tree is the paper's chain
    dec = SwiftDecoder(small_model, optimizer=False, planner=False, cost_cache=False, draft_precision="int4",
                       quant_frontier=frontier, quant_stop_threshold=0.0, sampler=sampler, draft_vocab=SMALL_VOCAB - 2,
                       quant_draft_vocab=SMALL_VOCAB - 2,
                       drafters=COPY[drafters])
    c12: Counter = Counter()
    c23: Counter = Counter()
    deep = mixed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)
        for i in range(N_SAMPLES):
            res = dec.generate(CTX, max_new_tokens=4, temperature=1.0, seed=20_000 + i)
            t = res.new_tokens
            c12[(t[0], t[1])] += 1
            c23[(t[1], t[2])] += 1
            deep += res.stats.draft_lengths[0] == 2
            mixed += len(res.stats.per_drafter) > 1
    assert deep == N_SAMPLES
    assert (mixed > N_SAMPLES // 2) == (drafters == "with-copy")
    assert "int4" in dec.draft_weights.built()
    for name, counts, target in (("(t1,t2)", c12, j12), ("(t2,t3)", c23, j23)):
        p, tv = chi_square_pvalue(counts, target, N_SAMPLES)
        assert p > P_MIN, f"{sampler} {drafters} {name}: chi-square p={p:.2e}, TV={tv:.3f}"
