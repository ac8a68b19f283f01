"""The engine: one worker thread runs the decoder for one job at a time, in arrival order.

    handler (event loop) --Engine.submit (False: 429)--> FIFO queue --> worker thread
        --per-step token ids via loop.call_soon_threadsafe--> Job.events --> handler

The worker checks each job's deadline and cancellation after every step the stream
yields, including the empty ones between prefill chunks, so a long prompt is given up
within one chunk of its deadline or its client's departure.

The worker is also the only thread that touches the decoder, so it is where the
decoder's state is read: the optimiser's status for /metrics after each job, and
the ``tick`` hook (the periodic ``--state`` save) between steps and when idle.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import one_line
from .metrics import PHASES, Metrics

log = logging.getLogger("swiftsd.server")

POLL_S = 0.25  # how often a waiting handler checks its deadline and its client
IDLE_TICK_S = 1.0  # how often an idle worker runs the tick hook


@dataclass(eq=False)
class Job:
    """One admitted request: its generation and the channel back to its handler.

    Events go worker -> handler through a deque that only the event loop touches
    (``loop.call_soon_threadsafe``) plus an asyncio.Event; waiting on the event can
    be cancelled or timed out without ever losing an event.
    """

    stream: Any  # GenerationStream
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() past which the request is abandoned
    events: deque = field(default_factory=deque)  # (kind, payload): tokens|done|error|stopped|expired|shutdown
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done, or queued -> cancelled
    queued_at: float = field(default_factory=time.monotonic)
    queue_wait: float | None = None  # seconds from submit to the start of decoding (set when admitted)

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
    """The worker thread and its queue; ``tick(worked)`` (optional) runs on the worker after each step and
    job (``worked`` True) and about once a second when idle (False)."""

    def __init__(self, decoder: Any, max_queue: int, metrics: Metrics,
                 tick: Callable[[bool], None] | None = None) -> None:
        self.decoder = decoder
        self.max_queue = max_queue
        self.metrics = metrics
        self.tick = tick
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._current: Job | None = None
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

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel what is queued and running and let the worker finish; True once it has."""
        self._stopping.set()
        with self._lock:
            if self._current is not None:
                self._current.cancelled.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive

    def submit(self, job: Job) -> bool:
        """Queue a job; False (answer 429) when ``max_queue`` jobs already wait."""
        with self._lock:
            if self._waiting >= self.max_queue:
                return False
            self._waiting += 1
        self._q.put(job)
        return True

    def cancel(self, job: Job) -> str:
        """Abandon a job; returns its state before: "queued" (place freed), "running" (stops
        after the current step), "done" or "cancelled"."""
        with self._lock:
            prior = job.state
            if prior == "queued":
                job.state = "cancelled"
                self._waiting -= 1
            job.cancelled.set()
        return prior

    # -- the worker thread ----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                job = self._q.get(timeout=IDLE_TICK_S)
            except queue.Empty:
                self._tick(False)
                continue
            if job is None:
                return
            if self._admit(job):
                try:
                    self._run(job)
                finally:
                    with self._lock:
                        job.state, self._current = "done", None
                    self._snapshot_optimizer()
                self._tick(True)

    def _admit(self, job: Job) -> bool:
        """Take a job off the queue: run it, or drop it if abandoned, expired or shutting down."""
        with self._lock:
            if job.state != "queued":
                return False  # abandoned while waiting; its place was freed then
            self._waiting -= 1
            expired = time.monotonic() > job.deadline  # unnoticed, e.g. its client is gone
            if expired or self._stopping.is_set():
                job.state = "done"
                job.stream.close()
                job.emit("expired" if expired else "shutdown")
                return False
            job.state, self._current = "running", job
        job.queue_wait = time.monotonic() - job.queued_at
        with self.metrics.lock:
            self.metrics.queue_wait.observe(job.queue_wait)
        return True

    def _run(self, job: Job) -> None:
        m, t0, steps, step_tokens, tokens = self.metrics, time.perf_counter(), -1, 0, 0
        stream = job.stream
        try:
            for new in stream:
                if new:  # [] is a pause between two prefill chunks: only the checks below
                    steps += 1  # the first yield with tokens is the prefill's token
                    step_tokens += len(new) if steps else 0
                    tokens += len(new)
                    job.emit("tokens", new)
                if job.cancelled.is_set() or time.monotonic() > job.deadline:
                    stream.close()
                    job.emit("shutdown" if self._stopping.is_set() else "stopped")
                    return
                if new:
                    self._tick(True)
            job.emit("done", stream.result)
            stats = stream.result.stats
            with m.lock:
                m.drafted += stats.draft_tokens
                m.accepted += stats.accepted_tokens
                for phase in PHASES:
                    m.phase_s[phase] = m.phase_s.get(phase, 0.0) + getattr(stats, f"time_{phase}")
            m.add_drafters(getattr(stats, "per_drafter", None) or {})
            m.add_precisions(getattr(stats, "per_precision", None) or {})
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers 500; the worker lives on
            log.error("generation failed: %s (the traceback is logged at --log-level debug)", one_line(exc))
            log.debug("traceback of the failed generation", exc_info=exc)
            job.emit("error", exc)
        finally:
            with m.lock:
                m.generated_tokens += tokens
                m.steps += max(steps, 0)
                m.step_tokens += step_tokens
                m.busy_s += time.perf_counter() - t0

    def _tick(self, worked: bool) -> None:
        if self.tick is None:
            return
        try:
            self.tick(worked)
        except Exception:  # noqa: BLE001 - housekeeping must not take the worker down
            log.exception("engine tick failed")

    def _snapshot_optimizer(self) -> None:
        """Read the optimiser's status on the worker thread, between jobs, so /metrics never races it."""
        opt = getattr(self.decoder, "optimizer", None)
        status = None
        if opt is not None:
            try:
                status = opt.status()
            except Exception:  # noqa: BLE001 - metrics must not take the worker down
                log.exception("optimizer.status() failed")
        with self.metrics.lock:
            self.metrics.optimizer = status


# ---------------------------------------------------------------------------- the handler's side
class Timeout(Exception):
    """The request's deadline passed, while it waited (``queued``) or while it ran."""

    def __init__(self, queued: bool) -> None:
        super().__init__("queued" if queued else "running")
        self.queued = queued


class Disconnected(Exception):
    """The client went away while its request waited or ran."""


class ShuttingDown(Exception):
    """The server stopped the request: it is shutting down (SIGINT/SIGTERM)."""


async def next_event(engine: Engine, job: Job, is_disconnected: Callable[[], Any]) -> tuple[str, Any]:
    """The job's next event; raises Timeout past the deadline, Disconnected if the client left."""
    while True:
        if job.events:
            kind, payload = job.events.popleft()
            if kind == "expired":
                raise Timeout(queued=True)
            if kind == "stopped":  # the worker stopped it: only ever past the deadline
                raise Timeout(queued=False)
            if kind == "shutdown":
                raise ShuttingDown()
            return kind, payload
        job.ready.clear()
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            prior = engine.cancel(job)
            if prior in ("queued", "running"):
                raise Timeout(queued=prior == "queued")
            await job.ready.wait()  # it finished just now: its last event is on its way
            continue
        try:
            await asyncio.wait_for(job.ready.wait(), timeout=min(remaining, POLL_S))
        except asyncio.TimeoutError:
            if await is_disconnected():
                raise Disconnected() from None
