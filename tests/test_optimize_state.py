"""SkipOptimizer.state_dict / load_state_dict: everything learned goes through JSON on disk and
comes back exactly, so the next proposals, ``current()`` and ``record_step`` decisions match."""

from __future__ import annotations

import copy
import json

import pytest

from swiftsd import InvalidArgumentError, OptimizerConfig, SkipSet, SwiftDecoder
from swiftsd.optimize import SkipOptimizer
from swiftsd.stats import GenerationStats
from test_optimize import planted_overlap, synthetic_costs
from tiny import tiny_model

L = 10
PLANTED = SkipSet(attn=[1, 3, 5, 7], mlp=[2, 4, 6])


class Stepper:
    """The decode loop's part, one step at a time, with deterministic scores, times and acceptance."""

    def __init__(self, opt: SkipOptimizer) -> None:
        overlap = planted_overlap(PLANTED)
        self.opt, self.score = opt, lambda s: 0.9 * overlap(s)  # never above max_score: it keeps searching
        self.stats, self.n, self.decisions = GenerationStats(), 1, []

    def new_request(self) -> None:
        self.stats, self.n = GenerationStats(), 1

    def step(self) -> None:
        opt, stats = self.opt, self.stats
        proposed = None
        if opt.wants_proposal(self.n):
            proposed = opt.propose()
            opt.observe(proposed, self.score(proposed))
            stats.time_optimize += 0.25
        skip = opt.current()
        overlap = self.score(skip) if skip is not None else 0.0
        drafted = 0 if skip is None else 2 + len(skip) % 3
        accepted = min(drafted, round(overlap * drafted + 0.4))
        stats.steps += 1
        stats.tree_sizes.append(1 + 2 * drafted)
        opt.record_step(stats, accepted=accepted, drafted=drafted,
                        step_time=0.6 + 0.02 * (2 * (L - 2) - len(skip)) if skip is not None else 1.0)
        self.n += accepted + 1
        self.decisions.append((proposed, skip, opt.state.phase, accepted))


def _drive(stepper: Stepper, steps: int, request_len: int = 70) -> None:
    for _ in range(steps):
        if stepper.n > request_len:
            stepper.new_request()
        stepper.step()


def _round_trip(opt: SkipOptimizer, path) -> dict:
    path.write_text(json.dumps(opt.state_dict(), allow_nan=False))  # plain JSON: no NaN, no Infinity
    return json.loads(path.read_text())


@pytest.mark.parametrize("cfg", [
    OptimizerConfig(context_window=4, bayes_interval=8, max_opt_share=0.5, seed=3, drift_window=8,
                    measure_window=8, probe_interval=6, probe_steps=4, give_up_after=0, bayes_n_random=64),
    OptimizerConfig.reference(context_window=4, bayes_interval=8, max_opt_iter=400, seed=5, bayes_n_random=64),
], ids=["cost-aware", "reference"])
def test_round_trip_continues_exactly(cfg, tmp_path):
    a = Stepper(SkipOptimizer(L, cfg, costs=synthetic_costs(L, c=0.3)))
    _drive(a, 110)  # a few requests, stopping mid-request with a search under way
    assert a.opt.state.requests >= 2 and a.n > 1 and a.opt.state.iterations >= 8 and len(a.opt.bayes.observations) > 0
    saved = _round_trip(a.opt, tmp_path / "opt.json")

    # the cost model is not the optimiser's to save: the decoder owns and restores it (test_request.py)
    assert "costs" not in saved
    b = Stepper(SkipOptimizer(L, cfg, costs=synthetic_costs(L, c=0.3)))
    b.opt.load_state_dict(saved)
    b.stats, b.n = copy.deepcopy(a.stats), a.n  # the request in flight, as the decoder would hold it
    assert b.opt.state_dict() == saved
    assert b.opt.current() == a.opt.current() and b.opt.status() == a.opt.status()
    a.decisions.clear()
    _drive(a, 100)
    _drive(b, 100)
    assert any(p is not None for p, *_ in a.decisions)  # it kept searching after the checkpoint ...
    assert b.decisions == a.decisions  # ... and the restored one proposed, drafted and accepted alike
    assert [e.source for e in b.opt.history] == [e.source for e in a.opt.history]
    assert b.opt.state_dict() == a.opt.state_dict()
    assert b.stats.trace == a.stats.trace


def test_a_fresh_optimizer_decides_differently(tmp_path):
    """The round trip carries information: without it, the next decisions differ."""
    cfg = OptimizerConfig(context_window=4, bayes_interval=5, seed=3, bayes_n_random=64)
    a = Stepper(SkipOptimizer(L, cfg, costs=synthetic_costs(L, c=0.3)))
    _drive(a, 150)
    fresh = Stepper(SkipOptimizer(L, cfg, costs=synthetic_costs(L, c=0.3)))
    fresh.stats, fresh.n = copy.deepcopy(a.stats), a.n
    a.decisions.clear()
    _drive(a, 100)
    _drive(fresh, 100)
    assert fresh.decisions != a.decisions


def test_refuses_other_models_newer_versions_and_garbage():
    opt = SkipOptimizer(L, costs=synthetic_costs(L, c=0.3))
    good = opt.state_dict()
    with pytest.raises(InvalidArgumentError, match="12-layer model, this one has 10"):
        opt.load_state_dict(SkipOptimizer(12).state_dict())
    with pytest.raises(InvalidArgumentError, match="version 99.*upgrade swiftsd"):
        opt.load_state_dict(dict(good, version=99))
    broken = copy.deepcopy(good)
    del broken["memory"]["speed"]
    with pytest.raises(InvalidArgumentError, match="malformed"):
        opt.load_state_dict(broken)
    with pytest.raises(InvalidArgumentError, match="state_dict"):
        opt.load_state_dict(["not", "a", "dict"])
    assert opt.state_dict() == good  # a refused load changes nothing


def test_tiny_model_stream_round_trip(tmp_path):
    """Learn on a stream with a tiny model, JSON on disk, a new decoder: the next request searches,
    scores and decodes as the original does (the paper's optimiser: its decisions read no clock)."""
    model = tiny_model("llama", seed=2)
    cfg = OptimizerConfig.reference(context_window=6, bayes_interval=3, max_opt_iter=300, seed=1, bayes_n_random=64)
    prompts = [[5 + i, 17, 33 + i, 8, 61, 2 * i + 1] for i in range(4)]
    kw = dict(optimizer=cfg, drafters=("layerskip",), planner=False)  # no clock, no stream index: exact
    a = SwiftDecoder(model, **kw)
    for p in prompts[:3]:
        a.generate(p, max_new_tokens=40)
    assert a.optimizer.state.iterations > 5
    saved = _round_trip(a.optimizer, tmp_path / "tiny.json")
    b = SwiftDecoder(model, **kw)
    b.optimizer.load_state_dict(saved)
    ra, rb = a.generate(prompts[3], max_new_tokens=40), b.generate(prompts[3], max_new_tokens=40)
    assert rb.new_tokens == ra.new_tokens and rb.stats.skip_set == ra.stats.skip_set
    assert list(b.optimizer.history) == list(a.optimizer.history)
    assert b.optimizer.best() == a.optimizer.best()
    assert [(t["eval_source"], t["matchness"], t["accepted"]) for t in rb.stats.trace] == \
        [(t["eval_source"], t["matchness"], t["accepted"]) for t in ra.stats.trace]
