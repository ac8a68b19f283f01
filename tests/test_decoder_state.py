"""SwiftDecoder.state_dict / load_state_dict over a real stream: the default decoder (optimiser on,
every drafter) learns on four requests, its state goes through JSON on disk into a new decoder, and
the fifth request decodes exactly as the original decoder decodes it; refusals change nothing;
``reset()`` forgets the suffix index and the optimiser's search together.

The loop reads the wall clock (the optimiser's time budget, the planner's sanity bound), so the
fifth request runs both decoders on the same fake clock, one tick per reading: with equal state
and equal readings any difference is the state's. Learning runs on the real clock. The cost
model is fixed (``cost_cache=False``) so no measurement noise enters.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import swiftsd.core.decoder as decoder_mod
import swiftsd.optimize.optimizer as optimizer_mod
from swiftsd import InvalidArgumentError, SwiftDecoder
from swiftsd.engine.cost import CostModel
from tiny import tiny_model

COSTS = CostModel(full_step=0.01, attn=0.0008, mlp=0.0012, lm_head=0.001, fixed=0.001, draft_extra=0.0,
                  verify_sizes=(1, 8, 32, 64), verify_times=(0.01, 0.011, 0.013, 0.018), num_layers=6)
NEW = 80  # tokens per request: past the optimiser's 32-token matchness window


class _Clock:
    """perf_counter() that advances one millisecond per reading (or not at all)."""

    def __init__(self, tick: float = 1e-3) -> None:
        self.t, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.t += self.tick
        return self.t


def _prompts() -> list[list[int]]:
    """Prompts that repeat themselves (lookup fires) and share a passage (the suffix index fires)."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(0, 97, (30,), generator=g).tolist()
    out = []
    for _ in range(5):
        own = torch.randint(0, 97, (8,), generator=g).tolist()
        out.append(own + shared + own[:4] + shared[:10])
    return out


PROMPTS = _prompts()


def _decoder(model) -> SwiftDecoder:
    # no search time budget: what the optimiser learns must not depend on how fast this machine is
    dec = SwiftDecoder(model, cost_cache=False, optimizer={"max_opt_share": 1.0})
    dec.costs = COSTS  # the device cost model, as the on-disk cache would give it
    return dec


def _learn(model) -> SwiftDecoder:
    """Four requests on a fake clock: what the optimiser's time budget lets it search does not
    depend on the machine's load."""
    from unittest import mock

    dec = _decoder(model)
    with mock.patch.object(decoder_mod, "time", _Clock()), mock.patch.object(optimizer_mod, "time", _Clock(0.0)):
        for p in PROMPTS[:4]:
            dec.generate(p, max_new_tokens=NEW, seed=1)
    return dec


def _on_fake_clock(monkeypatch, dec: SwiftDecoder, prompt: list[int]):
    monkeypatch.setattr(decoder_mod, "time", _Clock())
    monkeypatch.setattr(optimizer_mod, "time", _Clock(tick=0.0))  # the cost probe's timer
    return dec.generate(prompt, max_new_tokens=NEW, seed=1)


def _json(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state, allow_nan=False))  # plain JSON, as a state file holds it


def _decoded(res) -> dict[str, Any]:
    s = res.stats
    return {"tokens": res.sequences.tolist(), "tree_sizes": s.tree_sizes, "accepted": s.accepted_lengths,
            "drafted": s.draft_lengths, "per_drafter": s.per_drafter, "plain_steps": s.plain_steps,
            "skip_set": s.skip_set, "phase": s.optimizer["phase"] if s.optimizer else None}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def learned_state(model) -> dict[str, Any]:
    return _json(_learn(model).state_dict())


def test_round_trip_through_a_file_decodes_the_next_request_exactly(model, tmp_path: Path, monkeypatch) -> None:
    a = _learn(model)
    path = tmp_path / "decoder.json"
    path.write_text(json.dumps(a.state_dict(), allow_nan=False))
    saved = json.loads(path.read_text())
    assert saved["drafters"]["suffix"]["docs"] and saved["optimizer"]["state"]["iterations"] > 0
    b = SwiftDecoder(model, cost_cache=False, optimizer={"max_opt_share": 1.0})
    b.load_state_dict(saved)
    assert _json(b.state_dict()) == saved  # everything came back, the cost model included

    ra = _decoded(_on_fake_clock(monkeypatch, a, PROMPTS[4]))
    rb = _decoded(_on_fake_clock(monkeypatch, b, PROMPTS[4]))
    assert rb == ra
    assert _json(b.state_dict()) == _json(a.state_dict())  # and they learned the same from it
    # not vacuous: every drafter took part, and a decoder without the state decodes otherwise
    assert {"lookup", "suffix", "layerskip"} <= set(ra["per_drafter"])
    assert ra["per_drafter"]["suffix"]["accepted"] > 0
    fresh = _decoded(_on_fake_clock(monkeypatch, _decoder(model), PROMPTS[4]))
    assert fresh["tokens"] == ra["tokens"]  # lossless either way
    assert (fresh["tree_sizes"], fresh["per_drafter"]) != (ra["tree_sizes"], ra["per_drafter"])


