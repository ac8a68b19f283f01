"""The suite writes only into temporary folders (tests/conftest.py), never into the user's caches."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import TEST_CACHE_ROOT
from swiftsd.loading import cache_dir

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

# tests that write into a cache: a cost model measured and kept (generate, on its default cache), a trace
# plotted (matplotlib's font cache). (Building a packaged model's cache takes a minute: the whole suite run
# with XDG_CACHE_HOME pointing to an empty folder checks that path, and leaves the folder empty too.)
WRITERS = ["test_cli_generate.py::test_greedy_prints_text_and_stats", "test_trace.py::test_plot_trace_cli"]


def test_this_session_caches_into_a_temporary_folder() -> None:
    tmp = Path(tempfile.gettempdir()).resolve()
    for path in (cache_dir(), Path(os.environ["XDG_CACHE_HOME"]), Path(os.environ["MPLCONFIGDIR"])):
        assert path.resolve().is_relative_to(TEST_CACHE_ROOT.resolve()) and TEST_CACHE_ROOT.resolve() != tmp
    links = [e for e in (cache_dir() / "models").iterdir() if e.is_symlink()]
    assert all((e / "swiftsd-cache.json").is_file() for e in links)  # finished models only: loading only reads them


def test_a_run_with_an_empty_user_cache_leaves_it_empty(tmp_path) -> None:
    user_cache = tmp_path / "xdg-cache"
    user_cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SWIFTSD_CACHE_DIR", "MPLCONFIGDIR")}
    env.update(XDG_CACHE_HOME=str(user_cache), PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                          *(str(TESTS / t) for t in WRITERS)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "passed" in run.stdout
    assert sorted(str(p.relative_to(user_cache)) for p in user_cache.rglob("*")) == []
