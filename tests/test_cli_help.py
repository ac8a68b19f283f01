"""`--help` in one style: every option described, every default stated once as "(default: X)", short
metavars, no word broken across lines, and no torch (or any other heavy import) just to print it."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from swiftsd.cli.main import SUBCOMMANDS, build_parser, takes_value

SRC = Path(__file__).resolve().parent.parent / "src"
HEAVY = ("torch", "transformers", "numpy", "fastapi", "uvicorn", "matplotlib", "prometheus_client")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _options(name: str) -> list[tuple[argparse.ArgumentParser, argparse.Action]]:
    p = _subparser(name)
    return [(p, a) for a in p._actions if a.help != argparse.SUPPRESS and a.dest != "help"]


def _entry(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    """One option's help entry as printed, on one line."""
    return " ".join(p._get_formatter()._format_action(action).split())


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_option_is_described_and_states_its_default_in_one_style(name) -> None:
    for p, action in _options(name):
        text = action.help or ""
        assert len(text.split()) >= 3 and not text.lower().startswith("default"), (name, action.dest, text)
        entry = _entry(p, action)
        assert not re.search(r"\(default [^:]|\(default\)|default %|default: None", entry), entry
        if takes_value(action) and not action.required:  # a switch is off unless given: nothing to state
            assert entry.count("(default: ") == 1 and entry.endswith(")"), entry


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_metavars_are_short_names_never_argparse_dest_names(name) -> None:
    usage = _subparser(name).format_usage()
    for _, action in _options(name):
        if takes_value(action):
            assert action.metavar is not None and "_" not in action.metavar, (name, action.option_strings)
    assert not re.search(r"\b[A-Z]+_[A-Z_]+\b", usage), usage  # MAX_NEW_TOKENS, SWIFT_METHOD, ...


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_help_never_breaks_a_word_across_lines(name, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "64")  # narrow: many wraps
    p = _subparser(name)
    printed = set(p.format_help().split())
    for _, action in _options(name):
        formatter = p._get_formatter()
        words = formatter._expand_help(action).split() if action.help else []
        assert [w for w in words if w not in printed] == [], (name, action.dest)


def test_tune_opt_names_every_key_and_dtype_lists_the_short_names() -> None:
    from swiftsd.config import OptimizerConfig
    from swiftsd.loading import parse_dtype

    opt = " ".join(_entry(*po) for po in _options("tune") if po[1].dest == "opt")
    keys = [f for f in OptimizerConfig.__dataclass_fields__ if f != "enabled"]
    assert all(k in opt for k in keys), [k for k in keys if k not in opt]
    dtype = " ".join(_entry(*po) for po in _options("generate") if po[1].dest == "dtype")
    for short in ("fp32", "bf16", "fp16"):
        assert short in dtype
        parse_dtype(short, "cpu")  # and the loader takes it


def test_bench_lists_its_category_defaults_and_keeps_the_old_flag_hidden() -> None:
    entries = {a.dest: _entry(p, a) for p, a in _options("bench")}
    assert "(default: every group in the data)" in entries["categories"]
    assert "(default: every question)" in entries["n_per_category"]
    p = _subparser("bench")
    assert "--static-skip-set" not in p.format_help()  # one flag per thing in the help ...
    old = p.parse_args(["--static-skip-set", '{"attn": [2]}'])  # ... the old spelling still works
    assert old.skip_set == '{"attn": [2]}'


@pytest.mark.parametrize("argv", [[], *([name] for name in SUBCOMMANDS)])
def test_help_imports_nothing_heavy(argv) -> None:
    """The check behind "help is instant": no torch (1-2 s) or other heavy package for --help."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "swiftsd.cli.main", *argv, "--help"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "usage: swiftsd" in run.stdout, run.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {m for m in imported if m.split(".")[0] in HEAVY}, sorted(
        m for m in imported if m.split(".")[0] in HEAVY)[:10]
