"""`swiftsd tune` on a tiny model: the result on stdout, its progress bar on stderr and only on a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from swiftsd.cli.main import main
from tiny_server_model import save_tiny_server_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_server_model(tmp_path_factory.mktemp("tune") / "m")


def _tune(tmp_path, model_dir, *extra):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question_id": 1, "category": "qa", "turns": ["the cat and the dog"]}\n'
                    '{"question_id": 2, "category": "qa", "turns": ["one two three one two three"]}\n')
    return main(["tune", "--model", str(model_dir), "--data", str(data), "--n", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "sets.json"), "--device", "cpu", "--dtype", "float32", *extra])


@pytest.fixture
def built(monkeypatch) -> list:
    """Every SwiftDecoder the command builds, in order."""
    import swiftsd.core.decoder as decoder_mod

    decoders: list = []
    real = decoder_mod.SwiftDecoder.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        decoders.append(self)
    monkeypatch.setattr(decoder_mod.SwiftDecoder, "__init__", spy)
    return decoders


def test_tune_searches_even_where_the_cost_model_says_no_set_can_pay(tmp_path, model_dir, monkeypatch, capsys, built):
    """`swiftsd tune` is a request to search: the decoder's search gate is off for it."""
    import swiftsd.core.planner as planner_mod

    monkeypatch.setattr(planner_mod, "layerskip_ceiling", lambda *a, **k: pytest.fail("tune consulted the gate"))
    # tune's own default, max_opt_share=1 (no wall-clock budget), so the search's iterations do not depend
    # on the machine's speed (at the 5 % server default, one clean-clone CI run scored nothing in 2 requests)
    assert _tune(tmp_path, model_dir, "--max-new-tokens", "40", "--opt", "context_window=4") == 0
    (dec,) = built
    assert dec.config.search_gate is False and dec.config.optimizer.max_opt_share == 1.0
    assert dec.optimizer.state.iterations > 0
    assert "stored under" in capsys.readouterr().out


def test_tune_bar_only_on_a_terminal(tmp_path, model_dir, capsys):
    assert _tune(tmp_path, model_dir) == 0
    cap = capsys.readouterr()
    assert "best set:" in cap.out and "tune " not in cap.out  # the bar never reaches stdout
    assert "tune " not in cap.err and "prompt" not in cap.err  # stderr is not a terminal: no bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tune_bar_on_a_terminal_leaves_no_blank_lines(tmp_path, model_dir, monkeypatch):
    # an empty cost cache, as on a fresh machine: the first run measures the step costs, and that
    # status line must come and go before the bar opens, not nested under it (a clean-clone CI
    # run once drew it inside the bar, leaving blank lines)
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(tmp_path / "cache"))
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert _tune(tmp_path, model_dir) == 0
    err = term.getvalue()
    assert "measuring this model's step costs" in err  # the cold cache was measured, in this run
    assert list((tmp_path / "cache" / "costs").glob("*.json"))
    ours = err[err.index("tune "):]  # after transformers' own loading bars and the cost line
    assert "0/2 [" in ours and "prompt" in ours  # a bar of one tick per request
    assert "\n" not in ours  # the bar redraws in place and clears itself: no stray (blank) lines
    term2 = _Terminal()
    monkeypatch.setattr(sys, "stderr", term2)
    assert _tune(tmp_path, model_dir, "--no-progress") == 0
    assert "0/2 [" not in term2.getvalue()


def test_tune_keeps_a_wall_clock_cap_it_is_given(tmp_path, model_dir, built):
    assert _tune(tmp_path, model_dir, "--opt", "max_opt_share=0.2") == 0
    assert built[0].config.optimizer.max_opt_share == 0.2


def test_tune_runs_without_a_data_file_on_the_built_in_prompts(tmp_path, model_dir, capsys, built):
    """The advice after a run that found no set points to `swiftsd tune`: it must run as it is told to."""
    from swiftsd.bench.data import BUILTIN_PROMPTS

    out = tmp_path / "sets.json"
    rc = main(["tune", "--model", str(model_dir), "--n", "3", "--max-new-tokens", "40", "--opt", "context_window=4",
               "--out", str(out), "--device", "cpu", "--dtype", "float32"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "3 prompts" in cap.out and "stored under" in cap.out and out.is_file()
    (dec,) = built
    assert dec.optimizer.state.iterations > 0
    groups = {p.category for p in BUILTIN_PROMPTS}
    from swiftsd.cli.main import build_parser

    tune = build_parser(only="tune")._subparsers._group_actions[0].choices["tune"]
    entry = tune._option_string_actions["--data"].help
    assert f"built-in prompt set of swiftsd bench, {len(BUILTIN_PROMPTS)} prompts in {len(groups)} groups" in entry
