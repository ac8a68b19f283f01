"""The on-the-fly optimiser: matchness, search, stop rules, cost model, fallback, drift, losslessness."""

from __future__ import annotations

import copy
from dataclasses import replace
import inspect
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from swiftsd import OptimizerConfig, SkipSet, SwiftDecoder
from swiftsd.engine.cache import SlotKVCache
from swiftsd.engine.cost import CostModel, expected_tokens, measure_costs
from swiftsd.engine.timing import monotone_fit
from swiftsd.optimize import ACCELERATE, PLAIN, FixedCosts, SkipOptimizer
from swiftsd.stats import GenerationStats
from tiny import cheap_tree_costs, tiny_model


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def synthetic_costs(num_layers: int, c: float, verify_growth: float = 0.0) -> CostModel:
    """A cost model in which skipping every inner sublayer brings a draft step to cost ``c``.

    attention and MLP sublayers cost the same; verifying n nodes costs 1 + growth·(n − 1).
    """
    inner = 2 * (num_layers - 2)
    per = (1.0 - c) / inner
    sizes = (1, 2, 4, 8, 16, 32)
    return CostModel(full_step=1.0, attn=per, mlp=per, lm_head=c / 2, fixed=c / 2, draft_extra=0.0,
                     verify_sizes=sizes, verify_times=tuple(1.0 + verify_growth * (n - 1) for n in sizes),
                     num_layers=num_layers)


class Driver:
    """Plays the decode loop's part against a synthetic matchness function (no model)."""

    def __init__(self, opt: SkipOptimizer, score) -> None:
        self.opt, self.score = opt, score
        self.evaluations = 0

    def request(self, steps: int, step_time=lambda skip: 1.0, accept=lambda skip: (1, 2),
                eval_time: float = 0.0) -> GenerationStats:
        opt, stats = self.opt, GenerationStats()
        n = 1
        for _ in range(steps):
            if opt.wants_proposal(n):
                cand = opt.propose()
                opt.observe(cand, self.score(cand))
                self.evaluations += 1
                stats.time_optimize += eval_time
            skip = opt.current()
            acc, drafted = accept(skip) if skip is not None else (0, 0)
            stats.steps += 1
            stats.tree_sizes.append(1 + drafted)
            stats.draft_lengths.append(drafted)
            stats.accepted_lengths.append(acc)
            opt.record_step(stats, accepted=acc, drafted=drafted,
                            step_time=step_time(skip) if skip is not None else 1.0)
            n += acc + 1
        return stats


def planted_overlap(planted: SkipSet):
    """Matchness = share of the planted set's sublayers the candidate also skips (1.0 only at equality
    when sizes match)."""
    p_attn, p_mlp = set(planted.attn), set(planted.mlp)

    def score(s: SkipSet) -> float:
        hit = len(p_attn & set(s.attn)) + len(p_mlp & set(s.mlp))
        return hit / max(len(planted), len(s))

    return score


