"""The drafters on known token sequences, the trie they fill, the suffix index's bound and state,
and the planner's choices under noisy timings."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from swiftsd import SkipSet, SwiftDecoder
from swiftsd.drafters import DraftRequest, DraftTrie, LookupDrafter, SuffixDrafter
from swiftsd.drafters.ngram import add_continuations
from swiftsd.engine.cost import CostModel
from swiftsd.core.bounds import CopyProbe, SearchBudget, WallClockBound
from swiftsd.core.forecast import best_node_count, forecast_layerskip, plan_layerskip
from tiny import tiny_model


def _paths(trie: DraftTrie) -> set[tuple[int, ...]]:
    """Every root-to-leaf token path of a trie (root excluded)."""
    out = set()
    kids = {i: [j for j in range(len(trie)) if trie.parents[j] == i] for i in range(len(trie))}
    for leaf in (i for i in range(1, len(trie)) if not kids[i]):
        path, j = [], leaf
        while j > 0:
            path.append(trie.tokens[j])
            j = trie.parents[j]
        out.add(tuple(path[::-1]))
    return out


# ---------------------------------------------------------------------------- the trie
def test_trie_merges_shared_prefixes_and_keeps_the_larger_estimate() -> None:
    t = DraftTrie.rooted(9)
    t.add_path([1, 2, 3], [0.5, 0.5, 0.5], "a")
    t.add_path([1, 2, 4], [0.9, 0.8, 0.1], "b")
    assert len(t) == 5  # root, 1, 2, 3, 4: the prefix 1, 2 is one branch
    assert t.sources[1] == {"a", "b"} and t.sources[3] == {"a"} and t.sources[4] == {"b"}
    assert t.prob[1] == 0.9 and t.score[2] == pytest.approx(0.72)
    assert t.score[3] == pytest.approx(0.72 * 0.5)  # rescored when an ancestor's estimate rose


def test_trie_select_keeps_the_best_nodes_and_a_valid_trie() -> None:
    t = DraftTrie.rooted(0)
    t.add_path([1, 2, 3, 4], [0.9, 0.9, 0.9, 0.9], "a")
    t.add_path([5, 6], [0.3, 0.9], "b")
    t.add_path([1, 7], [0.9, 0.2], "c")
    small = t.select(4)
    assert len(small) == 4 and _paths(small) == {(1, 2, 3)}
    for i in range(1, len(small)):
        assert 0 <= small.parents[i] < i
    assert t.select(len(t)) is t


# ---------------------------------------------------------------------------- prompt lookup
def test_lookup_proposes_every_earlier_match_longest_first() -> None:
    # "7 8" occurs twice before the end, followed by 1 2 and by 3 4; the text ends in "7 8"
    toks = [7, 8, 1, 2, 9, 7, 8, 3, 4, 5, 7, 8]
    d = LookupDrafter(min_n=1, max_n=2, max_depth=2)
    t = DraftTrie.rooted(toks[-1])
    d.propose(DraftRequest(tokens=toks, prompt_len=len(toks)), t, budget=16)
    paths = _paths(t)
    assert (1, 2) in paths and (3, 4) in paths  # both continuations, not only the most recent
    # only continuations of the last token's matches: 8 is followed by 1 and by 3, nothing else
    assert {t.tokens[c] for c in range(1, len(t)) if t.parents[c] == 0} == {1, 3}
    assert all(t.score[i] > 0 for i in range(1, len(t)))


def test_lookup_shares_favour_the_longest_then_the_most_recent_match() -> None:
    """Each match weighs 0.8 ** its rank (longest first, then most recent): a 2-token match
    outweighs either 1-token one, and a recent occurrence an old one. Counted alike, all
    three continuations had a share of 1/3."""
    # the text ends in "5 7": "5 7" was followed by 1; "7" alone later by 3, then by 4
    toks = [5, 7, 1, 9, 7, 3, 9, 7, 4, 2, 5, 7]
    d = LookupDrafter(min_n=1, max_n=2, max_depth=1)
    t = DraftTrie.rooted(toks[-1])
    d.propose(DraftRequest(tokens=toks, prompt_len=len(toks)), t, budget=8)
    first = {t.tokens[c]: c for c in range(1, len(t)) if t.parents[c] == 0}
    assert set(first) == {1, 3, 4}
    total = 1 + 0.8 + 0.64
    shares = {tok: t.tags["lookup"][node][1] for tok, node in first.items()}
    assert shares == pytest.approx({1: 1 / total, 4: 0.8 / total, 3: 0.64 / total})
    assert t.prob[first[1]] > t.prob[first[4]] > t.prob[first[3]]  # one prior: ordered as the shares
    with pytest.raises(ValueError, match="rank_decay"):
        add_continuations(DraftTrie.rooted(0), [(1, [1])], 4, 1, d.calib, "lookup", rank_decay=0.0)


def test_lookup_respects_its_budget_and_learns() -> None:
    toks = list(range(20)) * 3
    d = LookupDrafter(max_depth=16)
    req = DraftRequest(tokens=toks, prompt_len=len(toks))
    t = DraftTrie.rooted(toks[-1])
    d.propose(req, t, budget=5)
    assert len(t) == 6 and _paths(t) == {(0, 1, 2, 3, 4)}
    before = t.prob[1]
    accepted = [1, 2, 3, 4, 5]
    for _ in range(10):  # verification keeps accepting: the estimate rises towards 1
        d.observe(req, t, accepted)
    t2 = DraftTrie.rooted(toks[-1])
    d.propose(req, t2, budget=5)
    assert t2.prob[1] > before


def test_a_request_that_does_not_copy_outweighs_the_streams_copying_history() -> None:
    """After a summarisation-like stream (copies accepted, many trials), a request whose copies
    fail stops trusting them within about a dozen trials; the stream's fit alone would still
    say 0.9. The stream learns from it too, and the next request starts from the stream's."""
    toks = [5, 6, 7, 1, 2, 5, 6, 7, 3, 4, 5, 6, 7]
    d = LookupDrafter(min_n=1, max_n=3, max_depth=2)
    for b in (f"n{n}d{k}{r}" for n in (1, 2, 3) for k in (1, 2) for r in "hc"):
        d.calib.hits[b], d.calib.mass[b] = 90.0, 100.0
    req = DraftRequest(tokens=toks, prompt_len=len(toks))
    first = DraftTrie.rooted(toks[-1])
    d.propose(req, first, budget=8)
    depth1 = [i for i in range(1, len(first)) if first.parents[i] == 0]
    assert sum(first.prob[i] for i in depth1) == pytest.approx(d.calib.factor("n3d1c")) and len(depth1) == 2
    assert d.calib.factor("n3d1c") > 0.85  # no counts of its own yet: the stream's estimate
    for _ in range(12):  # each verification accepts nothing of it
        t = DraftTrie.rooted(toks[-1])
        d.propose(req, t, budget=8)
        d.observe(req, t, [])
    late = DraftTrie.rooted(toks[-1])
    d.propose(req, late, budget=8)
    p_late = sum(late.prob[i] for i in range(1, len(late)) if late.parents[i] == 0)
    assert p_late < 0.4  # the request's own 12 failures weigh 12 against the prior's 8
    stream = d.calib.factor("n3d1c")
    assert 0.7 < stream < 0.9  # the stream saw them too, but its 100 trials of history hold
    fresh = DraftTrie.rooted(toks[-1])
    d.propose(DraftRequest(tokens=toks, prompt_len=len(toks)), fresh, budget=8)
    p_fresh = sum(fresh.prob[i] for i in range(1, len(fresh)) if fresh.parents[i] == 0)
    assert p_fresh == pytest.approx(stream, rel=1e-6)


