"""The HTTP connection under the app: uvicorn's h11 protocol with a request-header read timeout.

uvicorn bounds the idle time between two requests of a keep-alive connection
(``timeout_keep_alive``) and the size of a request's headers (h11's incomplete-event
limit, 16 KiB: larger headers get 400), but not the time the headers take to arrive:
a connection that sends nothing, or half a request line, stays open for good
(issue 32: over 40 s). :class:`HeaderTimeoutH11` is uvicorn's own h11 protocol, passed
as its ``http`` protocol class, plus one timer: from a connection's first moment, and
from the first byte of each later request, the headers must be complete within
``read_timeout`` seconds, else the client gets 408 and the connection is closed.
The body's own timeout is the app's (guard.py), where the request is known.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import APIError

__all__ = ["HeaderTimeoutH11", "header_timeout_protocol", "uvicorn_config"]


def _timeout_response(read_timeout: float) -> bytes:
    body = json.dumps(APIError(408, f"the request headers did not arrive within {read_timeout:g} s "
                                    "(--read-timeout); the connection is closed", None, "read_timeout").body())
    head = ("HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body.encode()


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol; a request whose headers take over ``read_timeout`` s gets 408 and a close.

    Subclasses set ``read_timeout`` and ``on_timeout`` (see :func:`header_timeout_protocol`).
    """

    read_timeout: float = 30.0
    on_timeout: Callable[[], None] = staticmethod(lambda: None)
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing is held no longer than a slow one

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # the headers of a request are complete: the app has it now
            self._disarm()
        elif self._awaiting_headers() and self._header_timer is None:
            self._arm()  # the first bytes of a later request on a keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.read_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        self.on_timeout()
        self.transport.write(_timeout_response(self.read_timeout))
        self.transport.close()


def header_timeout_protocol(read_timeout: float, on_timeout: Callable[[], None] = lambda: None
                            ) -> type[HeaderTimeoutH11]:
    """A :class:`HeaderTimeoutH11` bound to one server's timeout and its 408 counter."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,),
                {"read_timeout": read_timeout, "on_timeout": staticmethod(on_timeout)})


def uvicorn_config(app: Any, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's config for an app of :func:`~swiftsd.server.create_app`: its header read timeout
    (``settings.read_timeout``, 408s counted in its metrics) wired in; ``kwargs`` go to uvicorn."""
    ctx = app.state.ctx
    protocol = header_timeout_protocol(ctx.settings.read_timeout, lambda: ctx.metrics.add("http", "408"))
    return uvicorn.Config(app, http=protocol, **kwargs)