# ------------------------------------------------------------------------------------------
# matchness
# ------------------------------------------------------------------------------------------
class _ZeroAttn(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class _ZeroMLP(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def _skipped_copy(model, skip: SkipSet):
    """The stock HF model with the skipped sublayers replaced by zero-output modules (test-only copy)."""
    m = copy.deepcopy(model)
    for i in skip.attn:
        m.model.layers[i].self_attn = _ZeroAttn()
    for i in skip.mlp:
        m.model.layers[i].mlp = _ZeroMLP()
    return m


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_matchness_equals_brute_force(arch):
    """Decoder.matchness == per-position argmax agreement of the stock model with the sublayers zeroed,
    reading the full model's prompt cache, over the first `window` generated tokens."""
    model = tiny_model(arch, seed=3)
    dec = SwiftDecoder(model, optimizer=False)
    P, window = 12, 10
    prompt = torch.randint(97, (1, P), generator=torch.Generator().manual_seed(5))
    tokens = model.generate(prompt, max_new_tokens=window + 4, do_sample=False)[0].tolist()

    # the decoder's way: prefill the prompt, one parallel draft forward in scratch slots
    cache = SlotKVCache(dec.num_layers, P + 64)
    mask = torch.ones(P, P, dtype=torch.bool).tril_()
    dec.adapter.forward(torch.tensor(tokens[:P]), torch.arange(P), cache=cache, block_mask=mask)
    cache.rollback(P)

    rng = np.random.default_rng(0)
    values = []
    for trial in range(6):
        flags = (rng.random(2 * (dec.num_layers - 2)) < 0.4).astype(int)
        skip = SkipSet.from_flags(flags, dec.num_layers) if trial else SkipSet()
        got = dec.matchness(skip, tokens, P, cache, window)
        assert cache.length == P  # committed cache untouched

        with torch.no_grad():
            full = model(torch.tensor([tokens[:P]]), use_cache=True)
            draft_model = _skipped_copy(model, skip)
            # transformers 5.24 renamed past_key_values to cache (the old name warns); 5.23 knows only the old one
            name = "cache" if "cache" in inspect.signature(draft_model.forward).parameters else "past_key_values"
            out = draft_model(torch.tensor([tokens[P : P + window]]), **{name: getattr(full, name)})
        pred = out.logits[0].argmax(-1).tolist()
        hits = [pred[j] == tokens[P + 1 + j] for j in range(window)]
        assert got == pytest.approx(sum(hits) / window, abs=1e-6), (arch, skip)
        values.append(got)
    assert values[0] == 1.0  # the empty set is the full model: greedy tokens are its own argmax
    assert min(values) < 1.0  # some set actually disagrees, so the comparison was not vacuous


# ------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------
def test_reference_proposals_follow_the_paper():
    """Uniform draws of int(2·(L−2)·ratio) sublayers in layers 1..L−2; every 25th from the GP;
    every scored point registered with the GP."""
    L = 12
    cfg = OptimizerConfig.reference(context_window=4, max_opt_iter=60, max_tolerance_iter=1000, seed=1)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.5))
    rng = np.random.default_rng(0)
    Driver(opt, lambda s: float(rng.random()) * 0.9).request(200)
    assert opt.state.iterations == 60 and opt.done() and opt.state.stop_reason == "max_opt_iter"
    searched = [e for e in opt.history if e.source != "rescore"]
    assert all(len(e.skip) == int(2 * (L - 2) * 0.45) for e in searched)
    assert all(1 <= i <= L - 2 for e in searched for i in (*e.skip.attn, *e.skip.mlp))
    assert [e.iteration for e in searched if e.source == "bayes"] == [25, 50]
    assert {e.source for e in searched} == {"random", "bayes"}
    assert len(opt.bayes.observations) == len(opt.history)


def test_search_finds_planted_set_fixed_ratio():
    """Matchness objective, fixed ratio: local moves + random + GP find a planted 7-of-16 set within
    600 proposals (three seeds); uniform draws alone would need ~11 000 (C(16, 7))."""
    L = 10
    planted = SkipSet(attn=[2, 5, 7], mlp=[1, 3, 6, 8])
    for seed in range(3):
        cfg = OptimizerConfig(objective="matchness", context_window=4, max_opt_iter=600, max_tolerance_iter=600,
                              max_score=0.99, seed=seed, fallback=False)
        opt = SkipOptimizer(L, cfg)
        d = Driver(opt, planted_overlap(planted))
        while not opt.done():
            d.request(100)
        assert opt.best()[0] == planted, seed
        assert opt.state.stop_reason == "max_score" and opt.state.iterations < 600


def test_search_finds_planted_set_and_ratio_cost_aware():
    """Speed-up objective: the best set is the largest subset of a planted set of 'free' sublayers
    (matchness 0.9 inside it, collapsing outside); the search must find the set and its size."""
    L = 10
    planted = SkipSet(attn=[2, 4, 7], mlp=[1, 5, 6, 8])

    def score(s: SkipSet) -> float:
        outside = len(set(s.attn) - set(planted.attn)) + len(set(s.mlp) - set(planted.mlp))
        return 0.9 * 0.3 ** outside

    for seed in range(3):
        cfg = OptimizerConfig(context_window=4, max_opt_iter=300, max_tolerance_iter=300, seed=seed,
                              calibrate_acceptance=False)  # the synthetic loop's acceptance means nothing
        opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.05))
        d = Driver(opt, score)
        while not opt.done() and opt.best()[0] != planted:
            d.request(20)
        assert opt.best()[0] == planted, (seed, opt.best())  # within the 300-proposal budget
        assert opt.predict().speedup > 1.2 and opt.current() == planted