def test_lookup_index_grows_with_the_text() -> None:
    d = LookupDrafter()
    req = DraftRequest(tokens=[1, 2, 3], prompt_len=3)
    t = DraftTrie.rooted(3)
    d.propose(req, t, 8)
    assert len(t) == 1  # nothing repeats yet
    req.tokens += [4, 1, 2]
    t = DraftTrie.rooted(2)
    d.propose(req, t, 8)
    assert _paths(t) == {(3, 4, 1, 2)}


# ---------------------------------------------------------------------------- suffix index
def test_suffix_proposes_what_followed_in_earlier_requests_by_frequency() -> None:
    d = SuffixDrafter(max_tokens=1000, min_n=2, max_n=3)
    for _ in range(3):
        d.end_request(DraftRequest(tokens=[5, 6, 7, 8, 9], prompt_len=2))
    d.end_request(DraftRequest(tokens=[5, 6, 7, 1, 2], prompt_len=2))
    t = DraftTrie.rooted(7)
    d.propose(DraftRequest(tokens=[3, 6, 7], prompt_len=3), t, budget=10)
    first = {t.tokens[c]: c for c in range(1, len(t)) if t.parents[c] == 0}
    assert set(first) == {8, 1}
    assert t.prob[first[8]] > t.prob[first[1]]  # seen three times against once
    assert (8, 9) in _paths(t) and (1, 2) in _paths(t)


