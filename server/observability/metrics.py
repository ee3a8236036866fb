"""The process's metrics: one ``Metrics`` per process, made by the composition root.

Each process (an API, a worker) counts what it does in its own ``CollectorRegistry``;
nothing here is module-level state, so two apps in one interpreter (the tests) never
share a counter. The parts that count get the object passed in (the bus, the lifecycle,
the executor, the transports) and, on the hot paths, hold labelled children fetched
once, never a ``.labels()`` per event.

Queue-level figures (depth, oldest age, running, workers, backend_up) are not counted
here: they are read from the dispatcher's ``overview()`` when ``/metrics`` is scraped
(``exposition.py``). How the processes of a Redis deployment add up to one view is
explained there too.

Label values that users choose stay bounded: tenants (``max_tenants``, then ``other``),
event namespaces (user graphs invent them; the protocol's own never count against the
bound) and graph node paths.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..events import CRITIC_EVAL, ERROR, RESULT, STATUS, STEP, THOUGHT, TOOL_USE

OTHER = "other"
PROTOCOL_NS = (THOUGHT, TOOL_USE, CRITIC_EVAL, STATUS, RESULT, ERROR, STEP, "CUSTOM")
TRANSPORTS = ("sse", "socketio", "langgraph")

# Runs take seconds to many minutes; steps and queue waits less; delivery lag is meant
# to be milliseconds, and anything past a few seconds is an incident.
RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
QUEUED_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Read from the dispatcher at scrape time, not counted: (type, help, label names).
SCRAPED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "thoughtstream_runs_active": ("gauge", "Runs executing now", ("tenant", "agent")),
    "thoughtstream_queue_depth": ("gauge", "Runs waiting to start", ("tenant", "agent")),
    "thoughtstream_queue_oldest_age_seconds": (
        "gauge", "How long the tenant's oldest waiting run has waited", ("tenant",)),
    "thoughtstream_workers": ("gauge", "Live workers able to run the agent", ("agent",)),
    "thoughtstream_backend_up": ("gauge", "1 when the backend (Redis, or the embedded one) answers", ()),
}


def process_name(role: str) -> str:
    """``api-host-1234``: the ``process`` label of this process's series in a shared view."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


class BoundedLabel:
    """The first ``limit`` distinct values keep their name; later ones become ``other``.

    First come, first kept, per process: a value never changes series once admitted,
    which a ranking (top N by traffic) could not promise.
    """

    __slots__ = ("limit", "_kept", "_counted")

    def __init__(self, limit: int, *, always: Iterable[str] = ()) -> None:
        self.limit = limit
        self._kept = set(always)  # never counted against the limit
        self._counted = 0

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if self._counted < self.limit:
            self._kept.add(value)
            self._counted += 1
            return value
        return OTHER


class TransportMetrics:
    """One transport's children, fetched once: the delivery path only calls inc/observe."""

    __slots__ = ("delivered", "lag", "subscribers", "drops")

    def __init__(self, metrics: Metrics, transport: str) -> None:
        self.delivered = metrics.events_delivered.labels(transport)
        self.lag = metrics.delivery_lag.labels(transport)
        self.subscribers = metrics.subscribers.labels(transport)
        self.drops = metrics.slow_consumer_drops.labels(transport)

    def batch(self, events: Sequence[Any], count: int, since: float) -> None:
        """``count`` events of ``events`` were written. One lag sample per batch, of its
        oldest live event (the worst); events older than ``since`` (when the subscriber
        came) are history it asked for, and their age is no delivery lag."""
        if not count:
            return
        self.delivered.inc(count)
        ts = events[0].ts
        if ts < since:
            ts = events[-1].ts
            if ts < since:
                return
        self.lag.observe(max(0.0, time.time() - ts))


class StepClock:
    """Times a run's graph nodes from LangGraph's ``tasks`` stream (a start, then its result)."""

    __slots__ = ("_metrics", "_agent", "_path", "_started")

    def __init__(self, metrics: Metrics, agent: str, path: Callable[[tuple[str, ...], str | None], str]) -> None:
        self._metrics = metrics
        self._agent = agent
        self._path = path
        self._started: dict[str, float] = {}

    def task(self, namespace: tuple[str, ...], chunk: Any) -> None:
        if not isinstance(chunk, dict) or "id" not in chunk:
            return
        if "input" in chunk:
            self._started[chunk["id"]] = time.monotonic()
            return
        t0 = self._started.pop(chunk["id"], None)
        if t0 is not None:  # a resumed run reports tasks it had finished before: no start
            self._metrics.step(self._agent, self._path(namespace, chunk.get("name")), time.monotonic() - t0)


