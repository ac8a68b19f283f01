"""Vanishing temperatures: below ``GREEDY_BELOW`` decoding is exactly greedy; at and above it the
warp is finite for logits anywhere in the float range of fp32, bf16 and fp16 (issue 32: 1e-40
returned garbage tokens, 1e-300 an empty chat answer)."""

from __future__ import annotations

import pytest
import torch

from swiftsd import SkipSet, SwiftDecoder
from swiftsd.cli.main import main
from swiftsd.config import GREEDY_BELOW, SamplingParams
from swiftsd.engine.verify import PositionNoise, coupled_sample, target_probs, warp_logits
from lossless_helpers import _ids, plain_generate
from tiny import tiny_model

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
VANISHING = (5e-324, 1e-300, 1e-45, 1e-40, 1e-38, 1e-37, 1e-20, 1e-8, GREEDY_BELOW * (1 - 1e-9))
ABOVE = (GREEDY_BELOW, 2e-5, 1e-4, 0.01, 1.0, 2.0)


def _edge_logits(dtype: torch.dtype) -> torch.Tensor:
    """Rows of logits in ``dtype`` at the edges of its range, cast to float32 as the adapter does."""
    fi = torch.finfo(dtype)
    sub = fi.smallest_normal * fi.eps  # the smallest subnormal
    one_ulp = 1 + fi.eps
    rows = [
        [fi.max, fi.max * 0.5, -fi.max, 0.0, 1.0],  # a huge top logit: / t overflows float32 for bf16/fp32
        [fi.max, fi.max, 1.0, -1.0, 0.0],  # a tie at the top of the range
        [sub, 0.0, -sub, fi.smallest_normal, -fi.max],  # everything tiny
        [one_ulp, 1.0, 1.0 - fi.eps / 2, -1.0, -fi.max],  # a top logit one ulp above the next
        [12.0, 11.0, -3.0, float("-inf"), 5.0],  # an ordinary row with a removed token
        [-fi.max, -fi.max * 0.5, -fi.max, -fi.max, -1.0],  # all very negative
    ]
    return torch.tensor(rows, dtype=dtype).float()


@pytest.mark.parametrize("t", VANISHING)
def test_below_the_threshold_is_greedy(t) -> None:
    assert SamplingParams(temperature=t).greedy and SamplingParams(temperature=0.0).greedy


@pytest.mark.parametrize("t", ABOVE)
def test_at_and_above_the_threshold_samples(t) -> None:
    assert not SamplingParams(temperature=t).greedy


def test_the_threshold_is_a_normal_float32_number() -> None:
    """The division happens in float32: the threshold must not be subnormal there (it is in fp16:
    that is why the warp never computes in the model's dtype)."""
    t32 = torch.tensor(GREEDY_BELOW, dtype=torch.float32)
    assert float(t32) >= torch.finfo(torch.float32).smallest_normal
    assert float(torch.tensor(GREEDY_BELOW, dtype=torch.float16)) < torch.finfo(torch.float16).smallest_normal


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t", ABOVE)
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (2, 1.0), (0, 0.5)])
def test_warp_is_finite_over_each_dtypes_range(dtype, t, top_k, top_p) -> None:
    logits = _edge_logits(dtype)
    params = SamplingParams(temperature=t, top_k=top_k, top_p=top_p)
    w = warp_logits(logits, params)
    assert w.dtype == torch.float32 and not torch.isnan(w).any() and not (w == float("inf")).any()
    p = target_probs(logits, params)
    assert torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0]))
    scaled = warp_logits(logits, SamplingParams(temperature=t))  # no top-k / top-p
    assert torch.equal(scaled.argmax(-1), logits.argmax(-1))
    higher = scaled[:, :, None] > scaled[:, None, :]  # [row, i, j]: token i's scaled logit is above token j's
    assert (p[:, :, None] >= p[:, None, :])[higher].all()  # so its probability is not below: order kept
    noise = PositionNoise(seed=1, vocab=logits.shape[-1], device=torch.device("cpu"))
    for row in range(logits.shape[0]):
        tok = int(coupled_sample(logits[row], params, noise.at(row)))
        assert torch.isfinite(w[row, tok]), (row, tok)  # never a removed token


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_at_the_threshold_a_one_ulp_gap_at_magnitude_one_keeps_the_mass_on_the_top(dtype) -> None:
    """Continuity at the switch: in bf16 and fp16 a runner-up one ulp below a top logit of about 1
    keeps under 1e-40 of the mass at t = GREEDY_BELOW, so the switch to argmax changes nothing.
    In fp32 a one-ulp gap (1.2e-7) is a genuine near-tie at any t >= 1e-5, and sampling keeps it."""
    fi = torch.finfo(dtype)
    top = torch.tensor([2.0, 2.0 - 2 * fi.eps, -1.0], dtype=dtype).float()  # one ulp apart in [1, 2)
    p = target_probs(top, SamplingParams(temperature=GREEDY_BELOW))
    if dtype == torch.float32:
        assert 0.2 < float(p[1]) < 0.5
    else:
        assert float(p[1]) < 1e-40 and float(p[0]) == 1.0


