"""docs/benchmarks/token-trees/replay.py reruns the copy-only loop without the model: it must
reproduce what the decoder did, step for step, or its figures are fiction."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lossless_helpers import _ids
from swiftsd import SwiftDecoder
from swiftsd.core import bounds
from swiftsd.config import SwiftConfig
from swiftsd.drafters import make_drafters
from tiny import cheap_tree_costs, tiny_model

_spec = importlib.util.spec_from_file_location(
    "replay", Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "token-trees" / "replay.py")
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)

CHEAP = cheap_tree_costs()
# a CPU's shape: every node costs about a step, so the planner verifies few and the copy probe acts
DEAR = replace(CHEAP, verify_sizes=(1, 2, 4, 8, 16, 32, 64),
               verify_times=tuple(0.01 * r for r in (1.0, 1.4, 2.3, 4.2, 8.0, 15.0, 29.5)))

# trees nearly free at a 16-token context and dear at 64: the planner's node count depends on the
# context, as the decoder prices each step (``CostModel.at_context``), and the replay must follow
CONTEXTUAL = replace(CHEAP, context=16, long_context=64,
                     long_times=tuple(0.01 * r for r in (1.0, 4.2, 15.0, 29.5)))


def _distrust(drafters: dict) -> None:
    """A stream that learned copies fail (5 %): the planner verifies none, and only the copy probe does."""
    for d in drafters.values():
        for b in (f"n{n}d{k}{r}" for n in (1, 2, 3) for k in (1, 2, 3, 5, 9) for r in "hc"):
            d.calib.hits[b], d.calib.mass[b] = 5.0, 100.0


@pytest.mark.parametrize("costs,distrust", [(CHEAP, False), (DEAR, False), (DEAR, True), (CONTEXTUAL, False)],
                         ids=["cheap-trees", "dear-trees", "dear-trees-probe", "context-priced-trees"])
def test_replay_reproduces_the_decoders_steps(costs, distrust, monkeypatch) -> None:
    probes = []
    result = bounds.CopyProbe.result
    monkeypatch.setattr(bounds.CopyProbe, "result", lambda self, a, c: (probes.append(a), result(self, a, c))[1])
    model = tiny_model("qwen2", seed=1)
    drafters = ("lookup", "suffix")
    dec = SwiftDecoder(model, drafters=drafters)
    dec.costs = costs  # the replay prices steps with the cost model the decoder planned with
    cfg = SwiftConfig(drafters=drafters)
    mirror = make_drafters(cfg)  # the replay's own drafters: the stream's state evolves beside the decoder's
    if distrust:
        _distrust(dec.drafters)
        _distrust(mirror)
    base = _ids(12, seed=5)
    prompts = [base.repeat(1, 4), _ids(20, seed=6), torch.cat([base, _ids(5, seed=7)], 1), base.repeat(1, 2)]
    accepted = 0
    for ids in prompts:
        res = dec.generate(ids, max_new_tokens=48)
        out = res.sequences[0, ids.shape[1]:].tolist()
        steps, cost, nodes = replay._turn(mirror, cfg, costs, ids[0].tolist(), out, frozenset(), 48)
        assert steps == res.stats.accepted_lengths
        assert nodes == sum(res.stats.tree_sizes)
        assert cost >= len(steps) - 1e-9  # priced: no verification costs less than a plain step
        accepted += sum(steps)
    assert accepted > 0  # not vacuous: copies were verified and accepted
    assert bool(probes) == distrust  # and, where the planner trusted no copy, the probe verified some


def test_hf_pld_variant_proposes_what_transformers_prompt_lookup_proposes() -> None:
    """The ``hf-pld`` replay variant stands for transformers' prompt lookup: the same chain every time,
    cut at a stop token and at the request's max_length as transformers cuts it."""
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    gen = torch.Generator().manual_seed(3)
    found = cut_by_eos = 0
    for trial in range(80):
        vocab = 4 + trial % 12  # small vocabularies repeat n-grams often; larger ones rarely
        tokens = torch.randint(0, vocab, (int(torch.randint(3, 60, (1,), generator=gen)),), generator=gen).tolist()
        eos = frozenset({vocab - 1}) if trial % 2 else frozenset()
        max_length = len(tokens) + (1, 4, 200)[trial % 3]
        hf = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(sorted(eos)) if eos else None,
                                            num_output_tokens=10, max_matching_ngram_size=2, max_length=max_length)
        cand, _ = hf.get_candidates(torch.tensor([tokens]))
        want = cand[0, len(tokens):].tolist()
        got = replay._hf_pld_chain(tokens, max_length, eos)
        assert got == want, (tokens, eos, max_length)
        found += bool(want)
        cut_by_eos += bool(eos) and got != replay._hf_pld_chain(tokens, max_length)
    assert 10 < found < 80 and cut_by_eos > 0  # chains found and not found, and some cut at a stop token
