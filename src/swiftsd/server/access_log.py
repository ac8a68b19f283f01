"""One access line per HTTP request, at the default log level: what vLLM and uvicorn users expect.

    swiftsd: 127.0.0.1 "POST /v1/chat/completions" 200 0.84s prompt=12 completion=64 queued=0.20s

A pure-ASGI middleware (outermost, so refused bodies and auth failures are logged too) times the
request and reads the status the app sends. A handler adds what only it knows (tokens, queue wait)
with :func:`note`: a context variable carries this request's fields, so the handlers need no
extra argument and nothing is set on the app. The logger is ``swiftsd.access``; ``swiftsd serve``
shows it at ``--log-level info`` (the default) and below, and hides it above.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

log = logging.getLogger("swiftsd.access")

_fields: ContextVar[dict[str, Any] | None] = ContextVar("swiftsd_access_fields", default=None)


def note(**fields: Any) -> None:
    """Add fields (``prompt``, ``completion``: token counts; ``queued``: seconds) to this request's line."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def line(method: str, path: str, client: str, status: int | None, seconds: float, fields: dict[str, Any]) -> str:
    """The access line (without the ``swiftsd:`` prefix the handler adds)."""
    parts = [f'{client} "{method} {path}"', str(status) if status is not None else "-", f"{seconds:.2f}s"]
    for key in ("prompt", "completion"):
        if key in fields:
            parts.append(f"{key}={fields[key]}")
    if "queued" in fields:
        parts.append(f"queued={fields['queued']:.2f}s")
    return " ".join(parts)


class AccessLog:
    """ASGI middleware: one INFO record on ``swiftsd.access`` when each HTTP request has been answered."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, fields = time.perf_counter(), {}
        status: list[int] = []
        token = _fields.set(fields)

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _fields.reset(token)
            client = (scope.get("client") or ("-",))[0]
            if log.isEnabledFor(logging.INFO):
                log.info(line(scope.get("method", "-"), scope.get("path", "-"), str(client),
                              status[0] if status else None, time.perf_counter() - t0, fields))


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (as logging's last-resort handler does), so a
    server started in-process outlives a swapped stream (pytest's capture, a redirect)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr


def configure(level: str) -> None:
    """Show access lines on stderr at ``level`` (a ``--log-level`` name): shown at info and debug."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("swiftsd: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(getattr(logging, level.upper()))
