"""`swiftsd serve`: an OpenAI-compatible HTTP server around one :class:`SwiftDecoder`.

The engine decodes one sequence at a time, so the server is built around a single
worker thread fed by a FIFO queue:

    HTTP handler (event loop) --validate, tokenize, decoder.stream()--> _Job
        --Engine.submit (429 if the queue is full)--> worker thread
        --per-step token ids via loop.call_soon_threadsafe--> handler
        --TextAssembler (incremental detokenisation, stop strings)--> JSON or SSE

Every request has one deadline (arrival + ``request_timeout``): past it, a request
still waiting gets 503 and one running gets 504; either way its place is freed and
its generation stopped. A client that disconnects stops its generation too. The
decoder (and so the on-the-fly optimiser it holds) is shared by all requests, as in
the paper's data-stream setting; with ``--skip-set-store`` its state is saved when
the server shuts down (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import math
import queue
import re
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, AsyncIterator, Literal, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ContextLengthError, InvalidArgumentError, SwiftSDError

log = logging.getLogger("swiftsd.server")

MAX_STOP = 4  # OpenAI's limit on stop sequences
DETOK_CONTEXT = 5  # prompt tokens decoded ahead of the completion, so the first word keeps its leading space
POLL_S = 0.25  # how often a waiting handler checks its deadline and its client
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


# =============================================================================== settings
@dataclass(frozen=True)
class ServerSettings:
    """Limits and options of one server, parsed once from the command line."""

    max_queue: int = 64  # requests waiting behind the running one; beyond -> 429
    request_timeout: float = 300.0  # seconds from arrival; past it -> 503 (queued) / 504 (running)
    api_key: str | None = None  # when set, /v1/* and /metrics need "Authorization: Bearer <key>"
    max_body_bytes: int = 8 << 20  # larger request bodies -> 413
    skip_set_store: str | None = None  # save the optimiser's state here on shutdown
    task: str = "default"
    aliases: tuple[str, ...] = ()  # other names the "model" field may use (e.g. the model's identity)

    def __post_init__(self) -> None:
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise InvalidArgumentError(f"--max-queue must be an integer >= 0, got {self.max_queue!r}")
        t = self.request_timeout
        if not isinstance(t, (int, float)) or math.isnan(t) or t <= 0:
            raise InvalidArgumentError(f"--request-timeout must be a positive number of seconds, got {t!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidArgumentError("--api-key is empty: give a non-empty key or leave the option out")


# =============================================================================== OpenAI errors
class APIError(Exception):
    """An error answered in OpenAI's JSON shape: {"error": {message, type, param, code}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
             499: "client_closed_request", 500: "server_error", 503: "server_error", 504: "timeout"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _bad_argument(exc: SwiftSDError) -> APIError:
    """The decoder's own validation errors, as 400s naming the request field where we can."""
    msg = str(exc).replace("max_new_tokens", "max_tokens")
    if isinstance(exc, ContextLengthError):
        return APIError(400, msg, "max_tokens", "context_length_exceeded")
    m = re.match(r"(max_tokens|temperature|top_p|top_k|token ids|the prompt|input_ids)", msg)
    param = {"token ids": "prompt", "the prompt": "prompt", "input_ids": "prompt"}.get(m.group(1), m.group(1)) \
        if m else None
    return APIError(400, msg, param, "invalid_value")


# what a field accepts, said once instead of one pydantic error per branch of its type
_UNION_HINTS = {
    "prompt": "must be a string, a list of token ids, or a list holding one string or one list of token ids",
    "stop": f"must be a string or a list of up to {MAX_STOP} strings",
    "content": 'must be a string or a list of {"type": "text", "text": ...} parts',
}
_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|function-.*|literal\[.*\]|[A-Z]\w*)$")


