"""/metrics and JSON logs against real server processes (issue 11, "Metrics and logs").

Every metric name is served with its type; the counters move when runs end, events are
appended and delivered over SSE and Socket.IO; /metrics is admin-only with auth on and open
on --metrics-port; tenant labels past the cap are "other"; on Redis a worker process's
counters show on every API process; --log-format json puts run_id/tenant/agent on a run's lines.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest
import socketio
from httpx_sse import aconnect_sse
from prometheus_client.parser import text_string_to_metric_families

from tests.auth_support import Minter, bearer
from tests.support import RedisServer, ServerProcess, free_port, wait_workers

from .conftest import TEST_AGENTS, agent_flags, start_run, wait_finished

EXPECTED = {
    "thoughtstream_runs_total": "counter",
    "thoughtstream_runs_active": "gauge",
    "thoughtstream_queue_depth": "gauge",
    "thoughtstream_queue_oldest_age_seconds": "gauge",
    "thoughtstream_run_queued_seconds": "histogram",
    "thoughtstream_run_duration_seconds": "histogram",
    "thoughtstream_step_duration_seconds": "histogram",
    "thoughtstream_retries_total": "counter",
    "thoughtstream_rejected_total": "counter",
    "thoughtstream_events_published_total": "counter",
    "thoughtstream_events_delivered_total": "counter",
    "thoughtstream_delivery_lag_seconds": "histogram",
    "thoughtstream_subscribers": "gauge",
    "thoughtstream_slow_consumer_drops_total": "counter",
    "thoughtstream_backend_up": "gauge",
    "thoughtstream_workers": "gauge",
}
AGENTS = {
    "echo": TEST_AGENTS["echo"],
    "failing": TEST_AGENTS["failing"],
    "ticker": TEST_AGENTS["ticker"],
    "flaky": "tests/fixtures/flaky_graph.py:graph",
    "logging": "tests/fixtures/logging_graph.py:graph",
}


class Scrape:
    """One /metrics body: its TYPE lines, and sums of samples by name and label subset."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