def test_suffix_memory_bound_holds_over_many_requests_and_reset_clears() -> None:
    d = SuffixDrafter(max_tokens=500, min_n=2, max_n=4)
    g = torch.Generator().manual_seed(0)
    for i in range(300):
        n = int(torch.randint(5, 80, (1,), generator=g))
        d.end_request(DraftRequest(tokens=torch.randint(0, 50, (n,), generator=g).tolist(), prompt_len=2))
        assert d.size <= 500
        held = sum(len(toks) for _, toks in d.docs)
        assert held == d.size
        assert set(d.by_id) == {i for i, _ in d.docs}
    # the index only points into documents still held
    live = set(d.by_id)
    assert all(doc in live for hits in d.index.ends.values() for doc, _ in hits)
    d.reset()
    assert d.size == 0 and not d.index.ends and not d.docs


def test_suffix_state_round_trips_through_json() -> None:
    d = SuffixDrafter(max_tokens=200)
    for seq in ([1, 2, 3, 4, 5], [2, 3, 9, 9], [7, 1, 2, 3, 4]):
        d.end_request(DraftRequest(tokens=seq, prompt_len=1))
    d2 = SuffixDrafter(max_tokens=200)
    d2.load_state_dict(json.loads(json.dumps(d.state_dict())))
    for tail in ([2, 3], [1, 2], [9]):
        a, b = DraftTrie.rooted(tail[-1]), DraftTrie.rooted(tail[-1])
        d.propose(DraftRequest(tokens=tail, prompt_len=1), a, 10)
        d2.propose(DraftRequest(tokens=tail, prompt_len=1), b, 10)
        assert a.tokens == b.tokens and a.parents == b.parents and a.prob == b.prob


def test_suffix_bound_is_validated() -> None:
    from swiftsd.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="suffix_max_tokens"):
        SuffixDrafter(max_tokens=0)


# ---------------------------------------------------------------------------- the planner
def _costs(verify_rel=(1.0, 1.5, 1.6, 1.8, 2.2, 3.0, 4.5), full=0.05) -> CostModel:
    sizes = (1, 2, 4, 8, 16, 32, 64)
    return CostModel(full_step=full, attn=0.0005, mlp=0.0008, lm_head=0.005, fixed=0.002, draft_extra=0.0,
                     verify_sizes=sizes, verify_times=tuple(r * full for r in verify_rel), num_layers=6)


def test_best_node_count_verifies_only_what_pays() -> None:
    costs = _costs()
    assert best_node_count([0.05, 0.04], costs, 0.0, 64)[0] == 1  # unlikely drafts: a plain step
    n, rate = best_node_count([0.95, 0.9, 0.85, 0.8, 0.1, 0.05], costs, 0.0, 64)
    assert n == 5 and rate > 1.5  # the four likely nodes, not the unlikely tail
    assert best_node_count([0.99] * 100, costs, 0.0, 8)[0] == 8  # the cap holds


def test_layerskip_forecast_follows_acceptance_and_cost() -> None:
    costs = _costs()
    skip = SkipSet(attn=[1, 2, 3, 4])
    assert forecast_layerskip(costs, skip, 0.1, 4, 10, 1.0).rate < 1.0  # bad drafts never pay
    good = forecast_layerskip(costs, skip, 0.95, 4, 10, 1.0)
    assert good.depth >= 1
    # with the same acceptance, a draft that costs more forecasts a lower rate
    heavy = forecast_layerskip(costs, SkipSet(), 0.95, 4, 10, 1.0)
    assert heavy.rate < good.rate