# ----------------------------------------------------------------------------------- the decoder
@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=5)


@pytest.mark.parametrize("t", (1e-300, 1e-40, 1e-38, 5e-324))
def test_swift_decoder_at_a_vanishing_temperature_equals_greedy_generate(llama, t) -> None:
    ids = _ids(12, seed=7)
    want = plain_generate(llama, ids, 24)
    dec = SwiftDecoder(llama, optimizer=False, skip_set=SkipSet(attn=[2]))
    out = dec.generate(ids, max_new_tokens=24, temperature=t, top_p=0.9, top_k=5, seed=3)
    assert torch.equal(out.sequences, want)


def test_just_above_the_threshold_sampling_is_finite_and_here_greedy(llama) -> None:
    """At t = 2e-5 sampling runs (seeded Gumbel-max); where every greedy step's top-2 logit gap is
    over 120 t, exp(-gap/t) is 0 in float32, so the sample must be the argmax."""
    ids = _ids(12, seed=7)
    with torch.no_grad():
        ref = llama.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in ref.scores]
    t = 2e-5
    assert min(gaps) > 120 * t  # the precondition that makes the sample deterministic
    for sampler in ("coupled", "rejection"):
        dec = SwiftDecoder(llama, optimizer=False, skip_set=SkipSet(attn=[2]), sampler=sampler)
        assert torch.equal(dec.generate(ids, max_new_tokens=24, temperature=t, seed=11).sequences, ref.sequences)


@pytest.mark.parametrize("t", (1e-300, 1e-40))
def test_model_generate_with_custom_generate_at_a_vanishing_temperature_is_greedy(llama, t) -> None:
    """HF's own generate fails here (its temperature warper makes every positive logit +inf)."""
    ids = _ids(12, seed=7)
    dec = SwiftDecoder(llama, optimizer=False, skip_set=SkipSet(attn=[2]))
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=16, pad_token_id=0)
    with torch.no_grad():
        out = llama.generate(ids, do_sample=True, temperature=t, top_k=5, custom_generate=dec.custom_generate, **kw)
        want = llama.generate(ids, do_sample=False, **kw)
    assert torch.equal(out, want)


def test_generation_config_with_penalty_at_a_vanishing_temperature_is_greedy(llama) -> None:
    from transformers import GenerationConfig

    ids = _ids(12, seed=7)
    with torch.no_grad():
        want = llama.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, repetition_penalty=1.3,
                              max_new_tokens=16, pad_token_id=0)
    gc = GenerationConfig(do_sample=True, temperature=1e-300, repetition_penalty=1.3)
    dec = SwiftDecoder(llama, optimizer=False, skip_set=SkipSet(attn=[2]))
    assert torch.equal(dec.generate(ids, max_new_tokens=16, generation_config=gc, seed=2).sequences, want)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_half_precision_models_at_a_vanishing_temperature(dtype) -> None:
    model = tiny_model("qwen2", seed=2, dtype=dtype)
    ids = _ids(10, seed=3)
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(mlp=[3]))
    greedy = dec.generate(ids, max_new_tokens=16, temperature=0.0).sequences
    assert torch.equal(dec.generate(ids, max_new_tokens=16, temperature=1e-300, seed=1).sequences, greedy)
    out = dec.generate(ids, max_new_tokens=16, temperature=GREEDY_BELOW, seed=1).new_tokens
    assert len(out) == 16 and all(0 <= t < model.config.vocab_size for t in out)


def test_cli_generate_at_a_vanishing_temperature_is_greedy(capsys, tmp_path) -> None:
    from tiny_cli import save_tiny_model_dir

    d = str(save_tiny_model_dir(tmp_path / "m"))
    argv = ["generate", "--model", d, "--prompt", "Once upon a time", "--max-new-tokens", "12",
            "--skip-set", '{"attn": [2]}', "--json"]
    assert main([*argv, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main([*argv, "--temperature", "1e-300", "--seed", "4"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["tokens"] == json.loads(greedy)["tokens"]
