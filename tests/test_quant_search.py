"""The optimiser searches skip sets at the precision in use (issue 33, part 3): forced, or with
``auto`` the one the cost model prefers; the sets are priced and scored at that precision's weights."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from lossless_helpers import _ids, plain_generate
from swiftsd import SkipSet, SwiftDecoder
from swiftsd.engine.cost import PrecisionCost
from swiftsd.engine.quant_pack import kernel_works
from swiftsd.errors import InvalidArgumentError, QuantFallbackWarning
from swiftsd.optimize import SkipOptimizer
from test_quant_draft import _synthetic_costs
from tiny import tiny_model

pytestmark = pytest.mark.skipif(not (kernel_works("int8", "cpu", torch.bfloat16)
                                     and kernel_works("int4", "cpu", torch.bfloat16)),
                                reason="this torch build has no working CPU int8/int4 weight-only kernels")

OPT = {"context_window": 4, "opt_interval": 1, "max_opt_share": 1.0}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=0)


def _costs(quant_step: float):
    """Full drafts dear (no set below c 0.8); the quantized copies' step ``quant_step`` of a plain one."""
    base = replace(_synthetic_costs(), attn=0.0001, mlp=0.0001, long_context=0, long_times=(),
                   verify_sizes=(1, 8, 32, 64), verify_times=(0.01, 0.0105, 0.012, 0.016))
    q = tuple(PrecisionCost(p, step=0.01 * quant_step * f, attn=0.00002, mlp=0.00003, head=0.0005, extra=0.0,
                            wide=1.1) for p, f in (("int8", 1.0), ("int4", 0.7)))
    return replace(base, precisions=q)


def _decoder(model, costs, **kw) -> SwiftDecoder:
    dec = SwiftDecoder(model, cost_cache=False, optimizer=OPT, search_gate=False, **kw)
    dec.costs = costs
    return dec


def _run(dec: SwiftDecoder, ids: torch.Tensor, n: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantFallbackWarning)
        return dec.generate(ids, max_new_tokens=n)


def test_auto_searches_at_the_cheapest_copy_where_copies_pay(llama) -> None:
    dec = _decoder(llama, _costs(0.2))
    assert dec.precision == "full"  # not chosen before the costs are read
    ids = _ids(20, 3)
    res = _run(dec, ids, 40)
    assert torch.equal(res.sequences, plain_generate(llama, ids, 40))
    assert dec.precision == dec.optimizer.precision == "int4"
    assert res.stats.optimizer["precision"] == "int4" and dec.optimizer.state.iterations > 0
    assert dec.optimizer.history[0].skip == SkipSet()  # the search starts from the whole int4 copy
    # the candidates: int4 at the searched set, int8 at the whole copy, none at full precision
    cands = {c.precision: c.skip for c in dec.space.candidates(None)}
    assert cands["full"] is None and cands["int8"] == SkipSet() and cands["int4"] == dec.optimizer.best()[0]


def test_auto_keeps_full_precision_where_copies_do_not_pay(llama) -> None:
    dec = _decoder(llama, _costs(1.5))
    ids = _ids(20, 4)
    res = _run(dec, ids, 30)
    assert torch.equal(res.sequences, plain_generate(llama, ids, 30))
    assert dec.precision == "full" and res.stats.optimizer["precision"] == "full"


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_forced_precision_searches_there_from_the_whole_copy(llama, precision) -> None:
    dec = _decoder(llama, _costs(0.3), draft_precision=precision)
    assert dec.optimizer.precision == precision and dec.optimizer.best()[0] == SkipSet()
    ids = _ids(20, 5)
    res = _run(dec, ids, 40)
    assert torch.equal(res.sequences, plain_generate(llama, ids, 40))
    assert dec.optimizer.state.iterations > 0


def test_sets_are_priced_at_the_search_precision() -> None:
    costs = _costs(0.3)
    skip = SkipSet(attn=[1, 2], mlp=[3])
    full = SkipOptimizer(8, costs=costs)
    quant = SkipOptimizer(8, costs=costs, precision="int4")
    f, q = full.objective(skip, 0.9), quant.objective(skip, 0.9)
    assert q > f  # the same set at the same matchness is cheaper on int4 weights
    assert quant.priced_at(costs) == "int4" and full.priced_at(costs) == "full"
    assert quant.priced_at(replace(costs, precisions=())) == "full"  # not measured: priced as full
    assert quant.status()["draft_cost"] == pytest.approx(costs.draft_cost(quant.best()[0], "int4"))


def test_the_search_precision_round_trips_and_a_change_restarts_the_search(llama) -> None:
    dec = _decoder(llama, _costs(0.2))
    _run(dec, _ids(20, 6), 40)
    state = dec.state_dict()
    fresh = _decoder(llama, _costs(0.2))
    fresh.load_state_dict(state)
    assert fresh.precision == "int4" and fresh.space.settled
    assert fresh.optimizer.state_dict() == dec.optimizer.state_dict()
    opt = fresh.optimizer
    opt.search_at("int4", SkipSet())
    assert opt.state.iterations == dec.optimizer.state.iterations  # same precision: nothing forgotten
    opt.search_at("int8", SkipSet())
    assert opt.precision == "int8" and opt.state.iterations == 0
    bad = dict(state["optimizer"], precision="int3")
    with pytest.raises(InvalidArgumentError):
        SkipOptimizer(dec.num_layers).load_state_dict(bad)