def test_layerskip_forecast_prices_the_free_drafts_nodes_it_credits() -> None:
    """Where nodes are dear (smollm2 bf16 on an AVX2 CPU: 2 / 4 / 8 nodes cost 1.42 / 2.27 / 3.4
    steps), a free plan of 7 nodes worth 4 tokens verified alone beats adding a layer-skip draft
    to it: its nodes must be verified with the draft's. Credited at 1 + 2k nodes, the draft looked
    like 2x plain there."""
    rel = (1.0, 1.42, 2.27, 3.4, 6.6, 11.1, 21.2)
    dear = replace(_costs(verify_rel=rel), attn=0.01, mlp=0.01)  # a cheap draft: c = 0.14
    skip = SkipSet(attn=[1, 2, 3, 4], mlp=[1, 2, 3, 4])
    free_n, free_rate = best_node_count([0.9, 0.8, 0.7, 0.6, 0.5, 0.5], dear, 0.0, 64)
    gain = 1.0 + sum(sorted([0.9, 0.8, 0.7, 0.6, 0.5, 0.5], reverse=True)[: free_n - 1])
    priced = forecast_layerskip(dear, skip, 0.6, 4, 10, gain, free_n)
    credited_only = forecast_layerskip(dear, skip, 0.6, 4, 10, gain)
    assert credited_only.rate > free_rate * 1.02  # the old forecast ran the draft
    assert priced.rate < free_rate  # priced with the free nodes, it does not
    # with no free plan the two agree
    assert forecast_layerskip(dear, skip, 0.6, 4, 10, 1.0, 1) == forecast_layerskip(dear, skip, 0.6, 4, 10, 1.0)


CHEAP_NODES = (1.0, 1.02, 1.05, 1.1, 1.2, 1.4, 2.0)  # native bf16 products: 8 nodes cost 1.1 steps


def test_wall_clock_can_only_lower_a_forecast() -> None:
    """Noisy timings that flatter the draft (plain steps slow, drafted ones fast) never make a losing
    draft look good: the bound only lowers, and only when drafted steps measure dearer than priced."""
    flattering = WallClockBound()
    for _ in range(40):
        flattering.record(True, 0.01, 3.0)  # priced at 3 plain steps, timed fast under noise
        flattering.record(False, 0.5, 1.0)  # a plain step timed slow by a load burst
    assert flattering.correction() == 1.0
    assert flattering.bound(0.3) == 0.3 and flattering.bound(2.0) == 2.0  # no forecast is raised
    honest = WallClockBound()
    for _ in range(40):
        honest.record(True, 0.6, 2.0)  # 0.3 s per priced step
        honest.record(False, 0.05, 1.0)  # 0.05 s per priced step: the draft is 6x dearer than priced
    assert honest.correction() == pytest.approx(6.0)
    assert honest.bound(2.0) == pytest.approx(2.0 / 6.0)
    few = WallClockBound(min_steps=8)
    for _ in range(7):
        few.record(True, 0.6, 2.0), few.record(False, 0.05, 1.0)
    assert few.correction() == 1.0  # too few steps to say anything
    again = WallClockBound()
    again.load_state_dict(honest.state_dict())
    assert again.state_dict() == honest.state_dict() and again.correction() == honest.correction()
    again.load_state_dict({"drafted": [[3, 0.1]], "plain": [0.05]})  # the older layout: afresh
    assert again.state_dict() == {"drafted": [], "free": []}


def test_planner_prices_only_the_depth_it_lets_the_draft_run() -> None:
    """The draft runs at most the depth the forecast priced (it ran two more, unpriced, on qwen-0.5b
    bf16: 2.6 forwards a step where 2.05 were priced), and stops earlier on mass times acceptance."""
    costs = replace(_costs(verify_rel=CHEAP_NODES), attn=0.005, mlp=0.005)  # c = 0.2
    skip = SkipSet(attn=[1, 2, 3, 4], mlp=[1, 2, 3, 4])
    trie = DraftTrie.rooted(5)
    plan = plan_layerskip(costs, trie, skip, 0.9, 4, 20, 64, WallClockBound())
    fc = forecast_layerskip(costs, skip, 0.9, 4, 20, 1.0, 1)
    assert plan.run_model and plan.max_depth == fc.depth < 20 and plan.priced == pytest.approx(fc.time)
    assert plan.min_mass == pytest.approx(fc.cost_per_depth / 0.9)
    biased = WallClockBound()
    for _ in range(10):
        biased.record(True, 3.0 * fc.time, fc.time), biased.record(False, 1.0, 1.0)
    assert not plan_layerskip(costs, trie, skip, 0.9, 4, 20, 64, biased).run_model


