"""The quantized self-draft in the loop (issue 33): settings, who owns the packed weights, the narrow
tree, and the target left untouched. Losslessness over every family is in test_quant_lossless.py."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch

from lossless_helpers import _first_diff, _ids, plain_generate
from swiftsd import SkipSet, SwiftDecoder
from swiftsd.config import SwiftConfig
from swiftsd.engine.quant_pack import kernel_works
from swiftsd.errors import InvalidArgumentError, QuantFallbackWarning
from tiny import tiny_model

pytestmark = pytest.mark.skipif(not (kernel_works("int8", "cpu", torch.bfloat16)
                                     and kernel_works("int4", "cpu", torch.bfloat16)),
                                reason="this torch build has no working CPU int8/int4 weight-only kernels")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=0)


def _decoder(model, **kw) -> SwiftDecoder:
    """A decoder whose model draft runs every step (planner off), caches off (no disk writes)."""
    return SwiftDecoder(model, **{"optimizer": False, "planner": False, "cost_cache": False, **kw})


def _generate(dec: SwiftDecoder, ids: torch.Tensor, n: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)  # the tiny vocabulary (97) is no int4 shape
        return dec.generate(ids, max_new_tokens=n)


# -- settings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(draft_precision="int2"), dict(draft_precision="fp8"), dict(quant_group=48),
                                 dict(quant_group=True), dict(quant_frontier=3), dict(quant_frontier=0),
                                 dict(quant_stop_threshold=1.5), dict(quant_stop_threshold="0.3"),
                                 dict(quant_draft_vocab=-1), dict(quant_draft_vocab=1.5)])
def test_bad_quant_settings_are_refused(bad) -> None:
    with pytest.raises(InvalidArgumentError):
        SwiftConfig.from_kwargs(bad)


def test_defaults_and_the_paper_method_drafts_at_full_precision() -> None:
    cfg = SwiftConfig()
    assert (cfg.draft_precision, cfg.quant_group, cfg.quant_frontier) == ("auto", 32, 1)
    assert cfg.precisions == ("full", "int8", "int4")
    assert SwiftConfig.from_kwargs({"draft_precision": "int4"}).precisions == ("int4",)
    assert SwiftConfig.from_kwargs({"method": "swift-paper"}).draft_precision == "full"
    assert SwiftConfig.from_kwargs({"method": "swift-paper", "draft_precision": "auto"}).precisions == ("full",)
    with pytest.raises(InvalidArgumentError, match="swift-paper"):
        SwiftConfig.from_kwargs({"method": "swift-paper", "draft_precision": "int8"})


# -- the weights: owned by the decoder, built on first use, never on the model ------------------------------
def test_full_precision_builds_no_quantized_weights(llama) -> None:
    dec = _decoder(llama, draft_precision="full", skip_set=SkipSet(attn=[2]))
    _generate(dec, _ids(12, 1), 20)
    assert dec.draft_weights.built() == {}
    assert dec.precision == "full"


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_forced_precision_drafts_on_its_packed_copies(llama, precision) -> None:
    dec = _decoder(llama, draft_precision=precision, drafters=("layerskip",))
    assert dec.draft_weights.built() == {}  # lazily: nothing until the draft first runs
    res = _generate(dec, _ids(16, 2), 40)
    built = dec.draft_weights.built()
    assert set(built) == {precision} and built[precision].precision == precision
    assert dec.skip_set.is_empty()  # a quantized draft may skip nothing: the packed copy is the draft
    assert res.stats.per_drafter["layerskip"]["proposed"] > 0
    assert res.stats.per_drafter["layerskip"]["accepted"] > 0
    assert torch.equal(res.sequences, plain_generate(llama, _ids(16, 2), 40))
    # the stats name the weights the draft read, step by step, and the summary says so
    per = res.stats.per_precision
    assert set(per) == {precision} and per[precision]["steps"] == sum(1 for f in res.stats.draft_forwards if f)
    assert per[precision]["accepted"] == sum(res.stats.layerskip_accepted)
    assert f"layerskip weights: {precision} {per[precision]['steps']} steps" in res.stats.summary()


def test_the_target_is_untouched_and_no_second_dense_copy_exists(llama) -> None:
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    storages = {p.untyped_storage().data_ptr() for p in llama.parameters()}
    attrs = set(vars(llama))
    dec = _decoder(llama, draft_precision="int4", drafters=("layerskip", "lookup"))
    _generate(dec, _ids(20, 3), 30)
    after = llama.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert {p.untyped_storage().data_ptr() for p in llama.parameters()} == storages
    assert set(vars(llama)) == attrs  # nothing hung on the model
    float_bytes = sum(p.nbytes for w in dec.draft_weights.built().values() for p in _packed_tensors(w)
                      if p.is_floating_point() and p.dim() == 2)
    assert float_bytes == 0  # the copies hold integer codes (plus 1-D / grouped scales), no dense float matrix


def _packed_tensors(qw):
    for p in qw.packed.values():
        yield p.weight


def test_the_quantized_copies_are_freed_with_the_decoder(llama) -> None:
    dec = _decoder(llama, draft_precision="int8")
    _generate(dec, _ids(10, 4), 12)
    ref = weakref.ref(dec.draft_weights.built()["int8"])
    del dec
    gc.collect()
    assert ref() is None


def test_the_cache_setting_decides_whether_weights_go_to_disk(llama, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(tmp_path))
    _generate(_decoder(llama, draft_precision="int8"), _ids(10, 5), 10)
    assert not (tmp_path / "quant").exists()
    _generate(_decoder(llama, draft_precision="int8", cost_cache=True), _ids(10, 5), 10)
    assert len(list((tmp_path / "quant").glob("*.pt"))) == 1


# -- the narrow tree -------------------------------------------------------------------------------------
def test_frontier_two_expands_two_nodes_and_hangs_siblings(llama) -> None:
    ids = _ids(24, 6)
    want = plain_generate(llama, ids, 60)
    one = _generate(_decoder(llama, draft_precision="int8", drafters=("layerskip",), quant_stop_threshold=0.0,
                             max_draft=4), ids, 60)
    two = _generate(_decoder(llama, draft_precision="int8", drafters=("layerskip",), quant_stop_threshold=0.0,
                             max_draft=4, quant_frontier=2), ids, 60)
    for res in (one, two):
        assert torch.equal(res.sequences, want), _first_diff(res.sequences, want)
    # frontier 1 is the paper's chain with siblings; frontier 2 drafts a second branch at every depth
    assert max(t - d for t, d in zip(one.stats.tree_sizes, one.stats.draft_lengths)) > 1  # siblings
    assert sum(two.stats.tree_sizes) > sum(one.stats.tree_sizes)


def test_drafting_stops_by_confidence(llama) -> None:
    ids = _ids(24, 7)
    eager = _generate(_decoder(llama, draft_precision="int4", quant_stop_threshold=0.0, max_draft=6,
                               drafters=("layerskip",)), ids, 40)
    wary = _generate(_decoder(llama, draft_precision="int4", quant_stop_threshold=1.0, max_draft=6,
                              stop_threshold=0.0, drafters=("layerskip",)), ids, 40)
    assert max(eager.stats.draft_lengths) == 6
    assert max(wary.stats.draft_lengths) == 1  # no top-1 probability exceeds 1: one depth a step
    # the paper's threshold governs the full-precision draft only
    full = _generate(_decoder(llama, draft_precision="full", quant_stop_threshold=1.0, stop_threshold=0.0,
                              max_draft=6, drafters=("layerskip",)), ids, 40)
    assert max(full.stats.draft_lengths) == 6


# -- cost per precision ----------------------------------------------------------------------------------
def _synthetic_costs():
    from swiftsd.engine.cost import CostModel, PrecisionCost

    q8 = PrecisionCost("int8", step=0.006, attn=0.0002, mlp=0.0003, head=0.001, extra=0.0, wide=1.3)
    q4 = PrecisionCost("int4", step=0.004, attn=0.0001, mlp=0.0002, head=0.0006, extra=0.0, wide=1.1)
    return CostModel(full_step=0.01, attn=0.0005, mlp=0.0008, lm_head=0.002, fixed=0.001, draft_extra=0.0,
                     verify_sizes=(1, 8), verify_times=(0.01, 0.012), num_layers=6, context=64, long_context=512,
                     long_times=(0.02, 0.03), precisions=(q8, q4))


def test_the_cost_model_prices_each_precision_and_round_trips() -> None:
    from swiftsd.engine.cost import CostModel

    costs = _synthetic_costs()
    skip = SkipSet(mlp=[1, 2])
    assert costs.measured_precisions() == ("full", "int8", "int4")
    assert costs.draft_cost(skip, "int4") < costs.draft_cost(skip, "int8") < costs.draft_cost(skip)
    assert costs.draft_cost(skip, "int8") == pytest.approx((0.006 - 2 * 0.0003) / 0.01)
    assert CostModel.from_dict(costs.to_dict()) == costs
    longer = costs.at_context(512)  # attention grows with the context at every precision alike
    grown = longer.full_step - costs.full_step
    assert grown > 0 and longer.precision_cost("int8").step == pytest.approx(0.006 + grown)
    with pytest.raises(KeyError):
        CostModel.from_dict({**costs.to_dict(), "precisions": []}).draft_cost(skip, "int4")


def test_a_decoder_measures_the_precisions_it_may_draft_at(llama) -> None:
    from swiftsd.engine.cost import COST_FORMAT

    assert COST_FORMAT >= 7
    dec = _decoder(llama, draft_precision="int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)
        costs = dec.costs
    q = costs.precision_cost("int8")
    assert costs.measured_precisions() == ("full", "int8")
    assert q.step > 0 and q.head > 0 and q.wide >= 1.0 and q.attn >= 0 and q.mlp >= 0
    assert _decoder(llama, draft_precision="full").costs.measured_precisions() == ("full",)


# -- the planner chooses the precision -----------------------------------------------------------------------
def _costs_where_quantized(pays: bool):
    """Full drafts dear (c about 0.9); the quantized step either cheap (c 0.2) or dearer than a plain step."""
    from dataclasses import replace

    from swiftsd.engine.cost import PrecisionCost

    base = replace(_synthetic_costs(), attn=0.0001, mlp=0.0001, long_context=0, long_times=(),
                   verify_sizes=(1, 8, 32, 64), verify_times=(0.01, 0.0105, 0.012, 0.016))
    step = 0.002 if pays else 0.02
    quant = tuple(PrecisionCost(p, step=step * f, attn=0.00001, mlp=0.00001, head=step / 4, extra=0.0, wide=1.1)
                  for p, f in (("int8", 1.0), ("int4", 0.7)))
    return replace(base, precisions=quant)


@pytest.mark.parametrize("pays", [False, True])
def test_the_planner_runs_a_quantized_draft_only_where_it_pays(llama, pays) -> None:
    dec = SwiftDecoder(llama, optimizer=False, cost_cache=False, drafters=("layerskip",))  # auto, planner on
    dec.costs = _costs_where_quantized(pays)
    before = dec.plan(_root(), 20, 10)  # no counts yet: both copies equally trusted, int4 the cheaper
    assert (before.run_model, before.precision) == ((True, "int4") if pays else (False, before.precision))
    ids = _ids(20, 8)
    res = _generate(dec, ids, 40)
    assert torch.equal(res.sequences, plain_generate(llama, ids, 40))
    built = dec.draft_weights.built()
    if pays:
        assert "int4" in built and res.stats.per_drafter["layerskip"]["proposed"] > 0
    else:
        assert built == {}  # never ran, so never even built
        assert not dec.plan(_root(), 20, 10).run_model


def _root():
    from swiftsd.drafters import DraftTrie

    return DraftTrie.rooted(3)


def test_the_choice_does_not_hang_on_wall_clock_noise(llama) -> None:
    dec = SwiftDecoder(llama, optimizer=False, cost_cache=False, drafters=("layerskip",))
    dec.costs = _costs_where_quantized(True)
    first = dec.plan(_root(), 20, 10)
    for _ in range(40):  # steps that ran faster than priced: the bound only lowers, it never raises
        dec.planner.wall.record(True, 1e-4, 5.0)
        dec.planner.wall.record(False, 1e-4, 1.0)
    again = dec.plan(_root(), 20, 10)
    assert (again.run_model, again.precision, again.max_depth) == (first.run_model, first.precision, first.max_depth)


def test_acceptance_counts_are_kept_per_precision_and_round_trip(llama) -> None:
    dec = _decoder(llama, draft_precision="int8", drafters=("layerskip",))
    _generate(dec, _ids(20, 9), 30)
    ls = dec.drafters["layerskip"]
    assert ls.trials.get("int8", 0) > 0 and ls.trials.get("full", 0) == 0
    fresh = _decoder(llama, draft_precision="int8", drafters=("layerskip",))
    fresh.load_state_dict(dec.state_dict())
    again = fresh.drafters["layerskip"]
    assert (again.hits, again.trials, again.skips) == (ls.hits, ls.trials, ls.skips)


def test_a_quantized_draft_scores_its_own_vocabulary(llama) -> None:
    """``quant_draft_vocab`` (0: the whole head) for quantized drafts, ``draft_vocab`` for full-precision ones."""
    ids = _ids(20, 11)
    prompt = ids[0].tolist()
    for kw, want in (({}, None), ({"quant_draft_vocab": 40}, 40)):
        dec = _decoder(llama, draft_precision="int4", drafters=("layerskip",), draft_vocab=30, **kw)
        assert dec.draft_head(prompt, set()).token_ids.numel() == 30
        got = dec.draft_head(prompt, set(), quantized=True)
        assert (got is None) if want is None else got.token_ids.numel() == want
        res = _generate(dec, ids, 30)
        assert torch.equal(res.sequences, plain_generate(llama, ids, 30))
        assert res.stats.per_precision["int4"]["steps"] > 0
