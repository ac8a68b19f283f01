"""One typed request: GenerateArgs' "not given" sentinel, Request.build without a decoder, and the
decoder's public seams (its cost model, its planner, a plan for a given trie, its composed state)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from transformers import GenerationConfig

from swiftsd import InvalidArgumentError, SkipSet, SwiftDecoder
from swiftsd.core.request import ModelFacts, Request
from swiftsd.drafters import DraftTrie
from swiftsd.hf.options import DEFAULTS, UNSET, GenerateArgs
from tiny import cheap_tree_costs, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def facts(model):
    return SwiftDecoder(model, optimizer=False, cost_cache=False).facts


def test_none_and_absence_both_mean_not_given() -> None:
    args = GenerateArgs(temperature=None, max_new_tokens=5)
    assert args.temperature is UNSET and not args.given("temperature") and args.given("max_new_tokens")
    assert args.as_kwargs() == {"max_new_tokens": 5}


def test_an_argument_given_at_its_default_value_still_beats_the_generation_config(facts) -> None:
    """temperature=0.0 said out loud is greedy, even where the config samples (the old 'equals the
    default means not given' rule sampled here)."""
    gc = GenerationConfig(do_sample=True, temperature=0.7, max_new_tokens=9)
    said = Request.build(facts, [1, 2, 3], GenerateArgs(temperature=0.0, generation_config=gc))
    left = Request.build(facts, [1, 2, 3], GenerateArgs(generation_config=gc))
    assert said.params.greedy and said.max_new_tokens == 9
    assert not left.params.greedy and left.params.temperature == 0.7
    assert Request.build(facts, [1, 2, 3]).max_new_tokens == DEFAULTS["max_new_tokens"]


def test_a_request_is_built_from_model_facts_alone(model, facts) -> None:
    r = Request.build(facts, torch.tensor([[5, 6, 7]]), GenerateArgs(max_new_tokens=4, eos_token_id=[9, 8],
                                                                     skip_set='{"attn": [1], "mlp": [2]}', seed=1))
    assert r.ids == (5, 6, 7) and r.eos == frozenset({8, 9}) and r.seed == 1
    assert r.skip == SkipSet(attn=[1], mlp=[2])
    with pytest.raises(Exception):  # frozen: nothing downstream can change what was validated
        r.max_new_tokens = 7  # type: ignore[misc]
    assert facts == ModelFacts.of(model, None, SwiftDecoder(model, optimizer=False).adapter)


@pytest.mark.parametrize("kwargs, words", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be an integer >= 1"),
    ({"min_new_tokens": -1}, "min_new_tokens must be an integer >= 0"),
    ({"temperature": -1.0}, "temperature"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"logits_processor": 3}, "logits_processor must be callable"),
    ({"max_new_tokens": 2000}, "exceeds the model's context"),
    ({"max_new_token": 5}, "unknown generate argument(s) max_new_token"),
])
def test_every_argument_is_refused_in_one_line_naming_it(model, kwargs, words) -> None:
    dec = SwiftDecoder(model, optimizer=False, cost_cache=False)
    with pytest.raises(InvalidArgumentError) as info:
        dec.generate([1, 2, 3], **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_cli_spells_arguments_as_flags() -> None:
    with pytest.raises(InvalidArgumentError, match="--max-new-tokens must be"):
        GenerateArgs(max_new_tokens=0).check(lambda n: "--" + n.replace("_", "-"))


def test_generate_and_stream_show_the_one_signature() -> None:
    names = [f for f in inspect.signature(SwiftDecoder.generate).parameters]
    assert names == ["self", "input_ids", *GenerateArgs.__dataclass_fields__]
    assert inspect.signature(SwiftDecoder.stream).parameters.keys() == inspect.signature(
        SwiftDecoder.generate).parameters.keys()


def test_generate_is_the_stream_drained(model) -> None:
    dec = SwiftDecoder(model, optimizer=False, cost_cache=False)
    streamed = [t for step in dec.stream([1, 2, 3, 4], max_new_tokens=12) for t in step]
    assert dec.generate([1, 2, 3, 4], max_new_tokens=12).new_tokens == streamed


def test_the_planner_is_public_and_plans_by_the_decoders_cost_model(model) -> None:
    dec = SwiftDecoder(model, skip_set=SkipSet(attn=[1, 2], mlp=[3]), optimizer=False, drafters=("layerskip",),
                       cost_cache=False)
    assert dec.measured_costs is None  # nothing measured yet
    dec.costs = cheap_tree_costs()
    assert dec.measured_costs is dec.costs and dec.planner.costs is dec.cost_source
    plan = dec.plan(DraftTrie.rooted(3), context=10, remaining=20)
    assert plan.skip == dec.skip_set and plan.max_depth >= 1
    assert not dec.plan(DraftTrie.rooted(3), context=10, remaining=1).run_model  # no room for a draft


def test_the_state_is_composed_of_each_components_own_state(model) -> None:
    dec = SwiftDecoder(model, cost_cache=False)
    dec.costs = cheap_tree_costs()
    for i in range(3):
        dec.generate([1 + i, 2, 3, 4, 5], max_new_tokens=20)
    state = json.loads(json.dumps(dec.state_dict()))
    assert state["planner"] == dec.planner.state_dict()
    assert state["optimizer"] == json.loads(json.dumps(dec.optimizer.state_dict()))
    assert "costs" not in state["optimizer"]  # one owner: the decoder's cost source
    assert state["costs"] == dec.cost_source.state_dict()
    fresh = SwiftDecoder(model, cost_cache=False)
    fresh.load_state_dict(state)
    assert json.loads(json.dumps(fresh.state_dict())) == state


def test_a_format_1_state_still_loads(model) -> None:
    """Before the planner owned them, its parts were top-level keys of the state."""
    dec = SwiftDecoder(model, cost_cache=False)
    dec.costs = cheap_tree_costs()
    dec.generate([1, 2, 3, 4, 5], max_new_tokens=20)
    dec.planner.wall.record(True, 2.0, 1.0)
    state = json.loads(json.dumps(dec.state_dict()))
    planner = state.pop("planner")
    old = {**state, "format": 1, "wall_clock": planner["wall_clock"], "search_budget": planner["search_budget"]}
    fresh = SwiftDecoder(model, cost_cache=False)
    fresh.load_state_dict(old)
    assert fresh.planner.state_dict() == planner
