"""Greedy output equals ``model.generate`` with every combination of drafters, on every family.

Each (family, combination) runs a stream of three requests on one decoder: a prompt
that repeats itself (prompt lookup fires), one that does not, and one that shares a
prefix with the first (the suffix index, fed by the first request, fires). The
planner is on for half of the cases and off for the other half. Each case also
checks that its drafters proposed trees (and lookup's were accepted), so the
equality is not vacuous. (Own module: xdist spreads these over both workers.)
"""

from __future__ import annotations

import pytest
import torch

from lossless_helpers import _first_diff, _ids, cached_plain_generate
from swiftsd import SkipSet, SwiftDecoder
from tiny import ARCHS, tiny_model

COMBOS = [("layerskip",), ("lookup",), ("suffix",), ("lookup", "suffix"), ("layerskip", "lookup"),
          ("layerskip", "suffix"), ("layerskip", "lookup", "suffix")]


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    return {}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("drafters", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_greedy_drafter_combinations(arch, drafters, models) -> None:
    if arch not in models:
        models[arch] = tiny_model(arch, seed=0)
    model = models[arch]
    planner = (ARCHS.index(arch) + COMBOS.index(drafters)) % 2 == 0  # each combination both ways over archs
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[2], mlp=[3]), drafters=drafters,
                       planner=planner)
    base = _ids(14, seed=ARCHS.index(arch))
    prompts = [base.repeat(1, 3), _ids(25, seed=7), torch.cat([base, _ids(6, seed=8)], 1)]
    proposed, accepted = dict.fromkeys(drafters, 0), dict.fromkeys(drafters, 0)
    for ids in prompts:
        want = cached_plain_generate(model, ids, 40)
        res = dec.generate(ids, max_new_tokens=40)
        assert torch.equal(res.sequences, want), (
            f"{arch} {drafters} planner={planner}: diverged at {_first_diff(res.sequences, want)}")
        for name, counts in res.stats.per_drafter.items():
            assert name in drafters
            proposed[name] += counts["proposed"]
            accepted[name] += counts["accepted"]
    if "suffix" in drafters:
        assert dec.drafters["suffix"].size > 0  # the stream was indexed
    # not vacuous: the suffix index and (planner off) the layer-skip draft proposed trees that were
    # verified, and prompt lookup's proposals on the repeated prompt were accepted
    for d in drafters:
        assert proposed[d] > 0 or (d == "layerskip" and planner), f"{arch}: {d} proposed nothing: {proposed}"
    if "lookup" in drafters:
        assert accepted["lookup"] > 0, f"{arch} {drafters}: no lookup draft accepted: {accepted}"
