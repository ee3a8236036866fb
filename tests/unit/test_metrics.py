"""server/observability: bounded labels, the merged view, scrape-time gauges, delivery and step
timing, the Redis share, slow-consumer counting, and the JSON log format."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from server.bus.subscription import subscribe
from server.bus.memory import MemoryBus
from server.config import Settings
from server.events import STATUS, Event
from server.observability import Metrics, MetricsView
from server.observability.exposition import merge, snapshot
from server.observability.logs import JsonFormatter, RunContextFilter, current_run, run_context
from server.observability.metrics import OTHER, BoundedLabel
from server.runs.store import RunRecord
from server.transports.common import LOCAL_CALLER
from server.transports.sio_watch import Client, Delivery, Watch

from .test_transport_delivery import FakeEngine, until


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name}


async def render(metrics: Metrics, overview: dict[str, Any] | None = None, peers: Any = None) -> str:
    async def ov() -> dict[str, Any]:
        return overview or {"backend_up": True}

    return (await MetricsView(metrics, ov, peers).render()).decode()


def test_bounded_label_keeps_the_first_values_and_maps_the_rest_to_other() -> None:
    label = BoundedLabel(2, always=("STATUS",))
    assert [label(v) for v in ("a", "STATUS", "b", "c", "a", "d")] == ["a", "STATUS", "b", OTHER, "a", OTHER]


def test_user_namespaces_are_bounded_but_the_protocols_never_are() -> None:
    m = Metrics(max_ns=2)
    for ns in ("STATUS", "X1", "X2", "X3", "X4", "THOUGHT", "X3"):
        m.published(ns)
    got = {dict(k)["ns"]: v for k, v in samples(
        asyncio.run(render(m)), "thoughtstream_events_published_total").items()}
    assert got == {"STATUS": 1, "X1": 1, "X2": 1, OTHER: 3, "THOUGHT": 1}
    assert "X3" not in m._published  # names past the bound are not cached one by one


def test_run_ended_counts_status_and_duration_of_started_runs_only() -> None:
    m = Metrics(max_tenants=1)
    now = time.time()
    m.run_ended(RunRecord("r1", "echo", {}, tenant="acme", status="succeeded", started_at=now - 2, ended_at=now))
    m.run_ended(RunRecord("r2", "echo", {}, tenant="beta", status="cancelled", ended_at=now))  # never started
    text = asyncio.run(render(m))
    runs = samples(text, "thoughtstream_runs_total")
    assert runs == {frozenset({("tenant", "acme"), ("agent", "echo"), ("status", "succeeded")}): 1,
                    frozenset({("tenant", OTHER), ("agent", "echo"), ("status", "cancelled")}): 1}
    counts = samples(text, "thoughtstream_run_duration_seconds_count")
    assert counts == {frozenset({("agent", "echo"), ("status", "succeeded")}): 1}
    assert 1.9 < samples(text, "thoughtstream_run_duration_seconds_sum")[
        frozenset({("agent", "echo"), ("status", "succeeded")})] < 2.1


def test_the_dispatchers_functions_count_with_capped_tenants() -> None:
    """run_queued(tenant, seconds) and rejected(tenant, reason): what fair share calls."""
    m = Metrics(max_tenants=1)
    m.run_queued("acme", 0.3)
    m.run_queued("beta", 1.5)
    m.rejected("beta", "rate_limited")
    text = asyncio.run(render(m))
    assert samples(text, "thoughtstream_run_queued_seconds_count") == {
        frozenset({("tenant", "acme")}): 1, frozenset({("tenant", OTHER)}): 1}
    assert samples(text, "thoughtstream_rejected_total") == {
        frozenset({("tenant", OTHER), ("reason", "rate_limited")}): 1}


def test_scrape_time_gauges_come_from_the_overview_with_tenants_capped() -> None:
    m = Metrics(max_tenants=1)
    overview = {
        "tenants": {
            "acme": {"queued": 3, "running": 1, "oldest_age_s": 4.0,
                     "by_agent": {"echo": {"queued": 3, "running": 1}}},
            "beta": {"queued": 2, "running": 0, "oldest_age_s": 9.5,
                     "by_agent": {"echo": {"queued": 2, "running": 0}}},
            "gamma": {"queued": 1, "running": 2, "oldest_age_s": None,
                      "by_agent": {"echo": {"queued": 1, "running": 2}}},
        },
        "workers": {"echo": 2, "reflective": 0},
        "backend_up": True,
    }
    text = asyncio.run(render(m, overview))
    depth = samples(text, "thoughtstream_queue_depth")
    assert depth == {frozenset({("tenant", "acme"), ("agent", "echo")}): 3,
                     frozenset({("tenant", OTHER), ("agent", "echo")}): 3}
    assert samples(text, "thoughtstream_runs_active")[frozenset({("tenant", OTHER), ("agent", "echo")})] == 2
    assert samples(text, "thoughtstream_queue_oldest_age_seconds") == {
        frozenset({("tenant", "acme")}): 4.0, frozenset({("tenant", OTHER)}): 9.5}
    assert samples(text, "thoughtstream_workers") == {
        frozenset({("agent", "echo")}): 2, frozenset({("agent", "reflective")}): 0}
    assert samples(text, "thoughtstream_backend_up") == {frozenset(): 1}


def test_peers_merge_by_family_with_a_process_label() -> None:
    api, worker = Metrics(process="api-h-1"), Metrics(process="worker-h-2")
    api.published("STATUS")
    worker.published("STATUS")
    worker.published("STATUS")
    worker.run_ended(RunRecord("r", "echo", {}, status="succeeded", started_at=1.0, ended_at=2.0))

    async def peers() -> list[dict[str, Any]]:
        return [json.loads(json.dumps(snapshot(worker)))]  # as it travels through Redis

    text = asyncio.run(render(api, peers=peers))
    assert samples(text, "thoughtstream_events_published_total") == {
        frozenset({("ns", "STATUS"), ("process", "api-h-1")}): 1,
        frozenset({("ns", "STATUS"), ("process", "worker-h-2")}): 2}
    assert text.count("# TYPE thoughtstream_runs_total counter") == 1
    runs = samples(text, "thoughtstream_runs_total")
    assert [dict(k)["process"] for k in runs] == ["worker-h-2"]
    assert samples(text, "thoughtstream_backend_up") == {frozenset(): 1}  # deployment-wide: no process


async def test_a_scrape_during_an_outage_still_answers() -> None:
    """Overview and peers failing: this process's counters, and backend_up 0."""
    m = Metrics()
    m.published("STATUS")

    async def broken() -> Any:
        raise ConnectionError("redis away")

    text = (await MetricsView(m, broken, broken).render()).decode()
    assert samples(text, "thoughtstream_backend_up") == {frozenset(): 0}
    assert sum(samples(text, "thoughtstream_events_published_total").values()) == 1


