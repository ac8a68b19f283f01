"""`swiftsd serve`: an OpenAI-compatible HTTP server around one :class:`SwiftDecoder`.

The engine decodes one sequence at a time, so the server is built around a single
worker thread fed by a FIFO queue::

    guard.py (body limit, read timeout, errors) -> handler (event loop)   app.py:
        parse, validate (body.py, protocol.py), tokenize on worker threads; decoder.stream()
        --Engine.submit (429 if the queue is full)-->   engine.py: the worker thread
        --per-step token ids via loop.call_soon_threadsafe--> handler
        --TextAssembler (text.py: detokenisation, stop strings)--> JSON or SSE

Every request has one deadline (arrival + ``request_timeout``): past it, a request
still waiting gets 503 and one running gets 504; either way its place is freed and
its generation stopped (a long prefill within one chunk). A client that disconnects
stops its generation too. Slow clients are cut off by ``--read-timeout`` (headers:
transport.py; body: guard.py). The decoder (and so the on-the-fly optimiser it holds)
is shared by all requests, as in the paper's data-stream setting. With ``--state FILE`` what it learned survives
restarts (state_keeper.py); with ``--skip-set-store`` the optimiser's best set is saved
on shutdown. ``/metrics`` is Prometheus text from ``prometheus_client`` (metrics.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .settings import ServerSettings

if TYPE_CHECKING:
    from .app import ServerContext, create_app

__all__ = ["ServerContext", "ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    """The app (FastAPI, the decoder) on first use, so ``swiftsd serve --help`` imports neither (PEP 562)."""
    if name not in ("ServerContext", "create_app"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(".app", __name__), name)