def _validation_message(errors: Sequence[dict[str, Any]]) -> tuple[str, str | None]:
    """pydantic's error list -> one readable line and the first offending field."""
    parts: list[str] = []
    first: str | None = None
    for err in errors:
        raw = [str(x) for x in err.get("loc", ())]
        if raw[:1] == ["body"]:
            raw = raw[1:]
        kind = err.get("type")
        if kind == "json_invalid":  # loc holds a character offset, not a field
            ctx = err.get("ctx", {}).get("error", "")
            parts.append(f"the request body is not valid JSON ({ctx})" if ctx else "the request body is not valid JSON")
            continue
        union = next((i for i, x in enumerate(raw) if _UNION_TAG.match(x)), None)
        loc = [x for x in raw if not _UNION_TAG.match(x)]
        name = ".".join(loc)
        first = first or name or None
        field_name = raw[union - 1] if union else None  # the field whose type is a union
        if field_name in _UNION_HINTS:
            text = f"{'.'.join(raw[:union])}: {_UNION_HINTS[field_name]}"
        elif not name and kind == "missing":
            text = "the request body is empty: send a JSON object"
        elif not name and kind in ("model_attributes_type", "dict_type", "model_type"):
            text = "the request body must be a JSON object (send it with Content-Type: application/json)"
        elif kind == "extra_forbidden":
            text = f"unknown field {name!r} (not supported by this server)"
        elif kind == "missing":
            text = f"missing required field {name!r}"
        else:
            text = f"{name or 'body'}: {err.get('msg', 'invalid value')}"
        if text not in parts:
            parts.append(text)
    more = f" (and {len(parts) - 3} more)" if len(parts) > 3 else ""
    return "; ".join(parts[:3]) + more, first


# =============================================================================== request bodies
_Strict = ConfigDict(strict=True, extra="forbid")
_Temperature = Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)]
_TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
_Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
_Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class StreamOptions(BaseModel):
    model_config = _Strict
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by both endpoints. Unknown fields are rejected, as OpenAI does."""

    model_config = _Strict
    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: _Temperature = 1.0  # OpenAI's default; 0 = greedy
    top_p: _TopP = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # extension (as in vLLM); 0 or -1 = off
    seed: _Seed | None = None
    stop: _Stop = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    presence_penalty: _Penalty = 0.0  # only 0 is supported; accepted so default-sending clients work
    frequency_penalty: _Penalty = 0.0
    logit_bias: dict[str, float] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default for completions
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = _Strict
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _Strict
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = None


def _check_unsupported(req: _Common) -> None:
    """Fields OpenAI has but this server does not implement: reject non-default values clearly."""
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported: swiftsd decodes one sequence per request; "
                            "send n=1 (or leave it out) and repeat the request for more samples", "n", "unsupported")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported (it would change the model's distribution, which "
                                "SWIFT keeps exact); leave it at 0", name, "unsupported")
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported; leave it out", "logit_bias", "unsupported")
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise APIError(400, "echo is not supported; leave it false", "echo", "unsupported")
        if req.logprobs:
            raise APIError(400, "logprobs is not supported; leave it out", "logprobs", "unsupported")
        if req.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported; leave it out or set 1", "best_of", "unsupported")
        if req.suffix:
            raise APIError(400, "suffix (insertion) is not supported; leave it out", "suffix", "unsupported")
    if isinstance(req, ChatRequest) and (req.logprobs or req.top_logprobs):
        raise APIError(400, "logprobs are not supported; leave them out", "logprobs", "unsupported")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if any(s == "" for s in stops):
        raise APIError(400, "stop sequences must be non-empty strings", "stop", "invalid_value")


# =============================================================================== text out
class TextAssembler:
    """Generated token ids in, text safe to send out: incremental detokenisation and stop strings.

    Decoding follows text-generation-inference: decode a short window of ids twice
    (without and with the new token) and release the difference, holding it back
    while it ends in an incomplete UTF-8 character. Text that might be the start of
    a stop string is held back too, so the output stops *before* the stop text, as
    OpenAI's does, and streamed chunks always concatenate to the non-streamed text.
    """

    def __init__(self, tokenizer: Any, context_ids: Sequence[int], stop: Sequence[str], eos: set[int]) -> None:
        self.tok = tokenizer
        self.ids = list(context_ids[-DETOK_CONTEXT:])
        self.prefix, self.read = 0, len(self.ids)
        self.stop = tuple(stop)
        self.eos = eos
        self.text = ""  # decoded completion so far (up to a stop string)
        self.sent = 0  # characters of self.text already released
        self.n_tokens = 0  # completion tokens consumed, eos and the token completing a stop included
        self.finish_reason: str | None = None

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _step(self, final: bool = False) -> str:
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        new_text = self._decode(self.ids[self.prefix:])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def _find_stop(self) -> int | None:
        hits = [i for s in self.stop if (i := self.text.find(s, self.sent)) >= 0]
        return min(hits) if hits else None

    def _hold(self) -> int:
        """Length of the longest tail of the text that could begin a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _end(self, reason: str, flush: bool) -> None:
        if flush:
            self.text += self._step(final=True)
            i = self._find_stop()
            if i is not None:
                self.text = self.text[:i]
        self.finish_reason = reason

    def feed(self, tokens: Sequence[int]) -> str:
        """Consume one step's tokens; return the text that can be released now."""
        for t in tokens:
            if self.finish_reason is not None:
                break
            self.n_tokens += 1
            if t in self.eos:
                self._end("stop", flush=True)
                break
            self.ids.append(int(t))
            self.text += self._step()
            if self.stop and (i := self._find_stop()) is not None:
                self.text = self.text[:i]
                self.finish_reason = "stop"
        return self._release()

    def finish(self) -> str:
        """The generation ended (token budget): flush what was held back."""
        if self.finish_reason is None:
            self._end("length", flush=True)
        return self._release()

    def _release(self) -> str:
        end = len(self.text) if self.finish_reason is not None else len(self.text) - self._hold()
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


