"""The FastAPI app: routes as plain functions of a :class:`ServerContext`, and one request's trip
through the engine (:func:`serve`).

Every handler takes its context as a FastAPI dependency, so a test can call one
directly with a context of its own; ``create_app`` only wires routes, error
handlers, the guard (guard.py: body limit and read timeout, response counts, the
last word on errors) and the engine's lifespan together. What costs CPU in a request
before it queues (JSON parsing and validation, the chat template, tokenisation, the
prompt checks) runs on a few worker threads (``ServerContext.off_loop``), never on the
event loop, so ``/health`` and the streams of other clients stay prompt.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, AsyncIterator, Callable, TypeVar

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from ..hf.eos import resolve_eos
from ..errors import SwiftSDError
from . import access_log
from . import protocol as P
from .body import EXTRA_VALUES, parse_body
from .engine import Disconnected, Engine, Job, ShuttingDown, Timeout, next_event
from .errors import APIError, from_swiftsd, install_handlers, one_line
from .guard import Guard
from .metrics import Exposition, Metrics
from .settings import ServerSettings
from .text import TextAssembler

log = logging.getLogger("swiftsd.server")

PREP_THREADS = 4  # requests prepared at once off the event loop (tokenising a huge prompt takes seconds)
DEFAULT_CONTEXT = 131_072  # tokens, for the JSON value bound when the model does not say its context
T = TypeVar("T")


@dataclass
class ServerContext:
    """What the handlers share: the decoder behind its engine, the model's facts, the limits."""

    decoder: Any  # a SwiftDecoder, or anything with its stream() and optimizer (tests use a scripted one)
    tokenizer: Any
    model_name: str
    settings: ServerSettings
    engine: Engine
    metrics: Metrics
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        adapter = getattr(self.decoder, "adapter", None)
        self.limit: int | None = getattr(adapter, "max_positions", None)
        self.vocab: int | None = getattr(adapter, "vocab_size", None)
        self.eos = resolve_eos(getattr(self.decoder, "model", None))
        self.names = {self.model_name, *self.settings.aliases}
        self.exposition = Exposition(self.metrics, self.engine)
        self.max_values = (self.limit or DEFAULT_CONTEXT) + EXTRA_VALUES  # JSON values in one request body
        self._limiter: anyio.CapacityLimiter | None = None

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of ``PREP_THREADS`` worker threads, so the event loop keeps serving."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(PREP_THREADS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    def check_model(self, model: str) -> None:
        if model not in self.names:
            raise APIError(400, f"unknown model {model!r}: this server serves {self.model_name!r} "
                                "(see GET /v1/models)", "model", "model_not_found")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "swiftsd",
                "max_model_len": self.limit}


def get_context(request: Request) -> ServerContext:
    return request.app.state.ctx


async def authorize(request: Request, ctx: ServerContext = Depends(get_context)) -> None:
    key = ctx.settings.api_key
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer <key>' "
                            "with the key given to swiftsd serve --api-key", None, "invalid_api_key",
                       {"WWW-Authenticate": "Bearer"})


def json_body(schema: type[T]) -> Callable[..., Any]:
    """A dependency: the request body as ``schema``, parsed and validated off the event loop (body.py)."""

    async def parsed(request: Request, ctx: ServerContext = Depends(get_context)) -> T:
        raw = await request.body()
        return await ctx.off_loop(parse_body, raw, request.headers.get("content-type"), schema, ctx.max_values,
                                  P.MAX_STOP)

    return parsed


router = APIRouter()
_auth = [Depends(authorize)]
_Ctx = Annotated[ServerContext, Depends(get_context)]


@router.get("/health")
async def health(ctx: ServerContext = Depends(get_context)) -> JSONResponse:
    ok = ctx.engine.alive
    return JSONResponse({"status": "ok" if ok else "engine stopped", "model": ctx.model_name,
                         "queue_depth": ctx.engine.waiting, "running": ctx.engine.running},
                        status_code=200 if ok else 503)


@router.get("/metrics", dependencies=_auth)
async def metrics(ctx: ServerContext = Depends(get_context)) -> Response:
    return Response(ctx.exposition.render(), media_type=ctx.exposition.content_type)