class Metrics:
    """Every counter and histogram of one process, in its own registry."""

    def __init__(self, *, process: str | None = None, max_tenants: int = 50, max_ns: int = 32,
                 max_nodes: int = 200) -> None:
        self.process = process or process_name("api")
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenant = BoundedLabel(max_tenants)
        self.ns = BoundedLabel(max_ns, always=PROTOCOL_NS)
        self.node = BoundedLabel(max_nodes)
        r = self.registry
        self.runs = Counter("thoughtstream_runs_total", "Runs ended, by terminal status",
                            ("tenant", "agent", "status"), registry=r)
        self.queued_seconds = Histogram("thoughtstream_run_queued_seconds", "Time from queued to started",
                                        ("tenant",), buckets=QUEUED_BUCKETS, registry=r)
        self.run_duration = Histogram("thoughtstream_run_duration_seconds",
                                      "Time from started to ended, of runs that started",
                                      ("agent", "status"), buckets=RUN_BUCKETS, registry=r)
        self.step_duration = Histogram("thoughtstream_step_duration_seconds", "Time one graph node ran",
                                       ("agent", "node"), buckets=STEP_BUCKETS, registry=r)
        self.retries = Counter("thoughtstream_retries_total", "Node failures that will be retried",
                               ("agent", "node"), registry=r)
        self.rejections = Counter("thoughtstream_rejected_total",
                                      "Run creations refused by a tenant limit (429)",
                                      ("tenant", "reason"), registry=r)
        self.events_published = Counter("thoughtstream_events_published_total",
                                        "Events appended to run logs", ("ns",), registry=r)
        self.events_delivered = Counter("thoughtstream_events_delivered_total",
                                        "Events written to subscribers", ("transport",), registry=r)
        self.delivery_lag = Histogram("thoughtstream_delivery_lag_seconds",
                                      "From an event's append to its write to a subscriber (one "
                                      "sample per written batch, its oldest live event)",
                                      ("transport",), buckets=LAG_BUCKETS, registry=r)
        self.subscribers = Gauge("thoughtstream_subscribers", "Open run subscriptions",
                                 ("transport",), registry=r)
        self.slow_consumer_drops = Counter("thoughtstream_slow_consumer_drops_total",
                                           "Subscribers cut from the live stream for reading too slowly "
                                           "(they resync from the log; Socket.IO also counts the "
                                           "disconnect of one that never drained)",
                                           ("transport",), registry=r)
        self._published: dict[str, Any] = {}
        self._transports = {t: TransportMetrics(self, t) for t in TRANSPORTS}

    @classmethod
    def from_settings(cls, settings: Any, role: str) -> Metrics:
        return cls(process=process_name(role), max_tenants=settings.metrics_max_tenants,
                   max_ns=settings.metrics_max_ns)

    # -- hot paths ---------------------------------------------------------------
    def published(self, ns: str) -> None:
        """One event appended (every bus append calls this)."""
        child = self._published.get(ns)
        if child is None:
            label = self.ns(ns)
            child = self.events_published.labels(label)
            if label != OTHER:  # names past the bound are unbounded: never cached by name
                self._published[ns] = child
        child.inc()

    def transport(self, name: str) -> TransportMetrics:
        return self._transports[name]

    # -- per run -----------------------------------------------------------------
    def run_ended(self, rec: Any) -> None:
        """A run reached its terminal status (counted by the process that ended it)."""
        self.runs.labels(self.tenant(rec.tenant), rec.agent, rec.status).inc()
        if rec.started_at is not None and rec.ended_at is not None:
            self.run_duration.labels(rec.agent, rec.status).observe(max(0.0, rec.ended_at - rec.started_at))

    def step_clock(self, agent: str, path: Callable[[tuple[str, ...], str | None], str]) -> StepClock:
        return StepClock(self, agent, path)

    def step(self, agent: str, node: str, seconds: float) -> None:
        self.step_duration.labels(agent, self.node(node)).observe(seconds)

    def retried(self, agent: str, node: str) -> None:
        self.retries.labels(agent, self.node(node)).inc()

    # -- the dispatcher's (fair share) -----------------------------------------
    def run_queued(self, tenant: str, seconds: float) -> None:
        """A run waited ``seconds`` between queued and started."""
        self.queued_seconds.labels(self.tenant(tenant)).observe(max(0.0, seconds))

    def rejected(self, tenant: str, reason: str) -> None:
        """A run creation was refused (``tenant_queue_full``, ``rate_limited``)."""
        self.rejections.labels(self.tenant(tenant), reason).inc()

