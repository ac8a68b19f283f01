"""swiftsd.progress: our bars replace transformers' during a load, on a terminal only, and leave nothing behind."""

from __future__ import annotations

import pytest
from transformers import modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

import swiftsd
from swiftsd import progress
from tiny_cli import save_tiny_model_dir


@pytest.fixture
def bars_on(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")


def test_enabled_follows_the_terminal_unless_told(monkeypatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert progress.enabled() is False  # pytest's captured stderr is not a terminal
    for value, want in (("1", True), ("yes", True), ("0", False), ("off", False)):
        monkeypatch.setenv(progress.PROGRESS_ENV, value)
        assert progress.enabled() is want


def test_loading_weights_bar_becomes_ours_and_the_others_go(capsys, bars_on) -> None:
    before = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(before)
    with progress.hf_bars(weights="tiny-model"):
        assert list(hf_logging.tqdm(range(3), desc="Loading weights")) == [0, 1, 2]
        assert list(hf_logging.tqdm(range(2), desc="Writing model shards")) == [0, 1]
    err = capsys.readouterr().err
    assert "swiftsd: loading tiny-model" in err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.set_tqdm_hook(before) is before  # the previous hook is back


def test_gguf_loop_reports_on_the_ticker_and_is_restored(capsys, bars_on) -> None:
    original = gguf_utils.tqdm
    with progress.Ticker("dequantising toy") as ticker, progress.hf_bars(ticker):
        assert gguf_utils.tqdm is not original
        got = list(gguf_utils.tqdm(["a", "b", "c"], desc="Converting and de-quantizing GGUF tensors..."))
        ticker.stage("saving the dense weights")
    assert got == ["a", "b", "c"] and gguf_utils.tqdm is original
    err = capsys.readouterr().err
    assert "swiftsd: dequantising toy" in err and "saving the dense weights" in err
    assert "de-quantizing" not in err
    assert "\n" not in err.rstrip("\n")  # one self-overwriting line, no stray blank lines


def test_ticker_is_silent_off_a_terminal(capsys, monkeypatch) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    with progress.Ticker("dequantising toy") as ticker:
        ticker.stage("reading")
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(save_tiny_model_dir(tmp_path_factory.mktemp("tiny-progress")))


def test_load_shows_one_swiftsd_bar_and_no_hf_bar(capsys, bars_on, model_dir) -> None:
    swiftsd.load(model_dir)
    err = capsys.readouterr().err
    assert "swiftsd: loading" in err and "Loading weights" not in err


def test_load_prints_nothing_off_a_terminal(capsys, monkeypatch, model_dir) -> None:
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    swiftsd.load(model_dir)
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "%|" not in err


def test_concurrent_loads_build_a_cache_entry_once(tmp_path) -> None:
    """Two processes that need the same entry (e.g. two test workers on a clean machine) build it once."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from swiftsd import loading
        final = Path({str(tmp_path)!r}) / "models" / "entry"
        root = Path({str(tmp_path)!r})
        def build(out, work):
            (root / f"built-{{sys.argv[1]}}").touch()
            deadline = time.time() + 60
            while len(list(root.glob("ready-*"))) < 2 and time.time() < deadline:  # the other one is coming
                time.sleep(0.05)
            time.sleep(1.0)
            (out / "weights").write_text("x")
            return {{}}
        (root / f"ready-{{sys.argv[1]}}").touch()
        loading._install_entry(final, build)
        print((final / "weights").read_text())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o for o, _ in outs] == ["x\n", "x\n"]
    assert len(list(tmp_path.glob("built-*"))) == 1  # one build; the other process waited for it
    assert any("waiting for another swiftsd process" in e for _, e in outs)


def test_a_first_cost_measurement_is_announced_and_a_cached_one_is_not(capsys, bars_on, tmp_path) -> None:
    """Measuring the cost model takes up to a minute on a first run: it names itself and where it keeps the result."""
    from swiftsd.core.decoder import SwiftDecoder
    from swiftsd.engine.cost_cache import cached_costs
    from tiny import tiny_model

    adapter = SwiftDecoder(tiny_model("qwen2", seed=0), optimizer=False).adapter
    first = cached_costs(adapter, draft_vocab=0, directory=tmp_path)
    err = capsys.readouterr().err
    assert "swiftsd: measuring this model's step costs once" in err and str(tmp_path) in err
    assert cached_costs(adapter, draft_vocab=0, directory=tmp_path) == first  # read back, not measured
    assert capsys.readouterr().err == ""