# =============================================================================== metrics
@dataclass
class Metrics:
    """Counters for /metrics. Written by the worker and the handlers, so guarded by a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    http: dict[str, int] = field(default_factory=dict)  # status code -> responses
    generations: dict[str, int] = field(default_factory=dict)  # outcome -> requests
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0  # decoding steps after the prefill
    step_tokens: int = 0  # tokens those steps committed (bonus included)
    drafted: int = 0  # from completed generations' stats
    accepted: int = 0
    busy_s: float = 0.0  # wall time the engine spent generating
    phase_s: dict[str, float] = field(default_factory=dict)  # draft / verify / optimize / prefill / other
    optimizer: dict[str, Any] | None = None  # last snapshot of decoder.optimizer.status()

    def add(self, table: str, key: str) -> None:
        with self.lock:
            d = getattr(self, table)
            d[key] = d.get(key, 0) + 1


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
    return repr(v) if isinstance(v, float) else str(int(v))


class _Prom:
    """The few lines of Prometheus text exposition format (0.0.4) the server needs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]] | float) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        if not isinstance(samples, list):
            samples = [({}, samples)]
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lab}}} {_num(value)}" if lab else f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _metric_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_").lower() or "value"


def render_metrics(m: Metrics, engine: "Engine") -> str:
    with m.lock:
        p = _Prom()
        p.metric("swiftsd_http_responses_total", "counter", "HTTP responses by status code",
                 [({"code": c}, n) for c, n in sorted(m.http.items())])
        p.metric("swiftsd_requests_total", "counter",
                 "generation requests by outcome (stop, length, cancelled, timeout_queued, timeout_running, "
                 "rejected_queue_full, error)", [({"outcome": k}, n) for k, n in sorted(m.generations.items())])
        p.metric("swiftsd_prompt_tokens_total", "counter", "prompt tokens of admitted requests", m.prompt_tokens)
        p.metric("swiftsd_generated_tokens_total", "counter", "tokens generated by the engine", m.generated_tokens)
        p.metric("swiftsd_engine_busy_seconds_total", "counter", "wall time the engine spent generating", m.busy_s)
        p.metric("swiftsd_tokens_per_second", "gauge", "generated tokens per second of engine busy time",
                 m.generated_tokens / m.busy_s if m.busy_s > 0 else 0.0)
        p.metric("swiftsd_decode_steps_total", "counter", "decoding steps (one full-model forward each)", m.steps)
        p.metric("swiftsd_mean_accepted_tokens", "gauge",
                 "tokens committed per decoding step, bonus token included (Spec-Bench tau)",
                 m.step_tokens / m.steps if m.steps else 0.0)
        p.metric("swiftsd_draft_tokens_total", "counter", "draft tokens proposed (completed requests)", m.drafted)
        p.metric("swiftsd_accepted_draft_tokens_total", "counter", "draft tokens accepted (completed requests)",
                 m.accepted)
        p.metric("swiftsd_acceptance_rate", "gauge", "accepted / drafted tokens (completed requests)",
                 m.accepted / m.drafted if m.drafted else 0.0)
        p.metric("swiftsd_phase_seconds_total", "counter", "engine time per decoding phase",
                 [({"phase": k}, v) for k, v in sorted(m.phase_s.items())])
        p.metric("swiftsd_queue_depth", "gauge", "requests waiting for the engine", engine.waiting)
        p.metric("swiftsd_running_requests", "gauge", "requests being decoded (0 or 1)", int(engine.running))
        p.metric("swiftsd_max_queue", "gauge", "queue capacity (--max-queue)", engine.max_queue)
        opt = m.optimizer
        p.metric("swiftsd_optimizer_enabled", "gauge", "1 when the decoder has an on-the-fly optimiser",
                 int(opt is not None))
        if opt:
            phase = next((str(opt[k]) for k in ("phase", "state", "mode") if isinstance(opt.get(k), str)), None)
            if phase is not None:
                p.metric("swiftsd_optimizer_phase", "gauge", "the optimiser's current phase (1 = this one)",
                         [({"phase": phase}, 1)])
            for key, value in _flat_numbers(opt):
                p.metric(f"swiftsd_optimizer_{_metric_name(key)}", "gauge", f"optimiser state field {key!r}", value)
        return p.text()


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Numeric scalars of a state dict (one level of nesting), for export as gauges."""
    out: list[tuple[str, float]] = []
    for k, v in d.items():
        if isinstance(v, (bool, int, float)) and not (isinstance(v, float) and math.isnan(v)):
            out.append((prefix + str(k), v))
        elif isinstance(v, dict) and not prefix:
            out += _flat_numbers(v, f"{k}_")
    return out


# =============================================================================== engine
@dataclass(eq=False)
class _Job:
    """One admitted request: its generation and the channel back to its handler.

    Events go worker -> handler through a deque that only the event loop touches
    (``loop.call_soon_threadsafe``) plus an asyncio.Event; waiting on the event can
    be cancelled or timed out without ever losing an event.
    """

    stream: Any  # GenerationStream
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() past which the request is abandoned
    events: deque = field(default_factory=deque)  # (kind, payload): tokens | done | error | stopped | expired
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done, or queued -> cancelled

    def emit(self, kind: str, payload: Any = None) -> None:
        """Called on the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self._push, (kind, payload))
        except RuntimeError:  # event loop closed: the server is shutting down
            self.cancelled.set()

    def _push(self, event: tuple[str, Any]) -> None:
        self.events.append(event)
        self.ready.set()


