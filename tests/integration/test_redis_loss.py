"""When Redis forgets (DESIGN.md): redis-server restarted without persistence mid-run.

Completeness is impossible then; honesty is what is tested. Two API processes and a
worker share one Redis that comes back empty: no 5xx anywhere, every watcher of the lost
run is told (``reset`` log_lost) and ended within seconds, no seq ever names two events,
each process says once that Redis lost its data (and a worker with no traceback), and new
runs complete through every process. A durable (AOF) restart is not mistaken for a loss.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis as redis_sync

from server import redis_keys
from tests.integration.test_redis_topology import assert_exact, read_sse, start_run
from tests.integration.test_socketio import Watcher
from tests.support import redis_topology

QUESTION = {"question": "When was the Eiffel Tower built and how tall is it?"}
LOSS_LINE = "Redis lost its data (epoch "  # the epoch check's line, once per process
ENV = {
    "THOUGHTSTREAM_WORKER_LEASE_S": "2",
    "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "60",  # a run lasts long enough to be cut mid-stream
    "THOUGHTSTREAM_REDIS_OUTAGE_S": "15",
    "THOUGHTSTREAM_SSE_PING_S": "0.5",  # pings must not keep a lost stream looking alive
}


@dataclass
class SseWatch:
    """Everything one SSE connection delivered, and how it ended."""

    events: list[dict] = field(default_factory=list)
    resets: list[dict] = field(default_factory=list)
    closed_at: float | None = None  # monotonic time the server closed the stream


async def watch_sse(url: str, out: SseWatch, timeout: float = 90) -> None:
    async with httpx.AsyncClient(timeout=timeout) as client:
        async with client.stream("GET", url) as resp:
            assert resp.status_code == 200, await resp.aread()
            kind = None
            async for line in resp.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    body = json.loads(line[5:])
                    if kind == "reset":
                        out.resets.append(body)
                    else:
                        out.events.append(body)
                elif not line:
                    kind = None
    out.closed_at = time.monotonic()


def one_event_per_seq(events: list[dict]) -> None:
    """What a watcher saw never has one seq twice (let alone with different content)."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), f"seqs repeated or out of order: {seqs}"


