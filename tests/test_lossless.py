"""Greedy SWIFT decoding is token-for-token identical to ``model.generate(do_sample=False)`` in fp32.

Every supported family (tiny random-weight models), hand-made and random skip
sets, prompt lengths 1..300, generations crossing many steps, deep drafts and
wide trees, EOS, streaming. A spy on ``greedy_verify`` and the per-step stats
prove the suite really exercised multi-token drafts, multi-token acceptance and
accepted siblings (the last test of the module), so equality is not vacuous.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import swiftsd.core.decoder as decoder_mod
from swiftsd import SkipSet, SwiftDecoder
from lossless_helpers import _first_diff, _ids, plain_generate
from tiny import ARCHS, tiny_model


L = 6  # layers of the tiny models


@dataclass
class Exercise:
    """What the lossless cases did, summed over the module (see the last test)."""

    cases: int = 0
    max_draft: int = 0
    max_accepted: int = 0
    steps_with_siblings: int = 0
    sibling_accepts: int = 0
    eos_stops: dict[str, int] = field(default_factory=dict)  # per family
    per_arch: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def exercise() -> Exercise:
    return Exercise()


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, int], Any]:
    return {}


def _model(models: dict, arch: str, seed: int):
    if (arch, seed) not in models:
        models[(arch, seed)] = tiny_model(arch, seed=seed)
    return models[(arch, seed)]


@pytest.fixture
def spy(monkeypatch, exercise: Exercise):
    """Record accepted siblings (a non-chain node on the accepted path) without changing behaviour."""
    real = decoder_mod.greedy_verify

    def recording(tree_tokens, target, layout):
        accepted, bonus = real(tree_tokens, target, layout)
        # a sibling: an accepted node that is not its parent's first child
        exercise.sibling_accepts += any(layout.children[layout.parents[a]][0] != a for a in accepted)
        return accepted, bonus

    monkeypatch.setattr(decoder_mod, "greedy_verify", recording)


def _record(exercise: Exercise, arch: str, stats) -> None:
    exercise.cases += 1
    exercise.per_arch[arch] = exercise.per_arch.get(arch, 0) + 1
    exercise.max_draft = max([exercise.max_draft, *stats.draft_lengths])
    exercise.max_accepted = max([exercise.max_accepted, *stats.accepted_lengths])
    exercise.steps_with_siblings += sum(t > d + 1 for t, d in zip(stats.tree_sizes, stats.draft_lengths))


def _random_skip(rng: random.Random) -> SkipSet:
    """Any subset of all 2·L sublayers, layers 0 and L-1 included (the draft may skip anything)."""
    n_attn, n_mlp = rng.randint(0, L), rng.randint(0, L)
    return SkipSet(attn=rng.sample(range(L), n_attn), mlp=rng.sample(range(L), n_mlp))


# Every decoder below is built with ``optimizer=False``: these tests pin the skip set they
# name (the on-the-fly optimiser would replace it). ``planner=False`` makes the layer-skip
# draft run every step (the cost planner would mostly skip it on these tiny models), so
# trees mix layer-skip, lookup and suffix nodes; test_greedy_with_default_optimizer here and
# test_lossless_drafters.py cover the default decoder with its planner.
ALL_BUT_ENDS = SkipSet(attn=range(1, L - 1), mlp=range(1, L - 1))
DEEP = dict(stop_threshold=0.0, max_draft=25, max_nodes=160, tree="paper")

# (name, model seed, prompt length, new tokens, skip set, decoder config)
HAND_MADE: list[tuple[str, int, int, int, SkipSet, dict]] = [
    ("empty-set", 0, 1, 40, SkipSet(), {}),
    ("uniform", 0, 17, 60, SkipSet.uniform(L), {}),
    ("uniform-deep", 1, 50, 80, SkipSet.uniform(L), DEEP),
    ("all-but-first-last", 0, 5, 50, ALL_BUT_ENDS, DEEP),
    ("light-skip-deep", 0, 30, 120, SkipSet(mlp=[2]), DEEP),
    ("light-skip-wide", 1, 8, 100, SkipSet(attn=[3]),
     dict(stop_threshold=0.0, tree_widths=(4, 6, 8, 10), tree="paper", max_nodes=128)),
    ("light-skip-narrow", 0, 64, 70, SkipSet(attn=[2], mlp=[4]), dict(tree_widths=(1, 2, 2, 3), tree="paper")),
    ("chain-no-tree", 1, 120, 90, SkipSet(mlp=[1, 3]), dict(stop_threshold=0.0, use_tree=False)),
    ("dynamic-wide-frontier", 1, 33, 90, SkipSet(attn=[3], mlp=[2]), dict(frontier=8, max_nodes=96)),
    ("dynamic-small-budget", 0, 40, 70, SkipSet(mlp=[2, 4]), dict(frontier=3, max_nodes=5)),
    ("paper-method", 0, 21, 70, SkipSet(attn=[2]), dict(method="swift-paper")),
    ("long-prompt", 0, 300, 60, SkipSet(attn=[1, 4], mlp=[2]), DEEP),
    ("short-drafts", 2, 12, 60, SkipSet(attn=[2]), dict(max_draft=2)),
    ("no-draft-budget", 0, 9, 30, SkipSet(attn=[2]), dict(max_draft=0)),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", HAND_MADE, ids=[c[0] for c in HAND_MADE])
def test_greedy_equals_generate_hand_made(arch, case, models, exercise, spy) -> None:
    name, seed, n, m, skip, cfg = case
    model = _model(models, arch, seed)
    ids = _ids(n, seed=1000 + n)
    want = plain_generate(model, ids, m)
    res = SwiftDecoder(model, optimizer=False, skip_set=skip, **{"planner": False, **cfg}).generate(
        ids, max_new_tokens=m)
    assert res.sequences.dtype == torch.long and res.sequences.shape == want.shape
    assert torch.equal(res.sequences, want), f"{arch}/{name}: diverged at {_first_diff(res.sequences, want)}"
    assert res.stats.new_tokens == m and res.stats.prompt_tokens == n
    _record(exercise, arch, res.stats)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", range(4))
def test_greedy_equals_generate_random(arch, seed, models, exercise, spy) -> None:
    rng = random.Random(ARCHS.index(arch) * 100 + seed)  # stable across runs (no str hash)
    model = _model(models, arch, seed % 2)
    n = rng.choice([1, 2, 7, 23, 25, 48, 101, 180, 257])
    m = rng.randint(40, 90)
    skip = _random_skip(rng)
    cfg = dict(stop_threshold=rng.choice([0.0, 0.3, 0.8]), max_draft=rng.choice([3, 8, 25]),
               use_tree=rng.random() < 0.8, tree_widths=tuple(sorted(rng.choices(range(1, 11), k=4))),
               tree=rng.choice(["dynamic", "paper"]), frontier=rng.randint(1, 8), max_nodes=rng.choice([2, 9, 64]),
               planner=rng.random() < 0.3,
               drafters=rng.choice([("layerskip",), ("layerskip", "lookup"), ("layerskip", "lookup", "suffix")]))
    ids = _ids(n, seed=rng.randrange(2**31))
    if rng.random() < 0.5:  # a prompt that repeats itself, so lookup fires
        ids = ids[:, : max(1, n // 3)].repeat(1, 3)
        n = ids.shape[1]
    want = plain_generate(model, ids, m)
    res = SwiftDecoder(model, optimizer=False, skip_set=skip, **cfg).generate(ids, max_new_tokens=m)
    assert torch.equal(res.sequences, want), (
        f"{arch} seed={seed} n={n} skip={skip} cfg={cfg}: diverged at {_first_diff(res.sequences, want)}")
    _record(exercise, arch, res.stats)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen3"])
def test_greedy_with_default_optimizer(arch, models) -> None:
    """The default decoder (optimiser on, if built) stays lossless across a stream of requests."""
    model = _model(models, arch, 0)
    dec = SwiftDecoder(model)
    for n, m in ((20, 70), (45, 80), (5, 60)):
        ids = _ids(n, seed=n)
        assert torch.equal(dec.generate(ids, max_new_tokens=m).sequences, plain_generate(model, ids, m))


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_skip_override_per_call(arch, models, exercise, spy) -> None:
    """``generate(skip_set=...)`` overrides the decoder's set for one call; still lossless."""
    model = _model(models, arch, 0)
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet.uniform(L), planner=False, **DEEP)
    ids = _ids(20, seed=5)
    want = plain_generate(model, ids, 50)
    for skip in ({"attn": [2], "mlp": []}, '{"mlp": [0, 5]}', SkipSet(attn=[0, 1, 2, 3, 4, 5])):
        res = dec.generate(ids, max_new_tokens=50, skip_set=skip)
        assert torch.equal(res.sequences, want)
        _record(exercise, arch, res.stats)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("m", [1, 2])
