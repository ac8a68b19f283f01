"""/metrics on ``prometheus_client``: counters the worker and handlers add to, and gauges read live.

The numbers live in one :class:`Metrics` object under a lock (the worker thread and
the event loop both write); a custom collector turns them into metric families
when ``/metrics`` is scraped, so derived gauges (tokens per second, acceptance)
are computed from the same totals the counters show. Each app has its own
registry: two servers in one process (the tests) never share a metric.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class QueueView(Protocol):
    """What /metrics reads live from the engine (``engine.Engine``), which itself writes :class:`Metrics`."""

    @property
    def waiting(self) -> int: ...

    @property
    def running(self) -> bool: ...

    max_queue: int


PHASES = ("prefill", "draft", "verify", "optimize", "other")
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


@dataclass
class Histogram:
    """A Prometheus histogram's state: per-bucket counts (upper bounds ``buckets``), their sum and count."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one per bucket, then +Inf; not cumulative
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)
        self.counts[next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))] += 1
        self.total += value
        self.n += 1

    def family(self, name: str, help_text: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts or [0] * (len(self.buckets) + 1)):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, help_text, buckets=cumulative, sum_value=self.total)
OUTCOMES_HELP = ("generation requests by outcome (stop, length, cancelled, timeout_queued, timeout_running, "
                 "rejected_queue_full, error)")


@dataclass
class Metrics:
    """Totals for /metrics, guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    http: dict[str, int] = field(default_factory=dict)  # status code -> responses
    generations: dict[str, int] = field(default_factory=dict)  # outcome -> requests
    state_saves: dict[str, int] = field(default_factory=dict)  # ok | error -> saves of --state
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0  # decoding steps after the prefill
    step_tokens: int = 0  # tokens those steps committed (bonus included)
    drafted: int = 0  # from completed generations' stats
    accepted: int = 0
    per_drafter: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> proposed / accepted nodes
    per_precision: dict[str, dict[str, int]] = field(default_factory=dict)  # layer-skip draft weights -> counts
    busy_s: float = 0.0  # wall time the engine spent generating
    phase_s: dict[str, float] = field(default_factory=dict)  # draft / verify / optimize / prefill / other
    optimizer: dict[str, Any] | None = None  # last snapshot of decoder.optimizer.status()
    queue_wait: Histogram = field(default_factory=lambda: Histogram(QUEUE_WAIT_BUCKETS))  # seconds before decoding

    def add(self, table: str, key: str) -> None:
        with self.lock:
            d = getattr(self, table)
            d[key] = d.get(key, 0) + 1

    def add_drafters(self, per_drafter: dict[str, dict[str, int]]) -> None:
        """Add one generation's ``stats.per_drafter`` (tree nodes each drafter proposed / got accepted)."""
        self._add_counts(self.per_drafter, per_drafter, ("proposed", "accepted"))

    def add_precisions(self, per_precision: dict[str, dict[str, int]]) -> None:
        """Add one generation's ``stats.per_precision`` (the layer-skip draft's steps and accepted nodes by weights)."""
        self._add_counts(self.per_precision, per_precision, ("steps", "accepted"))

    def _add_counts(self, table: dict[str, dict[str, int]], counts: dict[str, dict[str, int]],
                    keys: tuple[str, ...]) -> None:
        with self.lock:
            for name, got in counts.items():
                total = table.setdefault(name, dict.fromkeys(keys, 0))
                for key in keys:
                    total[key] += int(got.get(key, 0))


def _counter(name: str, help_text: str, value: float | dict[str, float], label: str = "") -> CounterMetricFamily:
    if not isinstance(value, dict):
        return CounterMetricFamily(name, help_text, value=value)
    fam = CounterMetricFamily(name, help_text, labels=[label])
    for key, v in sorted(value.items()):
        fam.add_metric([key], v)
    return fam


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