async def wait_progress(url: str, run_id: str, step: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as c:
        while True:
            snap = (await c.get(f"{url}/runs/{run_id}")).json()
            if snap["status"] == "running" and snap.get("progress", {}).get("step", -1) >= step:
                return
            assert snap["status"] in ("queued", "running"), snap
            assert time.monotonic() < deadline, snap
            await asyncio.sleep(0.05)


@pytest.fixture
def empty_on_restart():
    """A redis-server without persistence, two API processes and one worker."""
    with redis_topology(["api1", "api2"], ["w1"], ENV, durable=False) as (redis, procs):
        yield redis, procs


async def test_redis_restarted_empty_mid_run_is_honest_everywhere(empty_on_restart):
    redis, procs = empty_on_restart
    api1, api2, worker = procs["api1"], procs["api2"], procs["w1"]
    run_id = start_run(api1, QUESTION)
    sse = [SseWatch() for _ in range(4)]
    sse_tasks = [asyncio.create_task(watch_sse(f"{api.url}/runs/{run_id}/events", w))
                 for api, w in zip((api1, api2, api1, api2), sse)]
    sio_batched = await Watcher(api2.url).connect()
    await sio_batched.subscribe(run_id, batch=True)
    sio_single = await Watcher(api1.url).connect()
    await sio_single.subscribe(run_id)
    await wait_progress(api1.url, run_id, 1)
    deadline = time.monotonic() + 20  # the watchers connect in the background
    while not all(w.events for w in sse) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    before = {id(w): len(w.events) for w in sse}
    assert all(before.values()), "every SSE watcher was streaming before the restart"

    await asyncio.to_thread(redis.restart, 1.0)
    back_at = time.monotonic()

    # Every watcher is told, and ended, within a few seconds.
    await asyncio.wait_for(asyncio.gather(*sse_tasks), 15)
    for w in sse:
        assert [r["reason"] for r in w.resets] == ["log_lost"], w.resets
        assert w.closed_at is not None and w.closed_at - back_at < 10, w.closed_at - back_at
        assert not any(e["ns"] == "STATUS" and e["data"]["state"] in ("succeeded", "failed", "cancelled")
                       for e in w.events), "a lost run has no ending to show"
        one_event_per_seq(w.events)
    for sio in (sio_batched, sio_single):
        await sio.wait_end(run_id, timeout=10)
        assert [r["reason"] for r in sio.resets] == ["log_lost"], sio.resets
        assert len(sio.ends[run_id]) == 1
        one_event_per_seq(sio.events[run_id])
        # The reset comes before run_end, and nothing of the run after it.
        kinds = [k for k, _ in sio.stream]
        assert kinds[-2:] == ["reset", "run_end"], kinds[-5:]

    # The same seqs never name other events: the worker appends nothing to the lost run.
    await asyncio.sleep(3)
    r = redis_sync.Redis(port=redis.port)
    lost = (redis_keys.run_log("ts", run_id), redis_keys.run_meta("ts", run_id), redis_keys.run("ts", run_id))
    assert not r.exists(*lost), \
        "a write re-created the lost run's log or record"

    # No 5xx anywhere: the lost run is a 404 on every endpoint of every API process.
    async with httpx.AsyncClient(timeout=10) as c:
        for api in (api1, api2):
            for method, path, body in (("GET", f"/runs/{run_id}", None),
                                       ("GET", f"/runs/{run_id}/events", None),
                                       ("POST", f"/runs/{run_id}/cancel", None),
                                       ("POST", f"/runs/{run_id}/resume", {"value": "yes"})):
                resp = await c.request(method, api.url + path, json=body)
                assert resp.status_code == 404, (api.url, path, resp.status_code, resp.text)
                assert resp.json()["error"]["code"] in ("run_lost", "not_found"), resp.text
            resp = await c.get(api.url + "/runs")
            assert resp.status_code == 200, resp.text
            assert run_id not in {row["run_id"] for row in resp.json()["runs"]}
            assert (await c.get(api.url + "/readyz")).status_code == 200
    for sio in (sio_batched, sio_single):
        for event, payload in (("subscribe", {"run_id": run_id}), ("cancel_run", {"run_id": run_id}),
                               ("resume_run", {"run_id": run_id, "value": "yes"})):
            ack = await sio.call(event, payload)
            assert ack["ok"] is False and ack["error"]["code"] in ("run_lost", "not_found"), (event, ack)

    # New runs complete normally, submitted to and watched through every API process.
    new_runs = [(start_run(submit_to), watch_on) for submit_to in (api1, api2) for watch_on in (api1, api2)]
    for new_id, watch_on in new_runs:
        events, done = await read_sse(f"{watch_on.url}/runs/{new_id}/events", timeout=60)
        assert done and events[-1]["data"]["state"] == "succeeded"
        assert_exact(events)
    await sio_single.subscribe(new_runs[0][0])
    await sio_single.wait_end(new_runs[0][0], timeout=30)
    assert sio_single.ends[new_runs[0][0]][0]["status"] == "succeeded"
    for sio in (sio_batched, sio_single):
        await sio.close()

    # Each process said it once, clearly; the worker said which run it stopped; no tracebacks.
    for name, proc in procs.items():
        out = proc.output()
        assert out.count(LOSS_LINE) == 1, f"{name}: {out.count(LOSS_LINE)} loss lines\n{out[-3000:]}"
        assert "appendonly yes" in out
        assert "Traceback" not in out, f"{name}:\n{out[-3000:]}"
    assert f"run {run_id} stopped (log_lost)" in worker.output()


async def test_a_durable_restart_is_not_a_loss():
    """Redis restarted from its AOF still holds the epoch: nobody cries loss, the run goes on."""
    with redis_topology(["api1"], ["w1"], ENV) as (redis, procs):
        run_id = start_run(procs["api1"], QUESTION)
        watcher = asyncio.create_task(read_sse(f"{procs['api1'].url}/runs/{run_id}/events", timeout=90))
        await wait_progress(procs["api1"].url, run_id, 1)
        await asyncio.to_thread(redis.restart, 1.0)
        events, done = await asyncio.wait_for(watcher, 90)
        assert done and events[-1]["data"]["state"] == "succeeded"
        assert_exact(events)
        for name, proc in procs.items():
            assert LOSS_LINE not in proc.output(), f"{name} took a durable restart for a loss"