def test_greedy_one_and_two_tokens(arch, m, models) -> None:
    model = _model(models, arch, 0)
    for n in (1, 10):
        ids = _ids(n, seed=n)
        dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[2]), **DEEP)
        res = dec.generate(ids, max_new_tokens=m)
        assert torch.equal(res.sequences, plain_generate(model, ids, m))
        assert res.stats.new_tokens == m
        assert res.stats.steps == m - 1  # the prefill emits the first token


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_eos_stops_at_the_same_place(arch, models, exercise, spy) -> None:
    model = _model(models, arch, 1)
    ids = _ids(15, seed=99)
    free = plain_generate(model, ids, 60)[0, 15:].tolist()
    eos = free[25]  # a token plain decoding does emit; it stops at its first occurrence
    cut = free.index(eos) + 1
    for cfg in (DEEP, {}, dict(use_tree=False, stop_threshold=0.0)):
        want = plain_generate(model, ids, 60, eos=eos)
        assert want.shape[1] == 15 + cut  # plain decoding stopped early, on the eos token
        dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(mlp=[3]), planner=False, **cfg)
        res = dec.generate(ids, max_new_tokens=60, eos_token_id=eos)
        assert torch.equal(res.sequences, want)
        assert res.sequences[0, -1].item() == eos and res.stats.new_tokens == cut
        exercise.eos_stops[arch] = exercise.eos_stops.get(arch, 0) + 1
        _record(exercise, arch, res.stats)
    # a list of eos ids: stop at whichever comes first
    other = free[10]
    want = plain_generate(model, ids, 60, eos=[eos, other])
    res = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(mlp=[3]), **DEEP).generate(ids, max_new_tokens=60,
                                                                           eos_token_id=[eos, other])
    assert torch.equal(res.sequences, want)