# ------------------------------------------------------------------------------------------
# stop rules
# ------------------------------------------------------------------------------------------
def test_stop_rule_max_score():
    cfg = OptimizerConfig.reference(context_window=4, max_score=0.9)
    opt = SkipOptimizer(8, cfg)
    seq = iter([0.1, 0.5, 0.95] + [0.0] * 100)
    d = Driver(opt, lambda s: next(seq))
    d.request(50)
    assert opt.done() and opt.state.stop_reason == "max_score"
    assert d.evaluations == 3  # the start set, then two proposals; nothing after the stop
    assert opt.best()[1] == 0.95 and opt.state.phase == ACCELERATE


def test_stop_rule_max_tolerance_iter():
    cfg = OptimizerConfig.reference(context_window=4, max_tolerance_iter=7, max_opt_iter=100)
    opt = SkipOptimizer(8, cfg)
    d = Driver(opt, lambda s: 0.3)  # nothing ever beats the start set
    d.request(50)
    assert opt.state.stop_reason == "max_tolerance_iter"
    assert opt.state.iterations == 7 and opt.best()[0] == SkipSet.uniform(8)


def test_stop_rule_max_opt_iter():
    cfg = OptimizerConfig.reference(context_window=4, max_tolerance_iter=1000, max_opt_iter=12)
    opt = SkipOptimizer(8, cfg)
    scores = iter(np.linspace(0.0, 0.5, 100))
    d = Driver(opt, lambda s: float(next(scores)))  # always improving, never reaching max_score
    d.request(50)
    assert opt.state.stop_reason == "max_opt_iter" and opt.state.iterations == 12


def test_waits_for_the_window_and_persists_across_requests():
    cfg = OptimizerConfig.reference(context_window=10)
    opt = SkipOptimizer(8, cfg)
    assert not any(opt.wants_proposal(n) for n in range(1, 12))  # needs > window + 1 generated tokens
    assert opt.wants_proposal(12)
    d = Driver(opt, lambda s: 0.2)
    d.request(30)
    first = opt.state.iterations
    d.request(30)
    assert opt.state.iterations > first and opt.state.requests == 3
    opt.reset()
    assert opt.state.iterations == 0 and opt.state.requests == 0 and opt.best() == (SkipSet.uniform(8), None)


# ------------------------------------------------------------------------------------------
# cost model
# ------------------------------------------------------------------------------------------
def test_search_time_budget_per_request():
    """Scoring a proposal costs 3 plain steps here; the search gets at most 25 % of each request."""
    cfg = OptimizerConfig.reference(context_window=4, max_opt_share=0.25, max_opt_iter=10_000,
                                    max_tolerance_iter=10_000, budget_decay=1.0)
    opt = SkipOptimizer(8, cfg)
    d = Driver(opt, lambda s: 0.3)
    for _ in range(3):
        before = d.evaluations
        d.request(120, eval_time=3.0)
        evals = d.evaluations - before
        # searched <= 1/3 of decoding (120 steps of 1 s), give or take the evaluation that crosses it
        assert 3.0 * (evals - 1) <= 120 / 3 and evals >= 10
    unlimited = SkipOptimizer(8, OptimizerConfig.reference(context_window=4, max_opt_iter=10_000,
                                                           max_tolerance_iter=10_000))
    d = Driver(unlimited, lambda s: 0.3)
    d.request(120, eval_time=3.0)
    # the paper: one proposal every step once n_generated > window + 1 (n = 1, 3, 5, 7, ...: from step 4)
    assert d.evaluations == 120 - 3


def test_search_budget_decays_while_nothing_pays():
    """No set can pay (synthetic costs: c = 1): each request searches about half as long as the last."""
    cfg = OptimizerConfig(context_window=4, max_opt_share=0.25, budget_decay=0.5, give_up_after=0,
                          max_opt_iter=10_000, max_tolerance_iter=10_000)
    opt = SkipOptimizer(8, cfg, costs=synthetic_costs(8, c=1.0))
    d = Driver(opt, lambda s: 0.3)
    per_request = []
    for _ in range(6):
        before = d.evaluations
        d.request(240, eval_time=3.0)
        per_request.append(d.evaluations - before)
    # budget 1/3, 1/7, 1/15, ... of 240 s of decoding, 3 s a scoring: about 26, 11, 5, 2, 1, 0 scorings
    assert per_request[0] >= 20 and per_request[-1] <= 3, per_request
    assert all(b <= a for a, b in zip(per_request, per_request[1:])), per_request
    assert opt.state.unpaid_requests == 5 and opt.status()["unpaid_requests"] == 5
    # spent on the search over the stream: bounded by about twice the first request's budget
    assert 3.0 * sum(per_request) <= 2 * 240 / 3 + 3 * 6


