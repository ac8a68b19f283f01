"""The app's outer layer (pure ASGI): the request body read under a size limit and a timeout,
every response counted by status, and no exception left for uvicorn.

- **Size**: ``Content-Length`` over the limit gets 413 before a byte is read; any body
  (chunked transfer encoding included) is read with a running count and refused with 413
  the moment it passes the limit. Either way the response says ``Connection: close``.
- **Slow bodies**: the whole body must arrive within ``read_timeout`` seconds of the
  headers, else 408 and ``Connection: close`` (headers: transport.py).
- **Unexpected errors**: an exception out of the app is logged in one line (its traceback
  at debug level), answered with a JSON 500 when no response has started, and counted in
  ``swiftsd_http_responses_total`` and, on the generation endpoints,
  ``swiftsd_requests_total{outcome="error"}``. Nothing reaches uvicorn, so the keep-alive
  connection stays open for the client's next request.

The body is read whole here (at most the limit) and replayed to the app, so the app's
handlers never wait on a slow client. (Starlette's BaseHTTPMiddleware would wrap
streaming responses in a task group that hides client disconnects from the handler,
so this stays plain ASGI.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .errors import APIError, one_line
from .metrics import Metrics

log = logging.getLogger("swiftsd.server")

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
CLOSE = {"Connection": "close"}
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, error: APIError) -> None:
        self.error = error


class Guard:
    """Wraps the app: body limit and read timeout, response counts, the last word on errors."""

    def __init__(self, app: Any, metrics: Metrics, max_body: int, read_timeout: float) -> None:
        self.app, self.metrics, self.max_body, self.read_timeout = app, metrics, max_body, read_timeout

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.add("http", str(message["status"]))
            await send(message)

        try:
            body = await self._read_body(scope, receive)
        except _Refused as r:
            await r.error.response()(scope, receive, counting_send)
            return
        if body is None:
            return  # the client left while sending: nobody to answer
        try:
            await self.app(scope, _replay(body, receive), counting_send)
        except Exception as exc:  # noqa: BLE001 - the one place an unexpected error is answered
            log.error("internal error in %s %s: %s (the traceback is logged at --log-level debug)",
                      scope.get("method"), scope.get("path"), one_line(exc))
            log.debug("traceback of the internal error", exc_info=exc)
            if scope.get("path") in GENERATION_PATHS:
                self.metrics.add("generations", "error")
            if not started:
                error = APIError(500, f"internal error ({type(exc).__name__}); see the server log")
                await error.response()(scope, receive, counting_send)
            # else: the response is cut short and uvicorn closes the connection (streams report
            # their errors in-stream before this point, app.stream_events)

    async def _read_body(self, scope: dict, receive: Receive) -> bytes | None:
        """The whole body, or None if the client disconnected; raises _Refused (413, 408)."""
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise _Refused(self._too_large())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise _Refused(APIError(408, f"the request body did not arrive within {self.read_timeout:g} s "
                                             f"(--read-timeout; {size} bytes came)", None, "read_timeout",
                                        CLOSE)) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _Refused(self._too_large())
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _too_large(self) -> APIError:
        return APIError(413, f"request body too large (limit {self.max_body} bytes, --max-body-bytes)", None,
                        "body_too_large", CLOSE)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body read already, then listens to the client again."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