class Engine:
    """One worker thread runs the decoder for one job at a time, in arrival order."""

    def __init__(self, decoder: Any, max_queue: int, metrics: Metrics) -> None:
        self.decoder = decoder
        self.max_queue = max_queue
        self.metrics = metrics
        self._q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._current: _Job | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> bool:
        return self._current is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._snapshot_optimizer()
        self._thread = threading.Thread(target=self._work, name="swiftsd-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued and running, and let the worker finish."""
        self._stopping.set()
        with self._lock:
            if self._current is not None:
                self._current.cancelled.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: _Job) -> bool:
        """Queue a job; False (answer 429) when ``max_queue`` jobs already wait."""
        with self._lock:
            if self._waiting >= self.max_queue:
                return False
            self._waiting += 1
        self._q.put(job)
        return True

    def cancel(self, job: _Job) -> str:
        """Abandon a job; returns its state before: "queued" (place freed), "running" (stops
        after the current step), "done" or "cancelled"."""
        with self._lock:
            prior = job.state
            if prior == "queued":
                job.state = "cancelled"
                self._waiting -= 1
            job.cancelled.set()
        return prior

    def _work(self) -> None:
        while (job := self._q.get()) is not None:
            with self._lock:
                if job.state != "queued":
                    continue  # abandoned while waiting; its place was freed then
                self._waiting -= 1
                expired = time.monotonic() > job.deadline  # unnoticed, e.g. its client is gone
                if expired or self._stopping.is_set():
                    job.state = "done"
                    job.stream.close()
                    job.emit("expired" if expired else "stopped")
                    continue
                job.state, self._current = "running", job
            try:
                self._run(job)
            finally:
                with self._lock:
                    job.state, self._current = "done", None
                self._snapshot_optimizer()

    def _run(self, job: _Job) -> None:
        m, t0, steps, step_tokens, tokens = self.metrics, time.perf_counter(), -1, 0, 0
        stream = job.stream
        try:
            for new in stream:
                steps += 1  # the first yield is the prefill's token
                step_tokens += len(new) if steps else 0
                tokens += len(new)
                job.emit("tokens", new)
                if job.cancelled.is_set() or time.monotonic() > job.deadline:
                    stream.close()
                    job.emit("stopped")
                    return
            job.emit("done", stream.result)
            stats = stream.result.stats
            with m.lock:
                m.drafted += stats.draft_tokens
                m.accepted += stats.accepted_tokens
                for phase in ("prefill", "draft", "verify", "optimize", "other"):
                    m.phase_s[phase] = m.phase_s.get(phase, 0.0) + getattr(stats, f"time_{phase}")
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers 500; the worker lives on
            log.exception("generation failed")
            job.emit("error", exc)
        finally:
            with m.lock:
                m.generated_tokens += tokens
                m.steps += max(steps, 0)
                m.step_tokens += step_tokens
                m.busy_s += time.perf_counter() - t0

    def _snapshot_optimizer(self) -> None:
        """Read the optimiser's state on the worker thread, between jobs, so /metrics never races it."""
        opt = getattr(self.decoder, "optimizer", None)
        state = None
        if opt is not None:
            try:
                state = opt.status()
            except Exception:  # noqa: BLE001 - metrics must not take the worker down
                log.exception("optimizer.status() failed")
        with self.metrics.lock:
            self.metrics.optimizer = state


