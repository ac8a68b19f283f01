"""The layer-set store: round trips, merging, clear errors, start sets for a loaded model."""

from __future__ import annotations

import json

import pytest

from swiftsd import InvalidArgumentError, InvalidSkipSetError, OptimizerConfig, SkipSet, SwiftDecoder
from swiftsd.persist.store import (
    load_entry,
    load_skip_set,
    model_key,
    read_store,
    resolve_start_set,
    save_optimizer_result,
    save_skip_set,
)
from tiny import cheap_tree_costs, tiny_model


def test_round_trip_and_merge(tmp_path):
    path = tmp_path / "sets.json"
    a = SkipSet(attn=[1, 3], mlp=[2])
    b = SkipSet(attn=[], mlp=[4, 5])
    save_skip_set(path, "model-a", "qa", a, 0.81, num_layers=8, predicted_speedup=1.2)
    save_skip_set(path, "model-a", "math", b, 0.7)
    save_skip_set(path, "model-b", "qa", b, None)
    assert load_skip_set(path, "model-a", "qa") == a
    assert load_skip_set(path, "model-a", "math") == b
    assert load_skip_set(path, "model-b", "qa") == b
    assert load_skip_set(path, "model-b", "math") is None
    assert load_skip_set(path, "model-c", "qa") is None
    entry = load_entry(path, "model-a", "qa")
    assert entry.matchness == 0.81 and entry.num_layers == 8 and entry.extra == {"predicted_speedup": 1.2}
    assert entry.date[:2] == "20" and "T" in entry.date
    save_skip_set(path, "model-a", "qa", b, 0.9)  # replace one entry, keep the others
    assert load_skip_set(path, "model-a", "qa") == b and load_skip_set(path, "model-a", "math") == b
    assert json.loads(path.read_text())["version"] == 1
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


def test_missing_and_bad_files(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_skip_set(missing, "m", "t")
    assert load_skip_set(missing, "m", "t", missing_ok=True) is None
    assert read_store(missing) == {"version": 1, "entries": {}}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        load_skip_set(bad, "m", "t")
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(InvalidArgumentError, match="not a swiftsd skip-set store"):
        load_skip_set(other, "m", "t")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "entries": {"m": {"t": {"skip_set": {"attn": "x"}}}}}))
    with pytest.raises(InvalidArgumentError, match="malformed"):
        load_skip_set(broken, "m", "t")


def test_resolve_start_set_for_a_model(tmp_path):
    model = tiny_model("llama", seed=0)  # 6 layers
    path = tmp_path / "sets.json"
    assert resolve_start_set(None, model, "qa") is None
    assert resolve_start_set(path, model, "qa", missing_ok=True) is None
    save_skip_set(path, model_key(model), "qa", SkipSet(attn=[2], mlp=[3]), 0.5)
    start = resolve_start_set(path, model, "qa")
    assert start == SkipSet(attn=[2], mlp=[3])
    dec = SwiftDecoder(model, skip_set=start)
    assert dec.optimizer.best() == (start, None)  # the optimiser starts from the stored set
    save_skip_set(path, model_key(model), "big", SkipSet(attn=[40]), 0.5)
    with pytest.raises(InvalidSkipSetError, match="does not fit this model"):
        resolve_start_set(path, model, "big")


def test_save_optimizer_result(tmp_path):
    model = tiny_model("qwen2", seed=0)
    dec = SwiftDecoder(model, optimizer=OptimizerConfig.reference(context_window=6))
    dec.costs = cheap_tree_costs()  # a device where a skip set can pay: the default decoder searches
    path = tmp_path / "sets.json"
    assert not save_optimizer_result(path, model, "t", dec.optimizer)  # nothing scored yet: nothing written
    assert not path.exists()
    dec.generate([1, 2, 3, 4], max_new_tokens=30)
    assert save_optimizer_result(path, model, "t", dec.optimizer)
    entry = load_entry(path, model_key(model), "t")
    best, m = dec.optimizer.best()
    assert entry.skip_set == best and entry.matchness == m and entry.num_layers == 6
    assert entry.extra["iterations"] == dec.optimizer.state.iterations
