"""Errors in OpenAI's JSON shape, built from structured data: a status, a field, a code.

Handlers raise :class:`APIError` with the request field it concerns; pydantic's own
validation errors are read from their structured ``loc`` / ``type``; swiftsd's
errors map by their type. Nothing is recovered by parsing an exception's text.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextLengthError, SwiftSDError

class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error", 429: "rate_limit_exceeded",
             499: "client_closed_request", 500: "server_error", 503: "server_error", 504: "timeout"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        message, param = _printable(message), None if param is None else _printable(param)
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (for the log)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (a lone surrogate quoted from a request) as ``\\udc00``,
    so the error can always be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def from_swiftsd(exc: SwiftSDError) -> APIError:
    """A decoder validation error as a 400. The server checks the prompt and the context length
    itself, naming the field; what is left here is told apart by type alone."""
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), "max_tokens", "context_length_exceeded")
    return APIError(400, str(exc), None, "invalid_value")


# what a field accepts, said once instead of one pydantic error per branch of its type
UNION_HINTS = {
    "prompt": "must be a string, a list of token ids, or a list holding one string or one list of token ids",
    "stop": "must be a string or a list of up to {max_stop} strings",
    "content": 'must be a string or a list of {"type": "text", "text": ...} parts',
}
# pydantic's loc entries that name a branch of a union type rather than a field
_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|function-.*|literal\[.*\]|[A-Z]\w*)$")


def validation_message(errors: Sequence[dict[str, Any]], max_stop: int) -> tuple[str, str | None]:
    """pydantic's error list -> one readable line and the first offending field."""
    parts: list[str] = []
    first: str | None = None
    for err in errors:
        raw = [str(x) for x in err.get("loc", ())]
        raw = raw[1:] if raw[:1] == ["body"] else raw
        kind = err.get("type")
        if kind == "json_invalid":  # loc holds a character offset, not a field
            ctx = err.get("ctx", {}).get("error", "")
            parts.append(f"the request body is not valid JSON ({ctx})" if ctx else "the request body is not valid JSON")
            continue
        union = next((i for i, x in enumerate(raw) if _UNION_TAG.match(x)), None)
        name = ".".join(x for x in raw if not _UNION_TAG.match(x))
        first = first or name or None
        text = _describe(raw, union, name, kind, err, max_stop)
        if text not in parts:
            parts.append(text)
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more, first


def _describe(raw: list[str], union: int | None, name: str, kind: Any, err: dict[str, Any], max_stop: int) -> str:
    field_name = raw[union - 1] if union else None  # the field whose type is a union
    if field_name in UNION_HINTS:
        return f"{'.'.join(raw[:union])}: {UNION_HINTS[field_name].replace('{max_stop}', str(max_stop))}"
    if not name and kind == "missing":
        return "the request body is empty: send a JSON object"
    if not name and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object (send it with Content-Type: application/json)"
    if kind == "extra_forbidden":
        return f"unknown field {name!r} (not supported by this server)"
    if kind == "missing":
        return f"missing required field {name!r}"
    return f"{name or 'body'}: {err.get('msg', 'invalid value')}"


def install_handlers(app: FastAPI, max_stop: int) -> None:
    """Every error the app answers, in OpenAI's shape. (An unexpected exception is guard.py's: a
    handler for ``Exception`` here would run in Starlette's outermost middleware, which re-raises
    to uvicorn after answering: a second traceback, and the connection closed.)"""

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = validation_message(exc.errors(), max_stop)
        return APIError(400, msg, param, "invalid_request").response()

    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        if exc.detail == "There was an error parsing the body":  # FastAPI, when json.loads fails other than by syntax
            msg = "the request body could not be read as JSON (invalid UTF-8, or nested too deeply)"
        return APIError(exc.status_code, msg, None, "invalid_request" if exc.status_code == 400 else None,
                        exc.headers).response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http)