def test_merge_without_process_label_is_the_registry_as_is() -> None:
    m = Metrics()
    m.published("STEP")
    families = {f.name: f for f in merge([snapshot(m)], label_process=False)}
    assert [s.labels for s in families["thoughtstream_events_published"].samples] == [{"ns": "STEP"}]


def test_delivery_lag_is_sampled_once_per_batch_and_never_for_history() -> None:
    m = Metrics()
    sse = m.transport("sse")
    since = time.time()
    old = [Event("r", i, "THOUGHT", "a", {}, since - 100) for i in (1, 2)]
    live = [Event("r", i, "THOUGHT", "a", {}, since + 0.001) for i in (3, 4, 5)]
    sse.batch(old, 2, since)  # a replay the subscriber asked for: delivered, but no lag
    sse.batch(old + live, 5, since)  # the tail is live: one sample, its oldest live event
    sse.batch(live, 0, since)  # all filtered out (?ns=): nothing written, nothing sampled
    text = asyncio.run(render(m))
    key = frozenset({("transport", "sse")})
    assert samples(text, "thoughtstream_events_delivered_total")[key] == 7
    assert samples(text, "thoughtstream_delivery_lag_seconds_count")[key] == 1
    assert samples(text, "thoughtstream_delivery_lag_seconds_sum")[key] < 1


def test_step_clock_times_tasks_from_start_to_result() -> None:
    m = Metrics()
    clock = m.step_clock("echo", lambda ns, name: "/".join([*ns, name or ""]))
    clock.task((), {"id": "t1", "name": "search", "input": {}, "triggers": ()})
    clock.task(("sub:abc",), {"id": "t2", "name": "late", "result": {}, "error": None, "interrupts": []})
    clock.task((), {"id": "t1", "name": "search", "result": {}, "error": None, "interrupts": []})
    counts = samples(asyncio.run(render(m)), "thoughtstream_step_duration_seconds_count")
    assert counts == {frozenset({("agent", "echo"), ("node", "search")}): 1}  # no start, no sample