async def scrape(url: str, headers: dict[str, str] | None = None) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(url + "/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    return Scrape(resp.text)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A memory-mode server of its own (its counters move only for these tests), logging JSON."""
    proc = ServerProcess(*agent_flags(AGENTS), "--log-format", "json",
                         env={"THOUGHTSTREAM_LOG_LEVEL": "info", "THOUGHTSTREAM_JOURNAL": "false"}).start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_every_metric_name_is_served_with_its_type(server: ServerProcess) -> None:
    """Each of the 16 names of issue 11 has its TYPE line (labelled families with no series yet too)."""
    s = await scrape(server.url)
    assert {name: s.types.get(name) for name in EXPECTED} == EXPECTED
    assert s.value("thoughtstream_backend_up") == 1
    assert "_created" not in s.text  # one series per child, not two


async def test_an_sse_watched_run_moves_its_counters(server: ServerProcess) -> None:
    """A run watched live over SSE: runs_total{succeeded} +1, run and step durations counted once,
    events published by ns, delivered over sse (each once), lag sampled; a subscriber while open, none after."""
    before = await scrape(server.url)
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        run = await start_run(http, "ticker", {"count": 5, "interval_s": 0.05})
        seen: list[dict[str, Any]] = []
        during: Scrape | None = None
        async with aconnect_sse(http, "GET", f"/runs/{run['run_id']}/events") as source:
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue  # the stream's head (retry:)
                seen.append(json.loads(sse.data))
                if during is None:
                    during = await scrape(server.url)
                if seen[-1]["ns"] == "STATUS" and seen[-1]["data"]["state"] in ("succeeded", "failed"):
                    break
    assert seen[-1]["data"]["state"] == "succeeded"
    assert during is not None and during.value("thoughtstream_subscribers", transport="sse") == 1
    after = await _settled(server.url, lambda s: s.value("thoughtstream_subscribers", transport="sse") == 0)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("thoughtstream_runs_total", tenant="default", agent="ticker", status="succeeded") == 1
    assert moved("thoughtstream_run_duration_seconds_count", agent="ticker", status="succeeded") == 1
    assert moved("thoughtstream_step_duration_seconds_count", agent="ticker", node="tick") == 1
    assert moved("thoughtstream_events_published_total") == len(seen) == seen[-1]["seq"]
    assert moved("thoughtstream_events_published_total", ns="TICK") == 5
    assert moved("thoughtstream_events_delivered_total", transport="sse") == len(seen)
    assert moved("thoughtstream_delivery_lag_seconds_count", transport="sse") >= 1
    assert after.value("thoughtstream_delivery_lag_seconds_sum", transport="sse") < 60


async def test_a_socketio_watch_counts_as_socketio(server: ServerProcess) -> None:
    """Events delivered to a Socket.IO subscriber count under transport="socketio", with its subscriber gauge."""
    before = await scrape(server.url)
    sio = socketio.AsyncClient(reconnection=False)
    got: list[dict[str, Any]] = []
    ended = asyncio.Event()
    sio.on("event", got.append)
    sio.on("run_end", lambda body: ended.set())
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        run = await start_run(http, "ticker", {"count": 4, "interval_s": 0.05})
        await sio.connect(server.url, transports=["websocket"], wait_timeout=5)
        try:
            ack = await sio.call("subscribe", {"run_id": run["run_id"]}, timeout=10)
            assert ack["ok"] is True, ack
            during = await scrape(server.url)
            await asyncio.wait_for(ended.wait(), 20)
        finally:
            await sio.disconnect()
    assert during.value("thoughtstream_subscribers", transport="socketio") == 1
    after = await _settled(server.url, lambda s: s.value("thoughtstream_subscribers", transport="socketio") == 0)
    assert (after.value("thoughtstream_events_delivered_total", transport="socketio")
            - before.value("thoughtstream_events_delivered_total", transport="socketio")) == len(got) > 0
    assert (after.value("thoughtstream_delivery_lag_seconds_count", transport="socketio")
            > before.value("thoughtstream_delivery_lag_seconds_count", transport="socketio"))


async def test_retries_and_failures_are_counted(server: ServerProcess) -> None:
    """A node that fails transiently twice: retries_total{agent,node} +2 and the run succeeds;
    a failing graph: runs_total{status="failed"} +1."""
    before = await scrape(server.url)
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        flaky = await start_run(http, "flaky", {"mode": "transient", "key": uuid.uuid4().hex})
        failing = await start_run(http, "failing", {"reason": "boom"})
        assert (await wait_finished(http, flaky["run_id"]))["status"] == "succeeded"
        assert (await wait_finished(http, failing["run_id"]))["status"] == "failed"
    after = await scrape(server.url)
    assert (after.value("thoughtstream_retries_total", agent="flaky", node="call_service")
            - before.value("thoughtstream_retries_total", agent="flaky", node="call_service")) == 2
    assert (after.value("thoughtstream_runs_total", agent="failing", status="failed")
            - before.value("thoughtstream_runs_total", agent="failing", status="failed")) == 1


async def test_json_logs_carry_the_run_on_its_lines(server: ServerProcess) -> None:
    """--log-format json: every line is one JSON object with ts/level/logger/message; a library's
    lines inside a run (async node, and a sync node in its thread) carry run_id, tenant, agent."""
    word = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        run = await start_run(http, "logging", {"word": word})
        assert (await wait_finished(http, run["run_id"]))["status"] == "succeeded"
    deadline = time.monotonic() + 15
    while server.output().count(word) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    mine = [line for line in lines if word in line["message"]]
    assert sorted(line["message"].split(" saw ")[0] for line in mine) == ["library", "library thread"]
    for line in mine:
        assert (line["run_id"], line["tenant"], line["agent"], line["logger"], line["level"]) == \
            (run["run_id"], "default", "logging", "some.library", "warning")
    startup = [line for line in lines if line["message"].startswith("Application startup complete")]
    assert startup and "run_id" not in startup[0]


async def _settled(url: str, ok: Any, headers: dict[str, str] | None = None, timeout: float = 20) -> Scrape:
    """Scrape until ``ok(scrape)``: a stream's end is counted once the server has closed it."""
    deadline = time.monotonic() + timeout
    while True:
        s = await scrape(url, headers)
        if ok(s) or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------ auth and tenant cap


@pytest.fixture(scope="module")
def minter() -> Minter:
    return Minter.hs256()


@dataclass
class Secured:
    url: str
    metrics_url: str  # --metrics-port


@pytest.fixture(scope="module")
def secured(minter: Minter) -> Iterator[Secured]:
    """JWT auth, a tenant cap of 2, and a metrics port."""
    port = free_port()
    proc = ServerProcess(*agent_flags({"echo": AGENTS["echo"]}), "--metrics-port", str(port), env={
        "THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": minter.secret,
        "THOUGHTSTREAM_METRICS_MAX_TENANTS": "2", "THOUGHTSTREAM_JOURNAL": "false"}).start()
    try:
        yield Secured(proc.url, f"http://127.0.0.1:{port}")
    finally:
        proc.stop()


async def test_metrics_is_for_admins_and_open_on_its_own_port(secured: Secured, minter: Minter) -> None:
    """With THOUGHTSTREAM_AUTH=jwt: 401 without a credential, 403 for viewer and member tokens, 200 for
    an admin; --metrics-port serves the same families without auth."""
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as http:
        anonymous = await http.get("/metrics")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
        for roles in (["viewer"], ["member"]):
            resp = await http.get("/metrics", headers=bearer(minter.token(tenant="acme", roles=roles)))
            assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", resp.text
    admin = await scrape(secured.url, bearer(minter.token(tenant="ops", roles=["admin"])))
    port = await scrape(secured.metrics_url)
    assert set(admin.types) == set(port.types) >= set(EXPECTED)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(secured.metrics_url + "/runs")).status_code == 404  # /metrics only