def test_measured_draft_bias_stops_the_draft_and_the_search() -> None:
    """Counts say the draft pays, but its steps measure 3x dearer than priced against the other
    steps: the planner stops drafting with the layer-skip model, and the optimiser stops searching."""
    model = tiny_model("llama", seed=0)
    dec = SwiftDecoder(model, skip_set=SkipSet(attn=[1, 2, 3, 4], mlp=[1, 2, 3, 4]), drafters=("layerskip",),
                       cost_cache=False)
    dec.costs = replace(_costs(verify_rel=CHEAP_NODES), attn=0.005, mlp=0.005)
    ls = dec.drafters["layerskip"]
    ls.use_skip(dec.skip_set)
    ls.hits["full"], ls.trials["full"] = 95.0, 100.0
    ids = torch.arange(12)[None]
    assert dec.planner.search_pays()
    assert dec.plan(DraftTrie.rooted(3), context=ids.shape[1], remaining=20).run_model
    for _ in range(20):
        dec.planner.wall.record(True, 3.0, 1.0)
        dec.planner.wall.record(False, 1.0, 1.0)
    assert not dec.planner.search_pays()
    res = dec.generate(ids, max_new_tokens=120)  # unbiased, the search scores 5 sets in 120 tokens
    assert res.stats.per_drafter.get("layerskip", {"proposed": 0})["proposed"] == 0
    assert dec.optimizer is not None and dec.optimizer.status()["iterations"] == 0


def test_search_budget_spends_what_the_draft_earns() -> None:
    b = SearchBudget(allowance=4.0, cap=10.0)
    assert b.open()
    b.spend(5.0)  # the search scored proposals worth 5 plain steps
    assert not b.open()
    b.earn(8, 2.0, 2.0)  # 8 tokens in 2 priced steps, where the free plan needed 4 steps: +2
    assert b.open() and b.balance == pytest.approx(1.0)
    b.earn(2, 2.0, 3.0)  # a losing draft step (the free plan: 1 step; the draft: 3) drains it
    assert not b.open() and b.balance == pytest.approx(-1.0)
    for _ in range(100):
        b.earn(10, 1.0, 1.0)
    assert b.balance == 10.0  # capped: a long winning run does not buy an endless search
    again = SearchBudget(allowance=4.0, cap=10.0)
    again.load_state_dict(b.state_dict())
    assert again.balance == b.balance


def test_a_spent_search_budget_stops_the_search() -> None:
    """The search runs while the draft has earned back its cost; spent, it stops, and says why."""
    from swiftsd.cli.generate import drafting_line
    iterations, balance = {}, {}
    for spent in (False, True):
        model = tiny_model("llama", seed=0)
        dec = SwiftDecoder(model, skip_set=SkipSet(attn=[1, 2, 3, 4], mlp=[1, 2, 3, 4]), drafters=("layerskip",),
                           cost_cache=False)
        dec.costs = replace(_costs(verify_rel=CHEAP_NODES), attn=0.005, mlp=0.005)
        if spent:
            dec.planner.budget.balance = 0.0
        res = dec.generate(torch.arange(12)[None], max_new_tokens=120)
        iterations[spent], balance[spent] = dec.optimizer.status()["iterations"], dec.planner.budget.balance
    assert iterations[False] > 0 and balance[False] != SearchBudget().allowance  # it searched, and paid for it
    assert iterations[True] == 0 and res.stats.optimizer["search_budget"] <= 0.0
    from swiftsd.stats import GenerationStats
    undrafted = GenerationStats(optimizer={"search_budget": -1.0})
    assert "stopped searching" in drafting_line(undrafted, optimizing=True)


def test_planner_stays_out_of_a_losing_layerskip_draft_under_noisy_timings() -> None:
    """The rag-prompt failure of the first wave: noisy wall-clock timings read a 3x speed-up
    while acceptance was 26 %. The planner decides on acceptance counts and the cost model,
    so it drafts with the layer-skip model only while the counts say it pays."""
    model = tiny_model("llama", seed=0)
    dec = SwiftDecoder(model, optimizer=False, skip_set=SkipSet(attn=[1, 2, 3, 4], mlp=[1, 2, 3, 4]),
                       drafters=("layerskip",), cost_cache=False)
    dec.costs = _costs()
    ls = dec.drafters["layerskip"]
    ls.use_skip(dec.skip_set)
    ls.hits["full"], ls.trials["full"] = 26.0, 100.0  # what verification counted
    for _ in range(40):  # timings that flatter the draft
        dec.planner.wall.record(True, 0.001, 5.0)
        dec.planner.wall.record(False, 1.0, 1.0)
    ids = torch.arange(12)[None]
    res = dec.generate(ids, max_new_tokens=30)
    assert res.stats.per_drafter.get("layerskip", {"proposed": 0})["proposed"] == 0
    assert res.stats.plain_steps == res.stats.steps


