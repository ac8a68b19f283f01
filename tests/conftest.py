"""Shared test settings.

Tiny models run fastest on one thread, and on a shared 2-core machine several
OpenMP thread pools oversubscribe the cores badly, so tests use one thread.

The suite writes nothing into the user's caches: every cache it could write (swiftsd's
cost models and model cache, and whatever honours ``XDG_CACHE_HOME``: Hugging Face,
matplotlib) points at a temporary folder of this process, removed at the end. Packaged
models the user has already dequantised (a minute each to rebuild) are linked into it,
read-only in effect: loading reads a finished entry and never writes into it, and a
rebuild would replace the link, not its target.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

from swiftsd.loading import model_cache  # noqa: E402


def _isolate_caches() -> Path:
    """Point the caches at a fresh temporary folder; link the user's finished packaged models into it."""
    user_models = model_cache.cache_dir() / "models"  # where the user's environment keeps them
    root = Path(tempfile.mkdtemp(prefix="swiftsd-tests-"))
    os.environ[model_cache.CACHE_ENV] = str(root / "swiftsd")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    os.environ["MPLCONFIGDIR"] = str(root / "matplotlib")
    models = root / "swiftsd" / "models"
    models.mkdir(parents=True)
    if user_models.is_dir():
        for entry in user_models.iterdir():
            if entry.is_dir() and not entry.name.startswith(".") and model_cache._read_marker(entry) is not None:
                (models / entry.name).symlink_to(entry, target_is_directory=True)
    return root


TEST_CACHE_ROOT = _isolate_caches()


def pytest_unconfigure(config) -> None:
    shutil.rmtree(TEST_CACHE_ROOT, ignore_errors=True)  # removes the links, never what they point to


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2-135M in float32 on the CPU, loaded once per test session (skips if not installed)."""
    from swiftsd.errors import MissingPackageError
    from swiftsd.loading import load

    try:
        return load("smollm2-135m", dtype="float32", device="cpu")
    except MissingPackageError as exc:
        pytest.skip(str(exc))


# Modules whose tests must share one process under pytest-xdist (``-n 2 --dist loadgroup`` in
# pyproject.toml): test_lossless and test_tree_verify_cache end with a check over what the whole
# module exercised, and the server modules start a server process per module that a split would
# start twice.
_ONE_WORKER = ("test_lossless.py", "test_tree_verify_cache.py")


# The longest-running modules (``--durations``) are collected first: xdist hands out work in
# collection order, so the long ones start at once on both workers and the short tests fill
# in at the end, instead of one worker idling while the other finishes a long module.
_LONG_FIRST = ("test_lossless.py", "test_sampling.py", "test_lossless_real.py", "test_server_reliability.py",
               "test_hf_generate.py", "test_server_load.py", "test_loading.py", "test_server.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        name = item.path.name
        if name in _ONE_WORKER or name.startswith("test_server"):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
