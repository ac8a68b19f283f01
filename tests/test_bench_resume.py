"""`swiftsd bench --resume`: a run cut short continues where it stopped, with the learned state it had,
and refuses to join anything that would make the table measure two different things."""

from __future__ import annotations

import json

import pytest

import swiftsd.cli.bench_run as bench_cli
from swiftsd.bench import resume
from swiftsd.bench.base import RunParams
from swiftsd.bench.data import BenchPrompt
from swiftsd.bench.runner import run_stream, turn_seed
from swiftsd.bench.swift import Swift
from swiftsd.cli.main import main
from swiftsd.errors import InvalidArgumentError
from tiny_server_model import save_tiny_server_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_server_model(tmp_path_factory.mktemp("m") / "m")


def _data(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"question_id": {i}, "category": "{c}", "turns": ["one two one two {i}"]}}\n'
                            for i, c in enumerate(["qa", "qa", "rag", "rag"])))
    return data


def _argv(model_dir, tmp_path, *extra):
    return ["bench", "--model", str(model_dir), "--data", str(_data(tmp_path)), "--methods", "swiftsd",
            "--max-new-tokens", "6", "--out", str(tmp_path / "o"), "--name", "t", "--no-progress", "--warmup", "0",
            "--device", "cpu", "--dtype", "float32", "--repeats", "2", *extra]


def _stop_after(monkeypatch, n: int) -> None:
    """The time budget runs out after ``n`` prompts of this slice."""
    monkeypatch.setattr("swiftsd.bench.runner.out_of_time", lambda deadline, started, done, now: done >= n)


def _records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "o" / "t.jsonl").read_text().splitlines()]


def test_resume_completes_the_run_with_the_learned_state_it_had(model_dir, tmp_path, capsys, monkeypatch):
    _stop_after(monkeypatch, 1)
    assert main(_argv(model_dir, tmp_path, "--time-budget", "60")) == 0
    run_file = json.loads((tmp_path / "o" / "t.run.json").read_text())
    assert run_file["done"] == ["0"] and set(run_file["states"]) == {"swiftsd"}
    saved = run_file["states"]["swiftsd"]
    assert "of 4 planned: stopped early" in (tmp_path / "o" / "t.md").read_text()

    loaded, generated = [], []
    real_load, real_generate = Swift.load_state_dict, Swift.generate
    monkeypatch.setattr(Swift, "load_state_dict", lambda self, st: (loaded.append(st), real_load(self, st))[1])
    monkeypatch.setattr(Swift, "generate", lambda self, *a: (generated.append(len(loaded)), real_generate(self, *a))[1])
    _stop_after(monkeypatch, 2)
    assert main(_argv(model_dir, tmp_path, "--resume", "--time-budget", "60")) == 0
    assert loaded == [saved] and generated and min(generated) == 1  # restored before its first measured run
    assert "resuming t.jsonl: 1 prompts done in 1 earlier slice" in capsys.readouterr().err

    assert main(_argv(model_dir, tmp_path, "--resume")) == 0  # the last slice: no budget
    recs = _records(tmp_path)
    plain = [r for r in recs if r["method"] == "plain"]
    assert [r["prompt_id"] for r in plain] == ["0", "2", "1", "3"]  # each prompt once, round-robin kept
    assert [r["seed"] for r in plain] == [turn_seed(0, i, 0) for i in range(4)]  # seeds by place in the plan
    machine = json.loads((tmp_path / "o" / "t.machine.json").read_text())
    assert machine["prompts"] == 4 and machine["stopped_early"] is None
    assert [s["prompts"] for s in machine["slices"]] == [1, 2, 1]
    md = (tmp_path / "o" / "t.md").read_text()
    assert "Ran in 3 slices" in md and "stopped early" not in md


def test_resume_refuses_other_arguments_other_code_and_a_missing_run(model_dir, tmp_path, capsys, monkeypatch):
    assert main(_argv(model_dir, tmp_path, "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    _stop_after(monkeypatch, 1)
    assert main(_argv(model_dir, tmp_path, "--time-budget", "60")) == 0
    capsys.readouterr()

    argv = _argv(model_dir, tmp_path, "--resume")
    argv[argv.index("--max-new-tokens") + 1] = "8"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens 6 -> 8" in err and "Traceback" not in err

    real_info = bench_cli.machine_info
    monkeypatch.setattr(bench_cli, "machine_info", lambda *a: {**real_info(*a), "git_commit": "0000000"})
    assert main(_argv(model_dir, tmp_path, "--resume")) == 2
    err = capsys.readouterr().err
    assert "other code" in err and "-> '0000000'" in err and "check out" in err
    assert [r["prompt_id"] for r in _records(tmp_path) if r["method"] == "plain"] == ["0"]  # nothing was lost


def test_kept_records_drop_a_line_cut_short_and_prompts_not_done(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"prompt_id": "a", "method": "plain"}\n{"prompt_id": "b", "method": "plain"}\n'
                     '{"prompt_id": "c", "meth')
    assert resume.kept_records(jsonl, ["a"]) == [{"prompt_id": "a", "method": "plain"}]
    with pytest.raises(InvalidArgumentError, match=r"lacks the records of prompts \['c'\]"):
        resume.kept_records(jsonl, ["a", "c"])


def test_a_damaged_run_file_is_refused_with_what_to_do(model_dir, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "t.run.json").write_text('{"format": "swiftsd-bench-run", "vers')
    assert main(_argv(model_dir, tmp_path, "--resume")) == 2
    err = capsys.readouterr().err
    assert "not a readable run file" in err and "without --resume" in err


def test_run_stream_skips_done_prompts_and_keeps_their_places(monkeypatch):
    from test_bench import _Scripted, _Tok

    monkeypatch.setattr("swiftsd.bench.runner.build_input", lambda tok, p, t, answers: [0, 1, 2])
    prompts = [BenchPrompt(f"q{i}", "qa", ("x",)) for i in range(4)]
    recs = run_stream([_Scripted("plain", lambda k: 1.0)], _Tok(), prompts, RunParams(max_new_tokens=4),
                      progress=False, repeats=1, skip={"q0", "q2"})
    assert [(r["prompt_id"], r["seed"]) for r in recs] == [("q1", turn_seed(0, 1, 0)), ("q3", turn_seed(0, 3, 0))]