class _Timeout(Exception):
    def __init__(self, queued: bool) -> None:
        super().__init__("queued" if queued else "running")
        self.queued = queued


class _Disconnected(Exception):
    pass


async def _next_event(engine: Engine, job: _Job, request: Request) -> tuple[str, Any]:
    """The job's next event; raises _Timeout past the deadline, _Disconnected if the client left."""
    while True:
        if job.events:
            kind, payload = job.events.popleft()
            if kind == "expired":
                raise _Timeout(queued=True)
            if kind == "stopped":  # the worker stopped it: only ever past the deadline
                raise _Timeout(queued=False)
            return kind, payload
        job.ready.clear()
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            prior = engine.cancel(job)
            if prior in ("queued", "running"):
                raise _Timeout(queued=prior == "queued")
            await job.ready.wait()  # it finished just now: its last event is on its way
            continue
        try:
            await asyncio.wait_for(job.ready.wait(), timeout=min(remaining, POLL_S))
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise _Disconnected() from None


# =============================================================================== the app
@dataclass
class _Prepared:
    """A validated request, ready to queue."""

    kind: Literal["completion", "chat"]
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    top_k: int
    seed: int | None


def create_app(decoder: Any, tokenizer: Any, model_name: str, settings: ServerSettings | None = None) -> "FastAPI":
    """The FastAPI app serving ``decoder``; its worker thread runs while the app's lifespan does.

    ``decoder`` is a :class:`SwiftDecoder` (anything with its ``stream`` method and
    ``optimizer`` attribute works, which tests use). ``model_name`` is the id clients
    send as ``model`` and see in ``/v1/models``.
    """
    settings = settings or ServerSettings()
    metrics = Metrics()
    engine = Engine(decoder, settings.max_queue, metrics)
    names = {model_name, *settings.aliases}
    created = int(time.time())
    limit = getattr(getattr(decoder, "adapter", None), "max_positions", None)
    eos = _eos_ids(decoder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()
            if settings.skip_set_store:
                save_optimizer_state(decoder, settings.skip_set_store, settings.task)

    app = FastAPI(title="swiftsd", version=_version(), lifespan=lifespan,
                  description="OpenAI-compatible server for SWIFT self-speculative decoding")
    app.state.engine, app.state.metrics, app.state.settings = engine, metrics, settings

    # -- errors: always OpenAI's JSON shape -------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc.errors())
        return APIError(400, msg, param, "invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        if exc.detail == "There was an error parsing the body":  # FastAPI, when json.loads fails other than by syntax
            msg = "the request body could not be read as JSON (invalid UTF-8, or nested too deeply)"
        return APIError(exc.status_code, msg, None, "invalid_request" if exc.status_code == 400 else None,
                        exc.headers).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, f"internal error ({type(exc).__name__}); see the server log").response()

    app.add_middleware(_CountAndLimit, metrics=metrics, max_body=settings.max_body_bytes)

    async def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>' "
                                "with the key given to swiftsd serve --api-key", None, "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)]

    # -- endpoints ------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        ok = engine.alive
        return JSONResponse({"status": "ok" if ok else "engine stopped", "model": model_name,
                             "queue_depth": engine.waiting, "running": engine.running},
                            status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=auth)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(metrics, engine), media_type="text/plain; version=0.0.4")

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "swiftsd",
                "max_model_len": limit}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in names:
            raise APIError(404, f"model {model_id!r} is not served here; this server serves {model_name!r}",
                           "model", "model_not_found")
        return model_card()

    def check_model(req: _Common) -> None:
        if req.model not in names:
            raise APIError(400, f"unknown model {req.model!r}: this server serves {model_name!r} "
                                "(see GET /v1/models)", "model", "model_not_found")

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        check_model(req)
        _check_unsupported(req)
        prompt = req.prompt
        if isinstance(prompt, list) and len(prompt) > 0 and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise APIError(400, f"got {len(prompt)} prompts: swiftsd serves one prompt per request; "
                                    "send them as separate requests", "prompt", "unsupported")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "the prompt is empty: give some text or a list of token ids", "prompt",
                               "invalid_value")
            ids = _tokenize(tokenizer, prompt)
        else:
            ids = list(prompt)
        return await serve(_prepare(req, "completion", ids, req.max_tokens), request)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(req: ChatRequest, request: Request) -> Any:
        check_model(req)
        _check_unsupported(req)
        ids = _apply_chat_template(tokenizer, req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens
        if max_tokens is None:  # OpenAI: up to the rest of the context
            max_tokens = max(1, limit - len(ids)) if limit else 512
        return await serve(_prepare(req, "chat", ids, max_tokens), request)

    # -- one request through the engine --------------------------------------------
    async def serve(p: _Prepared, request: Request) -> Any:
        arrival = time.monotonic()
        try:
            gen = decoder.stream(p.prompt_ids, max_new_tokens=p.max_tokens, temperature=p.temperature,
                                 top_p=p.top_p, top_k=p.top_k, seed=p.seed)
        except SwiftSDError as exc:
            raise _bad_argument(exc) from None
        job = _Job(gen, asyncio.get_running_loop(), arrival + settings.request_timeout)
        if not engine.submit(job):
            gen.close()
            metrics.add("generations", "rejected_queue_full")
            raise APIError(429, f"the server is busy: {engine.max_queue} requests are already waiting "
                                "(--max-queue); retry later", None, "queue_full", {"Retry-After": "1"})
        with metrics.lock:
            metrics.prompt_tokens += len(p.prompt_ids)
        asm = TextAssembler(tokenizer, p.prompt_ids, p.stop, eos)
        rid = ("cmpl-" if p.kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
        try:
            first = await _next_event(engine, job, request)
        except BaseException as exc:
            engine.cancel(job)
            raise _map_wait_error(exc, metrics) from None
        if p.stream:
            return StreamingResponse(
                _sse(p, job, first, asm, rid, request), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(engine.cancel, job))
        try:
            text = await _collect(job, first, asm, request)
        except BaseException as exc:
            raise _map_wait_error(exc, metrics) from None
        finally:
            engine.cancel(job)  # stops the generation early after a stop string; no-op when done
        metrics.add("generations", asm.finish_reason or "length")
        return _final_body(p, rid, model_name, text, asm)

    async def _collect(job: _Job, event: tuple[str, Any], asm: TextAssembler, request: Request) -> str:
        parts: list[str] = []
        while True:
            kind, payload = event
            if kind == "error":
                raise payload
            if kind == "done":
                parts.append(asm.finish())
                return "".join(parts)
            parts.append(asm.feed(payload))
            if asm.finish_reason is not None:
                return "".join(parts)
            event = await _next_event(engine, job, request)

    async def _sse(p: _Prepared, job: _Job, event: tuple[str, Any], asm: TextAssembler, rid: str,
                   request: Request) -> AsyncIterator[str]:
        ts = int(time.time())
        chunk = _chunk_factory(p, rid, ts, model_name)
        outcome = "cancelled"
        try:
            if p.kind == "chat":
                yield _data(chunk(None, role=True))
            while True:
                kind, payload = event
                if kind == "error":
                    raise payload
                delta = asm.finish() if kind == "done" else asm.feed(payload)
                if delta:
                    yield _data(chunk(delta))
                if kind == "done" or asm.finish_reason is not None:
                    break
                event = await _next_event(engine, job, request)
            outcome = asm.finish_reason or "length"
            yield _data(chunk("", finish=outcome))
            if p.include_usage:
                yield _data(chunk(None, usage=_usage(p, asm)))
            yield "data: [DONE]\n\n"
        except _Timeout as exc:  # headers are sent: report in the stream, as OpenAI does
            outcome = "timeout_queued" if exc.queued else "timeout_running"
            yield _data({"error": {"message": f"the request ran past its {settings.request_timeout:g} s "
                                              "timeout (--request-timeout)", "type": "timeout", "param": None,
                                   "code": "timeout"}})
            yield "data: [DONE]\n\n"
        except _Disconnected:
            outcome = "cancelled"
        except asyncio.CancelledError:  # starlette cancels the stream when the client disconnects
            outcome = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the server; report it in-stream
            log.exception("streaming failed")
            outcome = "error"
            yield _data({"error": {"message": f"internal error ({type(exc).__name__})", "type": "server_error",
                                   "param": None, "code": None}})
        finally:
            engine.cancel(job)
            metrics.add("generations", outcome)

    return app


def _map_wait_error(exc: BaseException, metrics: Metrics) -> BaseException:
    if isinstance(exc, _Timeout):
        metrics.add("generations", "timeout_queued" if exc.queued else "timeout_running")
        if exc.queued:
            return APIError(503, "the request waited in the queue past its timeout (--request-timeout); "
                                 "retry later", None, "queue_timeout")
        return APIError(504, "generation ran past the request timeout (--request-timeout); ask for fewer "
                             "max_tokens", None, "timeout")
    if isinstance(exc, _Disconnected):
        metrics.add("generations", "cancelled")
        return APIError(499, "client closed the request")
    if isinstance(exc, SwiftSDError):
        metrics.add("generations", "error")
        return _bad_argument(exc)
    if isinstance(exc, asyncio.CancelledError):
        metrics.add("generations", "cancelled")
        return exc
    metrics.add("generations", "error")
    return exc


def _prepare(req: _Common, kind: Literal["completion", "chat"], ids: list[int], max_tokens: int) -> _Prepared:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return _Prepared(kind=kind, prompt_ids=ids, max_tokens=max_tokens, stop=stop, stream=req.stream,
                     include_usage=bool(req.stream_options and req.stream_options.include_usage),
                     temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0), seed=req.seed)


def _usage(p: _Prepared, asm: TextAssembler) -> dict[str, int]:
    n = len(p.prompt_ids)
    return {"prompt_tokens": n, "completion_tokens": asm.n_tokens, "total_tokens": n + asm.n_tokens}


def _final_body(p: _Prepared, rid: str, model: str, text: str, asm: TextAssembler) -> dict[str, Any]:
    reason = asm.finish_reason or "length"
    if p.kind == "completion":
        obj, choice = "text_completion", {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    else:
        obj, choice = "chat.completion", {"index": 0, "message": {"role": "assistant", "content": text},
                                          "logprobs": None, "finish_reason": reason}
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice],
            "usage": _usage(p, asm)}


