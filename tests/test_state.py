"""The decoder's state file: atomic writes, exact round trips, clear one-line refusals."""

from __future__ import annotations

import json
import math
import os

import pytest

from swiftsd import ModelIdentity
from swiftsd.errors import StateFileError
from swiftsd.persist.state_file import STATE_FILE_VERSION, check_state_file, load_state, save_state

ME = ModelIdentity("tiny", "sha256:0123456789abcdef", "float32")
STATE = {"format": 1, "optimizer": {"phase": "search", "best": {"attn": [1, 3], "mlp": []}, "rng": 2**100 + 7},
         "token_counts": {"ids": [3, 9], "counts": [4, 1]}, "score": 0.8125, "note": "naïve 日本"}


def _refused(path, match, identity=ME):
    with pytest.raises(StateFileError, match=match) as info:
        load_state(path, identity)
    assert "\n" not in str(info.value)  # one line
    return str(info.value)


def test_round_trip_is_exact_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    save_state(path, STATE, ME)
    assert load_state(path, ME) == STATE and check_state_file(path) == ME
    doc = json.loads(path.read_text())
    assert doc["format"] == "swiftsd-state" and doc["version"] == STATE_FILE_VERSION
    assert doc["model"] == ME.to_dict() and doc["saved"].startswith("20")
    save_state(path, dict(STATE, score=0.5), ME)  # replaces the old file
    assert load_state(path, ME)["score"] == 0.5
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    save_state(path, STATE, ME)

    def crash(src, dst):
        raise KeyboardInterrupt  # SIGINT between write and rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, dict(STATE, score=0.1), ME)
    monkeypatch.undo()
    assert load_state(path, ME) == STATE and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_state_that_is_not_plain_json_is_refused_before_writing(tmp_path):
    path = tmp_path / "state.json"
    save_state(path, STATE, ME)
    for bad in ({"x": math.nan}, {"x": {1, 2}}, {"x": object()}):
        with pytest.raises(StateFileError, match="not plain JSON"):
            save_state(path, bad, ME)
    assert load_state(path, ME) == STATE


def test_refusals(tmp_path):
    path = tmp_path / "state.json"
    _refused(path, "does not exist")
    save_state(path, STATE, ME)
    good = path.read_text()

    other = ModelIdentity("tiny", "sha256:ffffffffffffffff", "float32")
    msg = _refused(path, "learned on tiny", identity=other)
    assert "revision" in msg and "another state file" in msg
    _refused(path, "dtype", identity=ModelIdentity("tiny", ME.revision, "bfloat16"))

    path.write_text(good[: len(good) // 2])  # cut short, as by a full disk
    assert "delete it" in _refused(path, "corrupt or truncated")
    with pytest.raises(StateFileError, match="corrupt or truncated"):
        check_state_file(path)  # before any model is loaded
    path.write_bytes(b"\xff\xfe\x00garbage")
    _refused(path, "corrupt or truncated")
    path.write_text(good.replace('"score":0.8125', '"score":0.9'))  # valid JSON, tampered contents
    _refused(path, "digest")
    path.write_text(good.replace('"version": 1', '"version": 7'))
    _refused(path, "format version 7, newer than this swiftsd reads \\(1\\): upgrade swiftsd")
    path.write_text(json.dumps({"version": 1, "entries": {}}))  # e.g. a skip-set store by mistake
    _refused(path, "not a swiftsd state file")
    path.write_text("[1, 2]")
    _refused(path, "not a swiftsd state file")