def test_cost_model_prediction_matches_formula():
    costs = CostModel(full_step=0.1, attn=0.001, mlp=0.004, lm_head=0.02, fixed=0.01, draft_extra=0.002,
                      verify_sizes=(1, 2, 4, 8), verify_times=(0.1, 0.15, 0.2, 0.3), num_layers=10)
    skip = SkipSet(attn=[1, 2, 3], mlp=[4, 5])
    c = (0.1 - 3 * 0.001 - 2 * 0.004 + 0.002) / 0.1
    assert costs.draft_cost(skip) == pytest.approx(c)
    assert costs.verify(3) == pytest.approx(0.175) and costs.verify(12) == pytest.approx(0.4)
    alpha, w = 0.7, 1.5
    by_hand = []
    for k in range(1, 7):
        e = (1 - alpha ** (k + 1)) / (1 - alpha)
        by_hand.append((e / (k * c + costs.verify(1 + w * k) / 0.1), k))
    pred = costs.predict(alpha, skip, max_draft=6, nodes_per_depth=w)
    assert (pred.speedup, pred.draft_len) == pytest.approx(max(by_hand))
    assert pred.tokens_per_round == pytest.approx(expected_tokens(alpha, pred.draft_len))
    assert expected_tokens(1.0, 4) == 5 and expected_tokens(0.0, 4) == 1


def test_measure_costs_on_a_tiny_model():
    model = tiny_model("qwen2", seed=0)
    dec = SwiftDecoder(model, optimizer=False)
    costs = measure_costs(dec.adapter, context=16, n=2, verify_sizes=(4, 8), draft_vocab=32)
    assert costs.num_layers == 6 and costs.full_step > 0 and costs.verify_sizes == (1, 4, 8)
    assert list(costs.verify_times) == sorted(costs.verify_times)
    assert costs.attn >= 0 and costs.mlp >= 0
    assert CostModel.from_dict(json.loads(json.dumps(costs.to_dict()))) == costs


def test_measure_costs_times_verification_at_a_long_context_too():
    model = tiny_model("qwen2", seed=0)  # 1024 positions: room for the long context
    dec = SwiftDecoder(model, optimizer=False)
    costs = measure_costs(dec.adapter, context=16, n=2, verify_sizes=(4, 8))
    assert costs.long_context >= 4 * 16 and len(costs.long_times) == len(costs.verify_times)
    assert list(costs.long_times) == sorted(costs.long_times)
    short = measure_costs(dec.adapter, context=300, n=1, verify_sizes=(4, 8))  # 4 x 300 > 1024 - 10
    assert short.long_context == 0 and short.long_times == () and short.at_context(900) is short


def _two_context_costs() -> CostModel:
    return CostModel(full_step=0.1, attn=0.001, mlp=0.004, lm_head=0.02, fixed=0.01, draft_extra=0.0,
                     verify_sizes=(1, 2, 8), verify_times=(0.1, 0.104, 0.113), num_layers=10, context=64,
                     long_context=1024, long_times=(0.12, 0.15, 0.18))


def test_cost_model_at_a_context_interpolates_the_two_timed_ones():
    costs = _two_context_costs()
    assert costs.at_context(10) is costs and costs.at_context(64) is costs
    far = costs.at_context(1024)
    assert far.verify_times == pytest.approx((0.12, 0.15, 0.18)) and far.full_step == pytest.approx(0.12)
    assert far.attn == pytest.approx(0.001 + 0.02 / 10)  # the plain step's growth is attention's
    mid = costs.at_context(544)  # halfway
    assert mid.verify_times == pytest.approx((0.11, 0.127, 0.1465))
    assert mid.verify(8) / mid.full_step > costs.verify(8) / costs.full_step  # trees dearer, relatively
    assert costs.at_context(2000).verify(8) > far.verify(8)  # beyond it: the same slope
    assert costs.at_context(550) is costs.at_context(560)  # memoised per 32-token bucket
    assert CostModel.from_dict(json.loads(json.dumps(costs.to_dict()))) == costs


