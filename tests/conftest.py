"""Shared test settings.

Tiny models run fastest on one thread, and on a shared 2-core machine several
OpenMP thread pools oversubscribe the cores badly, so tests use one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2-135M in float32 on the CPU, loaded once per test session (skips if not installed)."""
    from swiftsd.errors import MissingPackageError
    from swiftsd.loading import load

    try:
        return load("smollm2-135m", dtype="float32", device="cpu")
    except MissingPackageError as exc:
        pytest.skip(str(exc))