@router.get("/v1/models", dependencies=_auth)
async def list_models(ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    return {"object": "list", "data": [ctx.model_card()]}


@router.get("/v1/models/{model_id:path}", dependencies=_auth)
async def get_model(model_id: str, ctx: ServerContext = Depends(get_context)) -> dict[str, Any]:
    if model_id not in ctx.names:
        raise APIError(404, f"model {model_id!r} is not served here; this server serves {ctx.model_name!r}",
                       "model", "model_not_found")
    return ctx.model_card()


@router.post("/v1/completions", dependencies=_auth)
async def completions(req: Annotated[P.CompletionRequest, Depends(json_body(P.CompletionRequest))],
                      request: Request, ctx: _Ctx) -> Any:
    return await serve(ctx, await ctx.off_loop(prepare_completion, ctx, req), request.is_disconnected)


@router.post("/v1/chat/completions", dependencies=_auth)
async def chat(req: Annotated[P.ChatRequest, Depends(json_body(P.ChatRequest))], request: Request,
               ctx: _Ctx) -> Any:
    return await serve(ctx, await ctx.off_loop(prepare_chat, ctx, req), request.is_disconnected)


def prepare_completion(ctx: ServerContext, req: P.CompletionRequest) -> P.Prepared:
    """Checks, tokenisation and the prompt's checks of a completion (on a worker thread)."""
    ctx.check_model(req.model)
    P.check_unsupported(req)
    prompt = P.completion_prompt(req)
    ids = P.tokenize(ctx.tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    P.check_prompt(ids, req.max_tokens, ctx.vocab, ctx.limit)
    return P.prepare(req, "completion", ids, req.max_tokens)


def prepare_chat(ctx: ServerContext, req: P.ChatRequest) -> P.Prepared:
    """The chat template, tokenisation and the prompt's checks of a chat request (on a worker thread)."""
    ctx.check_model(req.model)
    P.check_unsupported(req)
    ids = P.chat_prompt_ids(ctx.tokenizer, req.messages)
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None:  # OpenAI: up to the rest of the context
        max_tokens = max(1, ctx.limit - len(ids)) if ctx.limit else 512
    P.check_prompt(ids, max_tokens, ctx.vocab, ctx.limit)
    return P.prepare(req, "chat", ids, max_tokens)


# ---------------------------------------------------------------------------- one request
async def serve(ctx: ServerContext, p: P.Prepared, is_disconnected: Callable[[], Any]) -> Any:
    """Queue one checked request and answer it: a JSON body, or an SSE stream whose first event has arrived."""
    engine, metrics = ctx.engine, ctx.metrics
    try:
        gen = ctx.decoder.stream(p.prompt_ids, max_new_tokens=p.max_tokens, temperature=p.temperature,
                                 top_p=p.top_p, top_k=p.top_k, seed=p.seed)
    except SwiftSDError as exc:
        raise from_swiftsd(exc) from None
    job = Job(gen, asyncio.get_running_loop(), time.monotonic() + ctx.settings.request_timeout)
    if not engine.submit(job):
        gen.close()
        metrics.add("generations", "rejected_queue_full")
        raise APIError(429, f"the server is busy: {engine.max_queue} requests are already waiting "
                            "(--max-queue); retry later", None, "queue_full", {"Retry-After": "1"})
    with metrics.lock:
        metrics.prompt_tokens += len(p.prompt_ids)
    access_log.note(prompt=len(p.prompt_ids))
    asm = TextAssembler(ctx.tokenizer, p.prompt_ids, p.stop, ctx.eos)
    rid = ("cmpl-" if p.kind == "completion" else "chatcmpl-") + uuid.uuid4().hex
    try:
        first = await next_event(engine, job, is_disconnected)
    except BaseException as exc:
        engine.cancel(job)
        raise wait_error(exc, ctx) from None
    access_log.note(queued=job.queue_wait)
    if p.stream:
        return StreamingResponse(stream_events(ctx, p, job, first, asm, rid, is_disconnected),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(engine.cancel, job))
    try:
        text = await collect(ctx, job, first, asm, is_disconnected)
    except BaseException as exc:
        raise wait_error(exc, ctx) from None
    finally:
        engine.cancel(job)  # stops the generation early after a stop string; no-op when done
        access_log.note(completion=asm.n_tokens)
    metrics.add("generations", asm.finish_reason or "length")
    return P.final_body(p, rid, ctx.model_name, text, asm.finish_reason or "length", asm.n_tokens)


async def collect(ctx: ServerContext, job: Job, event: tuple[str, Any], asm: TextAssembler,
                  is_disconnected: Callable[[], Any]) -> str:
    """The whole completion text of a non-streamed request."""
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
        event = await next_event(ctx.engine, job, is_disconnected)


async def stream_events(ctx: ServerContext, p: P.Prepared, job: Job, event: tuple[str, Any], asm: TextAssembler,
                        rid: str, is_disconnected: Callable[[], Any]) -> AsyncIterator[str]:
    """The SSE body; errors after the headers are sent are reported in the stream, as OpenAI does."""
    chunk = P.chunk_factory(p, rid, ctx.model_name)
    outcome = "cancelled"
    try:
        if p.kind == "chat":
            yield P.sse(chunk(None, role=True))
        while True:
            kind, payload = event
            if kind == "error":
                raise payload
            delta = asm.finish() if kind == "done" else asm.feed(payload)
            if delta:
                yield P.sse(chunk(delta))
            if kind == "done" or asm.finish_reason is not None:
                break
            event = await next_event(ctx.engine, job, is_disconnected)
        outcome = asm.finish_reason or "length"
        yield P.sse(chunk("", finish=outcome))
        if p.include_usage:
            yield P.sse(chunk(None, usage=P.usage(p, asm.n_tokens)))
        yield P.SSE_DONE
    except (Timeout, ShuttingDown) as exc:
        outcome = _outcome(exc)
        yield P.sse(wait_error(exc, None).body())
        yield P.SSE_DONE
    except (Disconnected, asyncio.CancelledError) as exc:  # starlette cancels the stream when the client leaves
        outcome = "cancelled"
        if isinstance(exc, asyncio.CancelledError):
            raise
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the server; report it in-stream
        log.error("streaming failed: %s (the traceback is logged at --log-level debug)", one_line(exc))
        log.debug("traceback of the streaming failure", exc_info=exc)
        outcome = "error"
        yield P.sse(APIError(500, f"internal error ({type(exc).__name__})").body())
    finally:
        ctx.engine.cancel(job)
        ctx.metrics.add("generations", outcome)
        access_log.note(completion=asm.n_tokens)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, Timeout):
        return "timeout_queued" if exc.queued else "timeout_running"
    if isinstance(exc, (Disconnected, asyncio.CancelledError, ShuttingDown)):
        return "cancelled"
    return "error"


def wait_error(exc: BaseException, ctx: ServerContext | None) -> BaseException:
    """What a request that failed while waiting answers (and, given ``ctx``, counts)."""
    if ctx is not None:
        ctx.metrics.add("generations", _outcome(exc))
    if isinstance(exc, Timeout) and exc.queued:
        return APIError(503, "the request waited in the queue past its timeout (--request-timeout); retry later",
                        None, "queue_timeout")
    if isinstance(exc, Timeout):
        return APIError(504, "generation ran past the request timeout (--request-timeout); ask for fewer "
                             "max_tokens", None, "timeout")
    if isinstance(exc, ShuttingDown):
        return APIError(503, "the server is shutting down; retry on another instance or after it restarts",
                        None, "shutting_down")
    if isinstance(exc, Disconnected):
        return APIError(499, "client closed the request")
    if isinstance(exc, SwiftSDError):
        return from_swiftsd(exc)
    if isinstance(exc, Exception):  # the generation failed (the worker logged it): counted above, so a 500 here
        return APIError(500, f"internal error ({type(exc).__name__}); see the server log")
    return exc


# ---------------------------------------------------------------------------- the app
def create_app(decoder: Any, tokenizer: Any, model_name: str, settings: ServerSettings | None = None,
               metrics: Metrics | None = None, tick: Callable[[bool], None] | None = None,
               on_shutdown: Callable[[bool], None] | None = None) -> FastAPI:
    """The app serving ``decoder``; its worker thread runs while the app's lifespan does.

    ``tick(worked)`` runs on the worker between steps and jobs and when idle (the periodic state save);
    ``on_shutdown(stopped)`` after the worker is asked to stop (``stopped``: it did,
    so the decoder may be read safely).
    """
    from .. import __version__

    settings = settings or ServerSettings()
    metrics = metrics or Metrics()
    engine = Engine(decoder, settings.max_queue, metrics, tick=tick)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            stopped = engine.stop()
            if on_shutdown is not None:
                on_shutdown(stopped)

    app = FastAPI(title="swiftsd", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server for SWIFT self-speculative decoding")
    app.state.ctx = ServerContext(decoder, tokenizer, model_name, settings, engine, metrics)
    install_handlers(app, P.MAX_STOP)
    app.add_middleware(Guard, metrics=metrics, max_body=settings.max_body_bytes, read_timeout=settings.read_timeout)
    app.add_middleware(access_log.AccessLog)  # outermost: every request gets its line, refused ones too
    app.include_router(router)
    return app