def test_the_planner_verifies_fewer_copy_nodes_on_a_long_context():
    """Same copy scores, two contexts: where n nodes cost more plain steps, fewer of them pay."""
    from swiftsd.core.forecast import best_node_count
    costs = CostModel(full_step=0.1, attn=0.001, mlp=0.004, lm_head=0.02, fixed=0.01, draft_extra=0.0,
                      verify_sizes=(1, 2, 4, 8, 16), verify_times=(0.1, 0.101, 0.102, 0.104, 0.11), num_layers=10,
                      context=64, long_context=1024, long_times=(0.1, 0.14, 0.16, 0.2, 0.28))
    scores = [0.5, 0.3, 0.2, 0.1, 0.08, 0.05, 0.05, 0.04, 0.03, 0.02, 0.02, 0.01]
    n_short, _ = best_node_count(scores, costs.at_context(64), 0.0, 16)
    n_long, _ = best_node_count(scores, costs.at_context(1024), 0.0, 16)
    assert n_long < n_short, (n_short, n_long)


def test_monotone_fit_pools_a_lucky_large_size_with_the_smaller_ones():
    """The flaw it fixes: 16 nodes timed at 1.22 steps, 2 at 1.45; a running minimum from above
    priced 2-16 at 1.22. Pooled, they share their mean, and a later larger size keeps its own."""
    fit = monotone_fit([1.45, 1.50, 1.40, 1.22, 2.30])
    assert fit[:4] == pytest.approx([1.3925] * 4) and fit[4] == 2.30
    assert monotone_fit([1.0, 1.2, 1.9]) == [1.0, 1.2, 1.9]
    rng = random.Random(3)
    for _ in range(200):
        xs = [rng.uniform(0.5, 3.0) for _ in range(rng.randint(1, 8))]
        fit = monotone_fit(xs)
        assert fit == sorted(fit) and sum(fit) == pytest.approx(sum(xs))
        # least squares among non-decreasing sequences: no small monotone nudge does better
        err = sum((a - b) ** 2 for a, b in zip(fit, xs))
        for i in range(len(fit)):
            for d in (-0.01, 0.01):
                nudged = fit[:i] + [fit[i] + d] + fit[i + 1:]
                if nudged == sorted(nudged):
                    assert sum((a - b) ** 2 for a, b in zip(nudged, xs)) >= err - 1e-12


# ------------------------------------------------------------------------------------------
# never slower
# ------------------------------------------------------------------------------------------
def test_fallback_when_draft_cannot_pay():
    """Draft cost c≈1: no set predicts a speed-up, so the loop decodes plainly (current() is None)."""
    L = 8
    cfg = OptimizerConfig(context_window=4, max_opt_iter=30, max_tolerance_iter=30)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.98))
    d = Driver(opt, lambda s: 0.8)
    stats = d.request(80)
    assert opt.done() and opt.state.phase == PLAIN and opt.current() is None
    assert opt.predict().speedup < 1.0
    assert all(r["drafted"] == 0 for r in stats.trace if r["iteration"] >= 1)


def test_no_fallback_when_draft_pays():
    L = 8
    cfg = OptimizerConfig(context_window=4, max_opt_iter=30, max_tolerance_iter=30)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.1))
    d = Driver(opt, lambda s: 0.8)
    d.request(80, step_time=lambda s: 1.2, accept=lambda s: (3, 4))  # 4 tokens per 1.2 plain steps
    assert opt.state.phase == ACCELERATE and opt.current() == opt.best()[0]
    assert opt.predict().speedup > 1.0 and opt.measured_speedup() == pytest.approx(4 / 1.2)


def test_gives_up_when_nothing_pays_unless_measured():
    L = 8
    cfg = OptimizerConfig(context_window=4, give_up_after=20, max_opt_iter=500, max_tolerance_iter=500)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.98))
    Driver(opt, lambda s: 0.8).request(60)
    assert opt.state.stop_reason == "cannot_pay" and opt.state.iterations == 20 and opt.state.phase == PLAIN
    # the prediction turns pessimistic, but the loop measures a speed-up: keep searching, keep drafting
    cfg = OptimizerConfig(context_window=4, give_up_after=20, max_opt_iter=500, max_tolerance_iter=500,
                          calibrate_acceptance=False, calibrate_every=0)
    costs = FixedCosts(synthetic_costs(L, 0.3))
    opt = SkipOptimizer(L, cfg, costs=costs)
    d = Driver(opt, lambda s: 0.8 if s == opt.start else 0.1)  # nothing beats the start set
    d.request(30, step_time=lambda s: 1.0, accept=lambda s: (3, 4))
    assert opt.measured_speedup() == pytest.approx(4.0)
    costs.costs = synthetic_costs(L, 0.98)  # the decoder's cost model changes (re-measured)
    assert opt.predict().speedup < 1.0
    d.request(60, step_time=lambda s: 1.0, accept=lambda s: (3, 4))
    assert opt.state.stop_reason is None and opt.state.iterations > 20 and opt.current() == opt.start


