"""What a new user reads: --help shows defaults, status lines explain themselves, long waits show progress."""

from __future__ import annotations

import argparse
import re

import pytest

from swiftsd import progress
from swiftsd.cli.main import SUBCOMMANDS, build_parser, main
from swiftsd.cli.generate import drafting_line
from swiftsd.stats import GenerationStats
from tiny_cli import save_tiny_model_dir

PROMPT = "Once upon a time"


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_help_shows_every_default_and_never_none(name) -> None:
    p = _subparser(name)
    text = p.format_help()
    assert "None" not in text and "(default: False)" not in text
    for action in p._actions:
        if any(action.default is x for x in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            continue
        if action.default == []:  # a repeatable option: nothing to show
            continue
        entry = " ".join(p._get_formatter()._format_action(action).split())  # this option's help entry
        shown = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else str(action.default)
        # either the value, or a help text that names its default choice ("0 = greedy (default)")
        assert shown.replace(" ", "")[:12] in entry.replace(" ", "") or "(default)" in entry, entry
        assert "default" in entry, entry


def test_tune_help_promises_no_bundled_data() -> None:
    text = " ".join(_subparser("tune").format_help().split())
    assert "bundled" not in text and "github.com/hemingkx/Spec-Bench" in text and "SWIFTSD_SPEC_BENCH" in text


def test_spec_bench_missing_says_where_it_comes_from(monkeypatch, tmp_path) -> None:
    from swiftsd.bench import data

    monkeypatch.delenv(data.SPEC_BENCH_ENV, raising=False)
    monkeypatch.setattr(data, "_SPEC_BENCH_REL", tmp_path.name + "/no/such/question.jsonl")
    with pytest.raises(data.InvalidArgumentError) as info:
        data.spec_bench_path()
    msg = str(info.value)
    assert "https://github.com/hemingkx/Spec-Bench" in msg and "data/spec_bench/question.jsonl" in msg
    assert "--data /path/to/question.jsonl" in msg and "SWIFTSD_SPEC_BENCH" in msg


# ---------------------------------------------------------------------------- status lines
def test_stats_line_pluralises_and_shows_acceptance_as_counts() -> None:
    one = GenerationStats(new_tokens=1, steps=1, wall_time=0.5)
    line = one.summary()
    assert "1 token in" in line and "1 step " in line and "nothing drafted" in line
    many = GenerationStats(new_tokens=9, steps=4, wall_time=1.0, draft_lengths=[4, 4, 0, 2],
                           accepted_lengths=[2, 1, 0, 2])
    many.per_drafter = {"layerskip": {"proposed": 8, "accepted": 3}, "lookup": {"proposed": 2, "accepted": 2}}
    line = many.summary()
    assert "9 tokens" in line and "4 steps" in line and "acceptance 5/10 draft positions (50%)" in line
    assert "(tree nodes accepted/proposed by drafter: layerskip 3/8, lookup 2/2" in line


def test_drafting_off_says_what_it_means_and_what_to_do() -> None:
    off = GenerationStats(new_tokens=5, steps=4)
    line = drafting_line(off, optimizing=True)
    assert line.startswith("drafting off:") and "decoded plainly" in line and "same either way" in line
    assert "found no skip set" in line and "swiftsd tune --out" in line and "--skip-set-store" in line
    assert "later requests" not in line  # a one-shot run has none: the advice names what will search
    assert "built-in" in line  # tune needs no data file
    # the optimiser's current candidate is no draft: only what the layerskip drafter proposed counts
    searching = GenerationStats(new_tokens=9, steps=4, skip_set={"attn": [1], "mlp": []}, draft_lengths=[3, 0],
                                accepted_lengths=[3, 0])
    searching.per_drafter = {"suffix": {"proposed": 3, "accepted": 3}}
    line = drafting_line(searching, optimizing=True)
    assert line.startswith("drafting off:") and "prompt lookup, suffix" in line
    gated = GenerationStats(new_tokens=9, steps=6, draft_lengths=[3, 0], accepted_lengths=[3, 0],
                            optimizer={"phase": "search", "layerskip_ceiling": 0.86})
    line = drafting_line(gated, optimizing=True)
    assert "cannot pay even at 80% acceptance (at best 0.86x plain" in line and "does not search" in line
    assert "swiftsd tune" not in line  # tuning cannot help where no set can pay
    on = GenerationStats(new_tokens=5, steps=2, skip_set={"attn": [1], "mlp": []}, draft_lengths=[2],
                         accepted_lengths=[1])
    on.per_drafter = {"layerskip": {"proposed": 2, "accepted": 1}}
    assert "skip set {'attn': [1], 'mlp': []}" in drafting_line(on, optimizing=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-polish")))


def test_generate_says_what_happens_and_never_none_or_na(capsys, monkeypatch, tmp_path, model_dir) -> None:
    monkeypatch.setenv("SWIFTSD_CACHE_DIR", str(tmp_path))  # no cost model measured yet
    argv = ["generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "12"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0
    assert "swiftsd: generating up to 12 new tokens after a" in err
    assert "times this device's layers (once" in err
    assert main(argv) == 0
    again = capsys.readouterr().err
    assert "generating up to 12" in again and "times this device" not in again  # read back from the cache
    assert "None" not in err and "n/a" not in err
    assert not re.search(r"\b1 (iterations|steps|tokens)\b", err)
    assert "[swiftsd] optimizer" in err and "iteration" in err


def test_compare_shows_progress_for_both_runs(capsys, monkeypatch, model_dir) -> None:
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    rc = main(["generate", "--model", model_dir, "--prompt", PROMPT, "--max-new-tokens", "20", "--compare",
               "--skip-set", '{"attn": [1, 3]}'])
    err = capsys.readouterr().err
    assert rc == 0
    assert "swiftsd: swiftsd:" in err  # the bar of swiftsd's own run
    assert "now plain model.generate on the same prompt" in err and "swiftsd: plain:" in err
    assert "warms both methods up first" in err
    compare = next(ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("[compare]"))
    assert "outputs identical: yes" in compare


def test_the_drafting_line_names_quantized_weights() -> None:
    from swiftsd.stats import GenerationStats

    stats = GenerationStats(skip_set={"attn": [2], "mlp": []}, per_drafter={"layerskip": {"proposed": 9, "accepted": 4}},
                            per_precision={"int4": {"steps": 6, "forwards": 8, "accepted": 4},
                                           "full": {"steps": 1, "forwards": 1, "accepted": 0}})
    line = drafting_line(stats, optimizing=True)
    assert "int4 weights (6 steps)" in line and "the model's own weights skipping" in line
    plain_skip = GenerationStats(skip_set={"attn": [2], "mlp": []}, per_drafter={"layerskip": {"proposed": 3}},
                                 per_precision={"full": {"steps": 2, "forwards": 2, "accepted": 1}})
    assert drafting_line(plain_skip, optimizing=True).startswith("layer-skip drafts came from skip set")