async def test_an_overflowing_subscriber_counts_one_drop_per_episode() -> None:
    async with MemoryBus(max_events=1000, ttl_s=60, subscriber_buffer=4) as bus:
        await bus.append("r", STATUS, "server", {"state": "running"})
        sub = await subscribe(bus, "r", 0)
        batches = sub.__aiter__()
        await batches.__anext__()
        for i in range(40):  # nobody reads: the Sink overflows again and again
            await bus.append("r", "THOUGHT", "a", {"i": i})
        assert sub.drops == 1
        await batches.__anext__()  # the resync from the log
        assert sub.resyncs == 1
        await sub.aclose()


async def test_socketio_counts_subscribers_deliveries_and_slow_drops() -> None:
    m = Metrics()
    async with MemoryBus(max_events=1000, ttl_s=60, subscriber_buffer=16) as bus:
        settings = Settings(socketio_queue_limit=8, socketio_send_timeout_s=0.2)
        engine = FakeEngine()
        delivery = Delivery(settings, engine, lambda: bus, m)  # type: ignore[arg-type]
        client = Client("sid", "eio", LOCAL_CALLER)
        await bus.append("r", STATUS, "server", {"state": "running"})
        sub = await subscribe(bus, "r", 0)
        delivery.start(Watch(client, "r", sub, False, last=sub.last))
        def value(name: str) -> float | None:
            return m.registry.get_sample_value(name, {"transport": "socketio"})

        assert value("thoughtstream_subscribers") == 1
        await bus.append("r", "THOUGHT", "a", {"i": -1})
        await until(lambda: value("thoughtstream_events_delivered_total") == 2)
        engine.drain()
        for i in range(50):  # never drained: cut from live, then kicked
            await bus.append("r", "THOUGHT", "a", {"i": i})
        await until(lambda: engine.kicked and not delivery._tasks)
        assert value("thoughtstream_subscribers") == 0
        assert value("thoughtstream_slow_consumer_drops_total") == 2  # the cut, then the disconnect
        # A batch counts once handed over whole: the kicked socket's client resubscribes
        # from its last seq and gets the rest again, which then counts.
        assert 2 <= value("thoughtstream_events_delivered_total") < 2 + len(engine.queue)


async def test_redis_share_publishes_snapshots_that_peers_read(redis_server: Any) -> None:
    """Each process reads the others' snapshots (not its own); a stopped one's expires from the view."""
    from server.backends import redis_connection
    from server.observability.redis_share import RedisMetricsShare

    prefix = f"t{uuid.uuid4().hex[:8]}"
    a, b = Metrics(process="api-x-1"), Metrics(process="worker-x-2")
    b.published("STATUS")
    async with redis_connection(redis_server.url, outage_s=2) as ops:
        async with RedisMetricsShare(ops, a, prefix=prefix, interval_s=0.05) as share_a:
            async with RedisMetricsShare(ops, b, prefix=prefix, interval_s=0.05):
                peers = await share_a.peers()
                assert [p["process"] for p in peers] == ["worker-x-2"]
                b.published("STATUS")
                await asyncio.sleep(0.2)
                fam = next(f for f in (await share_a.peers())[0]["families"]
                           if f["name"] == "thoughtstream_events_published")
                assert fam["samples"] == [["thoughtstream_events_published_total", {"ns": "STATUS"}, 2.0]]
            await ops.client.pexpire(f"{prefix}:metrics:proc:worker-x-2", 1)  # as its TTL would
            await asyncio.sleep(0.05)
            assert await share_a.peers() == []
            assert await ops.client.smembers(f"{prefix}:metrics:procs") == {b"api-x-1"}


def test_json_lines_carry_the_run_from_the_context() -> None:
    formatter, flt = JsonFormatter(), RunContextFilter()

    def line(msg: str, **kw: Any) -> dict[str, Any]:
        record = logging.getLogger("lib.x").makeRecord("lib.x", logging.WARNING, __file__, 1, msg, (), None, **kw)
        flt.filter(record)
        return json.loads(formatter.format(record))

    outside = line("hello")
    assert set(outside) == {"ts", "level", "logger", "message"}
    assert outside["level"] == "warning" and outside["logger"] == "lib.x" and outside["ts"].endswith("Z")
    with run_context("r1", "acme", "echo"):
        assert current_run() == {"run_id": "r1", "tenant": "acme", "agent": "echo"}
        inside = line("working")
        explicit = line("other run", extra={"run_id": "r2"})
    assert (inside["run_id"], inside["tenant"], inside["agent"]) == ("r1", "acme", "echo")
    assert explicit["run_id"] == "r2" and explicit["tenant"] == "acme"
    assert current_run() is None


def test_json_lines_hold_tracebacks() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "failed" and "ValueError: bad" in out["exc"]
