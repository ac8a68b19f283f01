"""A request body from bytes to a validated schema, on a worker thread (``ServerContext.off_loop``).

Why not FastAPI's own body parameter: it parses and validates on the event loop, and
pydantic holds the GIL throughout, so an 8 MB body of 1.5 million token ids and one
string (3 million union errors) froze every other client, ``/health`` included, for
13 s. Here the JSON is parsed and walked in plain Python on a thread (which lets the
event loop run), and the walk refuses, before pydantic sees it, what pydantic would be
slow on: more JSON values than the model's context plus ``EXTRA_VALUES``. It also
refuses lone UTF-16 surrogates (``"\\ud800"``, valid JSON but no Unicode character):
the tokenizer cannot encode them, nor can an error message that quotes them. They are
refused with 400 naming the field rather than repaired, because a repair would
silently change the prompt.
"""

from __future__ import annotations

import email.message
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import APIError, validation_message

__all__ = ["EXTRA_VALUES", "parse_body", "check_values"]

EXTRA_VALUES = 10_000  # JSON values a request may hold beyond one per token of the model's context
_SURROGATE = re.compile("[\ud800-\udfff]")
M = TypeVar("M", bound=BaseModel)


def parse_body(raw: bytes, content_type: str | None, schema: type[M], max_values: int, max_stop: int) -> M:
    """``raw`` as ``schema``; raises APIError (400) naming what is wrong. Runs off the event loop."""
    obj = _json(raw, content_type)
    check_values(obj, max_values)
    try:
        return schema.model_validate(obj)
    except ValidationError as exc:
        message, param = validation_message(exc.errors(include_url=False), max_stop)
        raise APIError(400, message, param, "invalid_request") from None


def _json(raw: bytes, content_type: str | None) -> Any:
    """The body as JSON, with FastAPI's rules: no Content-Type or a JSON one."""
    if not raw:
        raise APIError(400, "the request body is empty: send a JSON object", None, "invalid_request")
    if content_type:
        m = email.message.Message()
        m["content-type"] = content_type
        sub = m.get_content_subtype()
        if m.get_content_maintype() != "application" or not (sub == "json" or sub.endswith("+json")):
            raise APIError(400, "the request body must be a JSON object (send it with Content-Type: "
                                "application/json)", None, "invalid_request")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc.msg} at character {exc.pos})", None,
                       "invalid_request") from None
    except (UnicodeDecodeError, RecursionError):
        raise APIError(400, "the request body could not be read as JSON (invalid UTF-8, or nested too deeply)",
                       None, "invalid_request") from None


def _name(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "body"


def check_values(obj: Any, max_values: int) -> None:
    """Refuse more than ``max_values`` JSON values, and any string (or key) with a lone surrogate."""
    count, stack = 1, [(obj, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
            continue
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        count += len(value)
        if count > max_values:
            raise APIError(400, f"{_name(path)}: the request holds more than {max_values} JSON values (this one "
                                f"{len(value)}); one per token of the model's context plus {EXTRA_VALUES} is the "
                                "most a request can use", _name(path) if path else None, "invalid_value")
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, path + (key,))
            stack.append((item, path + (key,)))


def _check_text(text: str, path: tuple) -> None:
    bad = _SURROGATE.search(text)
    if bad is not None:
        name = _name(path)
        raise APIError(400, f"{name}: holds a lone UTF-16 surrogate (\\u{ord(bad.group()):04x} at character "
                            f"{bad.start()}), which is not a Unicode character; send text as UTF-8 or as "
                            "\\u escapes of complete surrogate pairs", name if path else None,
                       "invalid_value")
