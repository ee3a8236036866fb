"""What ``GET /metrics`` serves: one coherent view of every process of a deployment.

Three sources, merged by metric family at scrape time:

* this process's ``Metrics`` (its counters, histograms and subscriber gauge);
* with Redis, every other live process's snapshot of the same (``redis_share.py``), each
  process's series told apart by a ``process`` label (``api-host-1234``,
  ``worker-host-5678``). ``sum without (process)`` gives the deployment's totals;
* the dispatcher's ``overview()``, read now (queue depth, oldest age, running runs,
  workers, backend_up): deployment-wide figures with no ``process`` label, since every
  process would report the same ones.

Why per-process series shared through Redis, and not prometheus-client's multiprocess
mode: that mode aggregates through mmap files in one directory, so it only sees the
processes of one machine, while a Redis deployment's workers (``thoughtstream worker``)
and API processes may each be on another; it also switches prometheus-client into a
process-wide mode chosen by an environment variable before import, which is the global
state this codebase keeps out, and needs dead processes' files cleaned up. Sharing through
the Redis the deployment already has costs each process one small write every
``metrics_publish_s``; a scrape sees another process's counts up to that much late, and a
process that stopped keeps its series until its snapshot's TTL (about three intervals)
lapses. Every API process serves the whole view: scrape one of them (behind the load
balancer, say), not each, or the totals count each process once per API scraped.
Memory mode has a single process: its series carry no ``process`` label.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric

from .metrics import SCRAPED, Metrics

log = logging.getLogger(__name__)

Overview = Callable[[], Awaitable[dict[str, Any]]]
Peers = Callable[[], Awaitable[list[dict[str, Any]]]]
SCRAPE_TIMEOUT_S = 5.0  # under Prometheus's default scrape timeout (10 s)
# The classic text format, which every Prometheus (and anything scraping like one) reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def snapshot(metrics: Metrics) -> dict[str, Any]:
    """This process's families as plain data (what a peer publishes and a scrape merges)."""
    families = []
    for fam in metrics.registry.collect():
        # ``_created`` series (one per labelled child) double the series count and no
        # dashboard reads them.
        samples = [[s.name, s.labels, s.value] for s in fam.samples if not s.name.endswith("_created")]
        families.append({"name": fam.name, "type": fam.type, "help": fam.documentation, "samples": samples})
    return {"process": metrics.process, "families": families}


def merge(snapshots: Iterable[dict[str, Any]], *, label_process: bool) -> list[Metric]:
    """One family per name, holding every snapshot's samples (with ``process`` if asked)."""
    out: dict[str, Metric] = {}
    for snap in snapshots:
        process = snap.get("process", "")
        for fam in snap.get("families", ()):
            metric = out.get(fam["name"])
            if metric is None:
                metric = out[fam["name"]] = Metric(fam["name"], fam["help"], fam["type"])
            for name, labels, value in fam["samples"]:
                metric.add_sample(name, {**labels, "process": process} if label_process else labels, value)
    return list(out.values())


def scraped(metrics: Metrics, overview: dict[str, Any]) -> list[Metric]:
    """The dispatcher's figures as gauges, tenants capped like every other tenant label."""
    families = {name: Metric(name, help_, typ) for name, (typ, help_, _labels) in SCRAPED.items()}
    depth: dict[tuple[str, str], float] = {}
    active: dict[tuple[str, str], float] = {}
    oldest: dict[str, float] = {}
    for tenant, figures in (overview.get("tenants") or {}).items():
        label = metrics.tenant(tenant)
        for agent, per_agent in (figures.get("by_agent") or {}).items():
            depth[label, agent] = depth.get((label, agent), 0) + per_agent.get("queued", 0)
            active[label, agent] = active.get((label, agent), 0) + per_agent.get("running", 0)
        age = figures.get("oldest_age_s")
        if age is not None:
            oldest[label] = max(oldest.get(label, 0.0), float(age))
    for (tenant, agent), value in depth.items():
        families["thoughtstream_queue_depth"].add_sample(
            "thoughtstream_queue_depth", {"tenant": tenant, "agent": agent}, value)
    for (tenant, agent), value in active.items():
        families["thoughtstream_runs_active"].add_sample(
            "thoughtstream_runs_active", {"tenant": tenant, "agent": agent}, value)
    for tenant, value in oldest.items():
        families["thoughtstream_queue_oldest_age_seconds"].add_sample(
            "thoughtstream_queue_oldest_age_seconds", {"tenant": tenant}, value)
    for agent, count in (overview.get("workers") or {}).items():
        families["thoughtstream_workers"].add_sample("thoughtstream_workers", {"agent": agent}, count)
    families["thoughtstream_backend_up"].add_sample(
        "thoughtstream_backend_up", {}, 1.0 if overview.get("backend_up") else 0.0)
    return list(families.values())


def bus_overview(bus: Any) -> Overview:
    """What is known without a dispatcher's overview: whether the backend answers."""

    async def overview() -> dict[str, Any]:
        return {"tenants": {}, "workers": {}, "backend_up": await bus.ping()}

    return overview


class _Families:
    """The collector shape ``generate_latest`` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class MetricsView:
    """Renders the Prometheus text of this process, its peers and the dispatcher."""

    def __init__(self, metrics: Metrics, overview: Overview, peers: Peers | None = None) -> None:
        self.metrics = metrics
        self.overview = overview
        self.peers = peers  # None: this process is the whole deployment

    async def render(self) -> bytes:
        snapshots = [snapshot(self.metrics)]
        if self.peers is not None:
            snapshots += await self._read("peer snapshots", self.peers, [])
        overview = await self._read("the dispatcher's overview", self.overview, {"backend_up": False})
        families = merge(snapshots, label_process=self.peers is not None)
        return generate_latest(_Families(families + scraped(self.metrics, overview)))  # type: ignore[arg-type]

    @staticmethod
    async def _read(what: str, source: Callable[[], Awaitable[Any]], fallback: Any) -> Any:
        # A scrape during an outage still answers: this process's own counters, and
        # backend_up 0, are what the operator needs to see then.
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                return await source()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the scrape answers without it
            log.warning("/metrics without %s: %s: %s", what, type(exc).__name__, exc)
            return fallback