async def test_tenants_past_the_cap_are_other(secured: Secured, minter: Minter) -> None:
    """THOUGHTSTREAM_METRICS_MAX_TENANTS=2: the first two tenants keep their label, the next ones
    count under tenant="other"."""
    tenants = [f"t{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    for tenant in tenants:  # one after another: the first two to end are the first two kept
        async with httpx.AsyncClient(base_url=secured.url, timeout=20,
                                     headers=bearer(minter.token(tenant=tenant, roles=["member"]))) as http:
            run = await start_run(http, "echo", {"text": "a b"})
            assert (await wait_finished(http, run["run_id"]))["status"] == "succeeded"
    s = await scrape(secured.url, bearer(minter.token(tenant="ops", roles=["admin"])))
    assert s.label_values("thoughtstream_runs_total", "tenant") == {tenants[0], tenants[1], "other"}
    assert s.value("thoughtstream_runs_total", tenant="other", agent="echo", status="succeeded") == 2
    assert s.value("thoughtstream_runs_total", tenant=tenants[0]) == 1


# ------------------------------------------------------------------------ Redis: many processes


def test_worker_process_counters_show_on_every_api_process() -> None:
    """serve --workers 1 on Redis, plus a second API process: the run executes in the worker
    process, and both APIs' /metrics show its runs_total under a worker-… process label, next to
    each API's own; events published sum to the run's log across processes."""
    redis = RedisServer().start()
    env = {"THOUGHTSTREAM_REDIS_URL": redis.url, "THOUGHTSTREAM_METRICS_PUBLISH_S": "0.3"}
    flags = agent_flags({"echo": AGENTS["echo"]})
    a = ServerProcess("--workers", "1", *flags, env=env)
    b = ServerProcess("--workers", "0", *flags, env=env)
    try:
        a.start()
        b.start()
        wait_workers(redis, 1)
        with httpx.Client(base_url=a.url, timeout=20) as http:
            resp = http.post("/runs", json={"agent": "echo", "input": {"text": "one two three"}})
            assert resp.status_code == 202, resp.text
            run_id = resp.json()["run_id"]
        last_seq = asyncio.run(_finished_seq(b.url, run_id))

        def worker_runs(s: Scrape) -> float:
            return sum(x.value for x in s.samples if x.name == "thoughtstream_runs_total"
                       and x.labels.get("process", "").startswith("worker-")
                       and x.labels.get("status") == "succeeded")

        def roles_of(s: Scrape) -> list[str]:
            return sorted(p.split("-", 1)[0] for p in s.label_values("thoughtstream_subscribers", "process"))

        for api in (a, b):
            # Another process's series arrive with its next publish (every 0.3 s): wait for all three.
            s = asyncio.run(_settled(api.url, lambda s: worker_runs(s) == 1 and
                                     s.value("thoughtstream_events_published_total") == last_seq and
                                     roles_of(s) == ["api", "api", "worker"]))
            assert worker_runs(s) == 1, s.text
            processes = s.label_values("thoughtstream_events_published_total", "process")
            assert roles_of(s) == ["api", "api", "worker"], processes
            assert s.value("thoughtstream_events_published_total") == last_seq
            assert s.value("thoughtstream_backend_up") == 1
            assert "process" not in next(x.labels for x in s.samples if x.name == "thoughtstream_backend_up")
    finally:
        for p in (a, b):
            p.stop()
        for name, p in (("api a", a), ("api b", b)):
            print(f"--- {name} ---\n{p.output()[-3000:]}")
        redis.stop()


async def _finished_seq(url: str, run_id: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        snap = await wait_finished(http, run_id)
    assert snap["status"] == "succeeded", snap
    return snap["last_seq"]