def test_acceptance_calibration():
    """The loop accepts more than matchness says (tree, confidence stop): predictions are fitted to it."""
    from swiftsd.engine.cost import effective_acceptance

    L = 8
    cfg = OptimizerConfig(context_window=4, max_opt_iter=5, max_tolerance_iter=5, drift=False, fallback=False)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.3))
    Driver(opt, lambda s: 0.6).request(60, accept=lambda s: (3, 4))  # 4 tokens per 4-token draft
    alpha = effective_acceptance(4.0, 4.0)
    assert expected_tokens(alpha, 4.0) == pytest.approx(4.0, abs=1e-6)
    assert opt.state.miss_scale == pytest.approx((1 - alpha) / (1 - 0.6))
    assert opt.acceptance(0.6) == pytest.approx(alpha) and opt.predict().acceptance == pytest.approx(alpha)
    assert opt.acceptance(0.9) > opt.acceptance(0.6)


def test_a_set_that_matches_nothing_is_not_rated_acceptable():
    """Confident drafts all accepted fit the line's slope to its floor (0.05): the line alone would rate
    matchness 0 at 0.95 and the search would adopt a set that predicts nothing (seen at T = 0.7 with
    the int4 draft). Below the best set's matchness the acceptance scales with matchness."""
    L = 8
    cfg = OptimizerConfig(context_window=4, max_opt_iter=5, max_tolerance_iter=5, drift=False, fallback=False)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.3))
    Driver(opt, lambda s: 0.78 if s == opt.start else 0.0).request(60, accept=lambda s: (12, 12))
    assert opt.state.miss_scale == pytest.approx(0.05)  # the floor: every drafted token accepted
    a_best = opt.acceptance(0.78)
    assert a_best == pytest.approx(1 - 0.05 * 0.22)
    assert opt.acceptance(0.0) == 0.0
    assert opt.acceptance(0.39) == pytest.approx(a_best / 2)
    assert opt.acceptance(0.9) == pytest.approx(1 - 0.05 * 0.1)  # above the best: the fitted line
    assert opt.best()[0] == opt.start  # sets of matchness 0 never replaced it


def test_measured_fallback_engages_and_probe_disengages():
    """Predicted fine, measured slow: plain decoding; a later probe that measures fast re-enables drafting."""
    L = 8
    cfg = OptimizerConfig(context_window=4, max_opt_iter=10, max_tolerance_iter=10, probe_interval=20,
                          probe_steps=16, measure_window=16, drift=False)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.1))
    d = Driver(opt, lambda s: 0.8)
    slow, fast = dict(step_time=lambda s: 5.0, accept=lambda s: (1, 4)), dict(accept=lambda s: (3, 4))
    d.request(40, **slow)  # 2 tokens per 5 plain steps: slower than plain
    assert opt.done() and opt.state.phase == PLAIN and opt.current() is None
    assert opt.measured_speedup() < 1.0 and opt.state.probes == 0
    d.request(50, **slow)  # one probe, still slow: back to plain, probe interval doubled
    assert opt.state.probes == 1 and opt.state.phase == PLAIN and opt.state.probe_interval == 40
    d.request(40, **fast)  # the draft pays now: the next probe switches drafting back on
    assert opt.state.probes == 2 and opt.state.phase == ACCELERATE and opt.current() is not None
    assert opt.measured_speedup() == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------
# drift
# ------------------------------------------------------------------------------------------
def test_drift_reopens_search_from_current_set():
    L = 8
    cfg = OptimizerConfig(context_window=4, max_opt_iter=10, max_tolerance_iter=10, drift_window=16,
                          drift_drop=0.5, fallback=False)
    opt = SkipOptimizer(L, cfg, costs=synthetic_costs(L, 0.1))
    d = Driver(opt, lambda s: 0.8)
    d.request(60, accept=lambda s: (4, 5))  # search stops, then acceptance 0.8 is the baseline
    assert opt.state.phase == ACCELERATE and opt.state.baseline_acceptance == pytest.approx(0.8)
    best = opt.best()[0]
    d.request(15, accept=lambda s: (3, 5))  # 0.6: not "well below"
    assert opt.state.phase == ACCELERATE
    d.request(40, accept=lambda s: (1, 5))  # 0.2 < 0.5 x 0.8: task switch
    assert opt.state.drift_reopenings == 1 and opt.state.round == 1
    rescored = [e for e in opt.history if e.round == 1]
    assert rescored and rescored[0].source == "rescore" and rescored[0].skip == best