class _ServerCollector(Collector):
    def __init__(self, metrics: Metrics, engine: QueueView) -> None:
        self.m, self.engine = metrics, engine

    def collect(self) -> Iterator[Metric]:
        m, e = self.m, self.engine
        with m.lock:
            yield _counter("swiftsd_http_responses_total", "HTTP responses by status code", dict(m.http), "code")
            yield _counter("swiftsd_requests_total", OUTCOMES_HELP, dict(m.generations), "outcome")
            yield _counter("swiftsd_prompt_tokens_total", "prompt tokens of admitted requests", m.prompt_tokens)
            yield _counter("swiftsd_generated_tokens_total", "tokens generated by the engine", m.generated_tokens)
            yield _counter("swiftsd_engine_busy_seconds_total", "wall time the engine spent generating", m.busy_s)
            yield _gauge("swiftsd_tokens_per_second", "generated tokens per second of engine busy time",
                         m.generated_tokens / m.busy_s if m.busy_s > 0 else 0.0)
            yield _counter("swiftsd_decode_steps_total", "decoding steps (one full-model forward each)", m.steps)
            yield _gauge("swiftsd_mean_accepted_tokens",
                         "tokens committed per decoding step, bonus token included (Spec-Bench tau)",
                         m.step_tokens / m.steps if m.steps else 0.0)
            yield _counter("swiftsd_draft_tokens_total", "draft positions: the depth of each step's deepest draft, "
                           "summed (completed requests)", m.drafted)
            yield _counter("swiftsd_accepted_draft_tokens_total", "draft tokens accepted (completed requests)",
                           m.accepted)
            yield _gauge("swiftsd_acceptance_rate", "acceptance: accepted draft tokens / draft positions "
                         "(completed requests)",
                         m.accepted / m.drafted if m.drafted else 0.0)
            per = m.per_drafter
            yield _counter("swiftsd_drafter_drafted_tokens_total", "draft tokens (tree nodes) each drafter proposed "
                           "and verification saw (completed requests; a node two drafters proposed counts for both)",
                           {name: d["proposed"] for name, d in per.items()}, "drafter")
            yield _counter("swiftsd_drafter_accepted_tokens_total", "draft tokens each drafter proposed that were "
                           "accepted (completed requests)", {name: d["accepted"] for name, d in per.items()}, "drafter")
            prec = m.per_precision
            yield _counter("swiftsd_model_draft_steps_total", "steps the layer-skip draft ran, by the weights it read "
                           "(full, int8, int4)", {name: d["steps"] for name, d in prec.items()}, "precision")
            yield _counter("swiftsd_model_draft_accepted_tokens_total", "layer-skip draft tokens accepted, by the "
                           "weights the draft read", {name: d["accepted"] for name, d in prec.items()}, "precision")
            yield _counter("swiftsd_phase_seconds_total", "engine time per decoding phase", dict(m.phase_s), "phase")
            yield m.queue_wait.family("swiftsd_queue_wait_seconds", "seconds a request waited in the queue before "
                                      "the engine started decoding it (admitted requests)")
            yield _counter("swiftsd_state_saves_total", "saves of the learned state (--state) by outcome",
                           dict(m.state_saves), "outcome")
            opt = m.optimizer
        yield _gauge("swiftsd_queue_depth", "requests waiting for the engine", e.waiting)
        yield _gauge("swiftsd_running_requests", "requests being decoded (0 or 1)", int(e.running))
        yield _gauge("swiftsd_max_queue", "queue capacity (--max-queue)", e.max_queue)
        yield from _optimizer_families(opt)


def _optimizer_families(opt: dict[str, Any] | None) -> Iterator[Metric]:
    yield _gauge("swiftsd_optimizer_enabled", "1 when the decoder has an on-the-fly optimizer", int(opt is not None))
    if not opt:
        return
    if isinstance(opt.get("phase"), str):
        fam = GaugeMetricFamily("swiftsd_optimizer_phase", "the optimizer's current phase (1 = this one)",
                                labels=["phase"])
        fam.add_metric([opt["phase"]], 1)
        yield fam
    for key, value in _flat_numbers(opt):
        yield _gauge(f"swiftsd_optimizer_{_metric_name(key)}", f"optimizer state field {key!r}", value)


def _metric_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_").lower() or "value"


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Numeric scalars of a status dict (one level of nesting), for export as gauges."""
    out: list[tuple[str, float]] = []
    for k, v in d.items():
        if isinstance(v, (bool, int, float)) and not (isinstance(v, float) and math.isnan(v)):
            out.append((prefix + str(k), float(v)))
        elif isinstance(v, dict) and not prefix:
            out += _flat_numbers(v, f"{k}_")
    return out


class Exposition:
    """One app's registry: ``render()`` is the /metrics body, ``content_type`` its media type."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, metrics: Metrics, engine: QueueView) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ServerCollector(metrics, engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)