def test_eos_defaults_to_generation_config(models) -> None:
    model = tiny_model("llama", seed=1)  # own copy: its generation_config is changed below
    ids = _ids(15, seed=99)
    free = plain_generate(model, ids, 60)[0, 15:].tolist()
    model.generation_config.eos_token_id = free[30]
    model.generation_config.pad_token_id = free[30]
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=60)
    assert want.shape[1] < 15 + 60
    res = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(mlp=[3]), **DEEP).generate(ids, max_new_tokens=60)
    assert torch.equal(res.sequences, want)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen3"])
def test_stream_chunks_concatenate_to_generate_output(arch, models, exercise) -> None:
    model = _model(models, arch, 0)
    ids = _ids(40, seed=3)
    want = plain_generate(model, ids, 70)
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[2], mlp=[3]), planner=False, **DEEP)
    stream = dec.stream(ids, max_new_tokens=70)
    chunks = list(stream)
    assert stream.result is not None
    assert len(chunks) == stream.result.stats.steps + 1  # the prefill's token, then one chunk per step
    assert all(chunks)
    flat = [t for c in chunks for t in c]
    assert flat == want[0, 40:].tolist()
    assert torch.equal(stream.result.sequences, want)
    assert any(len(c) > 1 for c in chunks)  # some step emitted several tokens at once
    _record(exercise, arch, stream.result.stats)


def test_stream_close_stops_early(models) -> None:
    dec = SwiftDecoder(_model(models, "llama", 0), optimizer=False, skip_set=SkipSet(attn=[2]))
    stream = dec.stream(_ids(10, seed=1), max_new_tokens=80)
    got = []
    for chunk in stream:
        got += chunk
        if len(got) >= 5:
            stream.close()
            break
    assert 5 <= len(got) < 80 and stream.result is None


# ---------------------------------------------------------------------------- non-vacuity
def test_suite_exercised_speculation(exercise: Exercise) -> None:
    """Equality above would be trivial if no draft were ever accepted; check it was."""
    if exercise.cases < 50:
        pytest.skip("only meaningful after the whole module ran")
    assert set(exercise.per_arch) == set(ARCHS)
    assert exercise.max_draft >= 20  # deep drafts (stop_threshold 0, max_draft 25)
    assert exercise.max_accepted >= 2  # multi-token acceptance
    assert exercise.steps_with_siblings > 0  # trees wider than the chain were verified
    assert exercise.sibling_accepts > 0  # and a sibling was accepted at least once
    # every family whose EOS test ran here stopped early with all three configurations
    assert exercise.eos_stops and all(n == 3 for n in exercise.eos_stops.values())