# ------------------------------------------------------------------------------------------
# with the decoder: losslessness, stats, trace
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3_text", "phi3"])
@pytest.mark.parametrize("preset", ["default", "reference"])
def test_lossless_with_optimizer_running(arch, preset):
    """Greedy output equals model.generate over a stream of requests while the optimiser searches."""
    model = tiny_model(arch, seed=1)
    if preset == "reference":  # drafts on every step whatever the cost: exercises speculation
        cfg = OptimizerConfig.reference(context_window=6, bayes_interval=5, max_opt_iter=40)
    else:
        cfg = OptimizerConfig(context_window=6, bayes_interval=5, max_opt_iter=40, max_opt_share=1.0)
    dec = SwiftDecoder(model, optimizer=cfg)
    dec.costs = cheap_tree_costs()  # a device where a skip set can pay: the default decoder searches
    gen = torch.Generator().manual_seed(7)
    drafted = 0
    for r in range(4):
        prompt = torch.randint(97, (1, int(torch.randint(1, 40, (1,), generator=gen))), generator=gen)
        res = dec.generate(prompt, max_new_tokens=40)
        ref = model.generate(prompt, max_new_tokens=40, do_sample=False)
        assert torch.equal(res.sequences, ref), (arch, preset, r)
        drafted += res.stats.draft_tokens
        assert len(res.stats.trace) == res.stats.steps
    assert dec.optimizer.state.iterations > 0
    if preset == "reference":
        assert drafted > 0
    state = res.stats.optimizer
    json.dumps(state)
    for key in ("phase", "iterations", "best_matchness", "current_set", "predicted_speedup", "measured_speedup"):
        assert key in state


def test_the_search_is_skipped_where_no_skip_set_can_pay_on_the_device():
    """With verify costs as measured for qwen-0.5b fp32 on a 2-core AVX2 CPU (2 nodes: 1.86 plain
    steps, 8: 2.33), no layer-skipped draft pays even at 80 % acceptance, so the default decoder
    scores no proposals (they cost 6 % of a first request there) and says why. A device with cheap
    trees gets the search, and so do the paper's loop and ``search_gate=False`` (``swiftsd tune``)
    whatever the cost."""
    from swiftsd.cli.generate import drafting_line
    from swiftsd.core.forecast import layerskip_ceiling

    rel = (1.0, 1.86, 2.05, 2.33, 2.74, 3.27, 5.33)
    dear = replace(cheap_tree_costs(), verify_sizes=(1, 2, 4, 8, 16, 32, 64), verify_times=tuple(0.01 * r for r in rel))
    assert layerskip_ceiling(dear, 0.6, 4, 25).rate < 1.0 < layerskip_ceiling(cheap_tree_costs(), 0.6, 4, 25).rate
    model = tiny_model("llama", seed=0)
    cfg = {"context_window": 6, "max_opt_share": 1.0}
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(97, (1, 12), generator=gen) for _ in range(3)]
    iterations = {}
    for name, costs, kw in (("dear", dear, {}), ("cheap", cheap_tree_costs(), {}),
                            ("paper", dear, {"method": "swift-paper"}), ("ungated", dear, {"search_gate": False})):
        dec = SwiftDecoder(model, optimizer=cfg, **kw)
        dec.costs = costs
        for p in prompts:
            res = dec.generate(p, max_new_tokens=30)
            assert torch.equal(res.sequences, model.generate(p, max_new_tokens=30, do_sample=False)), name
        iterations[name] = dec.optimizer.state.iterations
        if name == "dear":
            assert res.stats.optimizer["layerskip_ceiling"] < 1.0
            assert "cannot pay even at 80% acceptance" in drafting_line(res.stats, optimizing=True)
        else:
            assert "layerskip_ceiling" not in res.stats.optimizer
    assert iterations["dear"] == 0 and iterations["cheap"] > 0 and iterations["paper"] > 0
    assert iterations["ungated"] > 0