def _small_vocab_model():
    return tiny_model("llama", seed=0, vocab_size=50)


@pytest.mark.parametrize("make, words", [
    (lambda: tiny_model("llama", seed=0, num_hidden_layers=4), "4"),
    (_small_vocab_model, "vocabulary of 97"),
    (lambda: tiny_model("qwen2", seed=0, num_hidden_layers=8), "8"),
], ids=["fewer-layers", "smaller-vocab", "other-family-more-layers"])
def test_another_models_state_is_refused(make, words: str, learned_state) -> None:
    dec = SwiftDecoder(make(), cost_cache=False)
    before = _json(dec.state_dict())
    with pytest.raises(InvalidArgumentError, match=words) as info:
        dec.load_state_dict(learned_state)
    assert "\n" not in str(info.value)
    assert _json(dec.state_dict()) == before


def _broken(state: dict[str, Any], change) -> dict[str, Any]:
    s = copy.deepcopy(state)
    change(s)
    return s


GARBAGE = {
    "list": lambda s: ["not", "a", "state"],
    "empty": lambda s: {},
    "format-text": lambda s: {**s, "format": "1"},
    "no-drafters": lambda s: {k: v for k, v in s.items() if k != "drafters"},
    "suffix-missing": lambda s: _broken(s, lambda d: d["drafters"].pop("suffix")),
    "suffix-docs-number": lambda s: _broken(s, lambda d: d["drafters"]["suffix"].__setitem__("docs", 5)),
    "lookup-calibration-cut": lambda s: _broken(s, lambda d: d["drafters"]["lookup"].__setitem__("calibration", {})),
    "optimizer-cut": lambda s: _broken(s, lambda d: d["optimizer"].pop("memory")),
    "costs-cut": lambda s: _broken(s, lambda d: d["costs"].pop("full_step")),
    "token-id-out-of-range": lambda s: _broken(s, lambda d: d["token_counts"].__setitem__("ids", [10**6])),
    "token-id-negative": lambda s: _broken(s, lambda d: d["token_counts"].update(ids=[-1], counts=[3])),
    "token-counts-ragged": lambda s: _broken(s, lambda d: d["token_counts"].__setitem__("counts", [])),
    "wall-clock-text": lambda s: _broken(s, lambda d: d["planner"].__setitem__("wall_clock", "fast")),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_is_refused_in_one_line_and_changes_nothing(name: str, model, learned_state) -> None:
    dec = _learn(model) if name == "suffix-docs-number" else _decoder(model)  # a learned one has more to lose
    before = _json(dec.state_dict())
    with pytest.raises(InvalidArgumentError) as info:
        dec.load_state_dict(GARBAGE[name](learned_state))
    msg = str(info.value)
    assert "\n" not in msg and "state" in msg and len(msg) < 300
    assert _json(dec.state_dict()) == before


def test_a_newer_format_is_refused(model, learned_state) -> None:
    dec = _decoder(model)
    with pytest.raises(InvalidArgumentError, match="newer.*upgrade swiftsd"):
        dec.load_state_dict({**learned_state, "format": learned_state["format"] + 1})


def test_reset_forgets_the_suffix_index_and_the_search_together(model, monkeypatch) -> None:
    dec = _learn(model)
    assert dec.drafters["suffix"].size > 0 and dec.optimizer.state.iterations > 0
    dec.reset()
    fresh = _decoder(model)
    after, new = _json(dec.state_dict()), _json(fresh.state_dict())
    assert after["drafters"] == new["drafters"] and after["drafters"]["suffix"]["docs"] == []
    assert after["token_counts"] == new["token_counts"] == {"ids": [], "counts": []}
    strip = lambda o: {k: v for k, v in o.items() if k != "costs"}  # noqa: E731 - the device did not change
    assert strip(after["optimizer"]) == strip(new["optimizer"])
    # and the next request decodes as a fresh decoder's first one: no suffix draft, the search from its start
    ra = _decoded(_on_fake_clock(monkeypatch, dec, PROMPTS[4]))
    rf = _decoded(_on_fake_clock(monkeypatch, fresh, PROMPTS[4]))
    assert ra == rf and "suffix" not in ra["per_drafter"]


def test_costs_measured_on_another_device_are_not_restored(model, learned_state) -> None:
    """A state learned on a GPU keeps its GPU cost model to itself: this CPU decoder times its own."""
    state = copy.deepcopy(learned_state)
    assert state["costs"] is not None
    state["costs"]["device"] = "cuda:0"
    dec = SwiftDecoder(model, cost_cache=False)
    dec.load_state_dict(state)
    assert dec.measured_costs is None  # measured afresh on first use
    state["costs"]["device"] = str(dec.adapter.device)
    dec.load_state_dict(state)
    assert dec.measured_costs is not None and dec.measured_costs.device == str(dec.adapter.device)
