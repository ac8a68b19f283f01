"""Shared test settings.

Tiny models run fastest on one thread, and on a shared 2-core machine several
OpenMP thread pools oversubscribe the cores badly, so tests use one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