def test_sampling_runs_with_optimizer():
    model = tiny_model("qwen2", seed=2)
    dec = SwiftDecoder(model, optimizer=OptimizerConfig.reference(context_window=6))
    dec.costs = cheap_tree_costs()
    a = dec.generate([1, 2, 3], max_new_tokens=30, temperature=0.8, seed=3)
    assert a.sequences.shape[1] <= 33 and dec.optimizer.state.iterations > 0


def test_explicit_skip_set_bypasses_optimizer():
    model = tiny_model("llama", seed=0)
    dec = SwiftDecoder(model, optimizer=OptimizerConfig(context_window=4))
    res = dec.generate([5, 6, 7], max_new_tokens=20, skip_set=SkipSet())
    assert res.stats.optimizer is None and res.stats.skip_set == {"attn": [], "mlp": []}
    assert dec.optimizer.state.steps == 0


def test_optimizer_config_validation():
    from swiftsd import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="objective"):
        OptimizerConfig(objective="speed")
    with pytest.raises(InvalidArgumentError, match="context_window"):
        OptimizerConfig(context_window=0)
    with pytest.raises(InvalidArgumentError, match="ratio_range"):
        OptimizerConfig(ratio_range=(0.5, 0.2))
    with pytest.raises(InvalidArgumentError, match="budget_decay"):
        OptimizerConfig(budget_decay=0.0)
    with pytest.raises(InvalidArgumentError, match="budget_decay"):
        OptimizerConfig(budget_decay=1.5)
    with pytest.raises(InvalidArgumentError, match="miss_scale_prior"):
        OptimizerConfig(miss_scale_prior=-1.0)
    with pytest.raises(InvalidArgumentError, match="max_opt_share"):
        OptimizerConfig(max_opt_share=0.0)
    with pytest.raises(InvalidArgumentError, match="unknown optimizer option"):
        SwiftDecoder(tiny_model("llama"), optimizer={"skip_ration": 0.3})
    for flag in ("search_gate", "planner", "copy_probe", "use_tree", "cost_cache"):  # "no" would read as True
        with pytest.raises(InvalidArgumentError, match=f"{flag} must be True or False, got 'no'"):
            SwiftDecoder(tiny_model("llama"), **{flag: "no"})
    with pytest.raises(InvalidArgumentError, match="optimizer must be an OptimizerConfig.*got str"):
        SwiftDecoder(tiny_model("llama"), optimizer="reference")
    assert SwiftDecoder(tiny_model("llama"), optimizer=None).config.optimizer == OptimizerConfig()
    assert SwiftDecoder(tiny_model("llama"), optimizer=None, method="swift-paper").config.optimizer == \
        OptimizerConfig.reference()
    assert not math.isnan(OptimizerConfig.reference().skip_ratio)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_matchness_under_the_coupled_sampler_scores_the_noise_the_tokens_were_drawn_with(arch):
    """Sampled tokens are argmax(warped logits + the seed's noise): with that noise the full model
    (the empty set) predicts every one (matchness 1), a plain argmax only some; the decoder passes a
    sampling request's noise, so the optimiser's scores mean acceptance under the sampler in use."""
    from swiftsd.config import SamplingParams
    from swiftsd.drafters.layerskip import matchness
    from swiftsd.engine.verify import PositionNoise

    model = tiny_model(arch, seed=3)
    dec = SwiftDecoder(model, optimizer=False, max_draft=0)
    P, window, seed, params = 12, 16, 11, SamplingParams(temperature=0.9)
    prompt = torch.randint(97, (1, P), generator=torch.Generator().manual_seed(5))
    tokens = dec.generate(prompt, max_new_tokens=window + 2, temperature=0.9, seed=seed).sequences[0].tolist()
    cache = SlotKVCache(dec.num_layers, P + 64)
    dec.adapter.forward(torch.tensor(tokens[:P]), torch.arange(P), cache=cache,
                        block_mask=torch.ones(P, P, dtype=torch.bool).tril_())
    cache.rollback(P)
    noise = PositionNoise(seed, dec.adapter.vocab_size, dec.adapter.device)
    coupled = matchness(dec.adapter, SkipSet(), tokens, P, cache, window, params=params, noise=noise)
    plain = matchness(dec.adapter, SkipSet(), tokens, P, cache, window)
    assert coupled == 1.0
    assert plain < 0.9  # sampled at 0.9 from a random model: most tokens are not the argmax
    skip = SkipSet(attn=[1, 2], mlp=[1, 2, 3])
    assert matchness(dec.adapter, skip, tokens, P, cache, window, params=params, noise=noise) < 1.0
    assert cache.length == P