def _chunk_factory(p: _Prepared, rid: str, ts: int, model: str):
    obj = "text_completion" if p.kind == "completion" else "chat.completion.chunk"

    def chunk(text: str | None, finish: str | None = None, role: bool = False,
              usage: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": rid, "object": obj, "created": ts, "model": model}
        if usage is not None:
            body["choices"] = []
        elif p.kind == "completion":
            body["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
        else:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                {"content": text} if text else {})
            body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if p.include_usage:
            body["usage"] = usage
        return body

    return chunk


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _CountAndLimit:
    """Pure-ASGI middleware: counts responses by status and refuses oversized bodies.

    (Starlette's BaseHTTPMiddleware would wrap streaming responses in a task group
    that hides client disconnects from the handler, so this stays plain ASGI.)
    """

    def __init__(self, app: Any, metrics: Metrics, max_body: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            resp = APIError(413, f"request body too large (limit {self.max_body} bytes)", None, "body_too_large")
            self.metrics.add("http", "413")
            await resp.response()(scope, receive, send)
            return

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.add("http", str(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)


# =============================================================================== tokenizer glue
def _tokenize(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise APIError(400, "this server has no tokenizer: send the prompt as a list of token ids", "prompt",
                       "invalid_value")
    return list(tokenizer(text)["input_ids"])


def _apply_chat_template(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise APIError(400, "this model's tokenizer has no chat template, so /v1/chat/completions cannot build "
                            "a prompt; use /v1/completions with plain text instead", "messages", "no_chat_template")
    msgs = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            content = "".join(part.text for part in m.content)
        else:
            content = m.content or ""
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.name:
            msg["name"] = m.name
        msgs.append(msg)
    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - jinja templates raise anything (e.g. "roles must alternate")
        raise APIError(400, f"the model's chat template rejected these messages: {exc}", "messages",
                       "invalid_value") from None
    # the template already holds the special tokens (e.g. BOS) the model expects
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_ids(decoder: Any) -> set[int]:
    gc = getattr(getattr(decoder, "model", None), "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _version() -> str:
    from . import __version__

    return __version__


# =============================================================================== skip-set store
def save_optimizer_state(decoder: Any, store: str, task: str) -> None:
    """On shutdown: write the optimiser's best set to the store, keyed by model and task."""
    opt = getattr(decoder, "optimizer", None)
    if opt is None:
        print(f"swiftsd: no on-the-fly optimiser ran (fixed skip set); nothing saved to {store}", file=sys.stderr)
        return
    from .optimize.store import save_optimizer_result

    try:
        saved = save_optimizer_result(store, decoder.model, task, opt)
    except Exception:  # noqa: BLE001 - shutdown must finish; say what went wrong
        log.exception("could not save the optimiser's state to %s", store)
        return
    if saved:
        print(f"swiftsd: saved the optimiser's skip set to {store} (task {task!r})", file=sys.stderr, flush=True)
    else:
        print(f"swiftsd: the optimiser has not scored a skip set yet; nothing saved to {store}", file=sys.stderr,
              flush=True)


# =============================================================================== CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli_common import add_model_arguments, add_skip_arguments

    add_model_arguments(p)
    add_skip_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-queue", type=int, default=ServerSettings.max_queue,
                   help="requests that may wait behind the running one; more get 429 (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=ServerSettings.request_timeout,
                   help="seconds from arrival before a request gets 503 (still queued) or 504 (running) "
                        "(default %(default)s)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* and /metrics "
                                                   "(default: no key needed)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send and /v1/models lists (default: the --model value)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .cli_common import load_model, parse_skip_set
    from .decoder import SwiftDecoder

    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in 0..65535, got {args.port}")
    name = args.served_model_name or args.model
    skip = parse_skip_set(args.skip_set)
    if skip is not None and args.skip_set_store:
        raise InvalidArgumentError("give either --skip-set (fixed) or --skip-set-store (tuned and saved), not both")
    model, tokenizer = load_model(args)
    try:
        from .loading import model_identity

        aliases = tuple({model_identity(model), args.model} - {name})
    except ImportError:
        aliases = ()
    settings = ServerSettings(max_queue=args.max_queue, request_timeout=args.request_timeout, api_key=args.api_key,
                              skip_set_store=args.skip_set_store, task=args.task, aliases=aliases)
    config: dict[str, Any] = {}
    if args.skip_set_store:
        from .optimize.store import resolve_start_set

        # a missing file is fine: the server creates it when it shuts down
        skip = resolve_start_set(args.skip_set_store, model, args.task, missing_ok=True)
        if skip is not None:
            print(f"swiftsd: starting from the stored skip set for task {args.task!r}: {skip.to_dict()}",
                  file=sys.stderr)
    elif skip is not None:
        config["optimizer"] = False  # a hand-given set is used as is, not tuned
    decoder = SwiftDecoder(model, tokenizer, skip_set=skip, **config)
    if not _is_loopback(args.host) and settings.api_key is None:
        print(f"swiftsd: warning: serving on {args.host} without --api-key: anyone who can reach this address "
              "can use the model", file=sys.stderr)
    app = create_app(decoder, tokenizer, name, settings)
    print(f"swiftsd: serving {name!r} on http://{args.host}:{args.port}/v1 (health: /health, metrics: /metrics)",
          file=sys.stderr, flush=True)
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown, which runs the app's
    # lifespan exit: the engine stops and the optimiser's state is saved.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                access_log=args.log_level == "debug")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