def test_any_vocabulary_size_works() -> None:
    """A vocabulary smaller than the widest tree level (10) and than the draft vocabulary."""
    model = tiny_model("llama", seed=0, vocab_size=8)
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                              pad_token_id=0)
    for cfg in ({}, dict(planner=False), dict(method="swift-paper"), dict(planner=False, frontier=12)):
        dec = SwiftDecoder(model, cost_cache=False, **cfg)
        assert torch.equal(dec.generate(ids, max_new_tokens=20).sequences, want)
        dec.generate(ids, max_new_tokens=10, temperature=1.0, seed=1)  # sampling too


# ---------------------------------------------------------------------------- the copy probe
def test_copy_probe_backs_off_when_copies_fail_and_follows_a_copy_run() -> None:
    probe = CopyProbe(start=4, max_wait=16, nodes=8, margin=1.5)
    cost = 2.4  # 8 nodes: 2.4 plain steps, so a probe pays from 1.5 * 2.4 = 3.6 tokens (3 accepted + bonus)

    def gaps(n: int, accepted: int) -> list[int]:
        out = []
        for _ in range(n):
            k = 1
            while not probe.due():
                k += 1
            out.append(k)
            probe.result(accepted=accepted, cost=cost)
        return out

    assert gaps(5, accepted=1) == [4, 8, 16, 16, 16]  # every probe fails: the wait doubles to its cap
    probe = CopyProbe(start=4, max_wait=64, nodes=8, margin=1.5)
    assert gaps(2, accepted=2) == [4, 4]  # 2 accepted for 2.4 steps: a near-miss, no run, no back-off
    probe.result(accepted=5, cost=cost)  # a probe that copied: probe again at the next step
    assert probe.due()
    probe.result(accepted=3, cost=cost)
    assert probe.due()
    probe.result(accepted=0, cost=cost)  # the end of a run of two paying probes: the wait before it, not doubled
    assert [probe.due() for _ in range(4)] == [False] * 3 + [True]
    probe.result(accepted=6, cost=cost)  # a run of one paying probe ...
    assert probe.due()
    probe.result(accepted=0, cost=cost)  # ... ended by a failure: a lucky probe, so the wait doubles
    assert [probe.due() for _ in range(8)] == [False] * 7 + [True]
    probe.result(accepted=1, cost=cost)  # a cold failure doubles it again
    assert [probe.due() for _ in range(16)] == [False] * 15 + [True]


def _repeating_stream_decoder(copy_probe: bool):
    model = tiny_model("llama", seed=0)
    dec = SwiftDecoder(model, optimizer=False, drafters=("lookup",), cost_cache=False, copy_probe=copy_probe)
    dec.costs = _costs()
    calib = dec.drafters["lookup"].calib
    for b in (f"n{n}d{d}{r}" for n in (1, 2, 3) for d in (1, 2, 3, 5, 9) for r in "hc"):  # copies never pay
        calib.hits[b], calib.mass[b] = 0.0, 1e6
    return model, dec


def test_copy_drafts_the_planner_distrusts_are_retried_and_pay_again() -> None:
    """The exploration trap: a calibration that learned "copies never pay" stops the planner
    from verifying any copy, so it can never learn that this request copies. The probe
    retries long matches; on a prompt that repeats itself they are accepted, losslessly."""
    ids = torch.arange(3, 17).repeat(1, 3)  # the lossless drafter tests' repeating prompt: lookup pays here
    model, trapped = _repeating_stream_decoder(copy_probe=False)
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=80,
                              pad_token_id=0)
    res = trapped.generate(ids, max_new_tokens=80)
    assert torch.equal(res.sequences, want) and "lookup" not in res.stats.per_drafter  # never verified
    _, probing = _repeating_stream_decoder(copy_probe=True)
    res = probing.generate(ids, max_new_tokens=80)
    assert torch.equal(res.sequences, want)
    lookup = res.stats.per_drafter["lookup"]
    assert lookup["accepted"] >= 10 and res.stats.steps < 80 - 10  # probes copied, and saved steps
