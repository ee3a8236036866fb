"""Many processes, one Redis: API processes, worker processes, and the faults between them."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
import redis as redis_sync

from server import redis_keys
from tests.integration.test_socketio import Watcher
from tests.support import ServerProcess, redis_topology, wait_workers

QUESTION = {"question": "When was the Eiffel Tower built and how tall is it?"}


async def read_sse(url: str, *, after: int | None = None, stop_after: int | None = None,
                   timeout: float = 60) -> tuple[list[dict], bool]:
    """Read an SSE stream; returns (events, reached_terminal). Stops early after stop_after events."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=timeout) as client:
        async with client.stream("GET", url, headers=headers) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                ev = json.loads(line[5:])
                if "seq" not in ev:
                    continue
                events.append(ev)
                if ev["ns"] == "STATUS" and ev["data"]["state"] in ("succeeded", "failed", "cancelled"):
                    return events, True
                if stop_after is not None and len(events) >= stop_after:
                    return events, False
    return events, False


async def read_with_reconnects(urls: list[str], *, drop_every: tuple[int, int] = (5, 40)) -> list[dict]:
    """Read to the end, dropping the connection at random and resuming through a random API."""
    got: list[dict] = []
    last: int | None = None
    for _ in range(200):
        url = random.choice(urls)
        try:
            part, done = await read_sse(url, after=last, stop_after=random.randint(*drop_every))
        except (httpx.TransportError, httpx.RemoteProtocolError):
            await asyncio.sleep(0.2)
            continue
        got += part
        if part:
            last = part[-1]["seq"]
        if done:
            return got
    raise AssertionError("stream never reached its terminal event")


def assert_exact(events: list[dict]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "missing, duplicate or out-of-order events"
    assert sum(e["ns"] == "STATUS" and e["data"]["state"] in ("succeeded", "failed", "cancelled")
               for e in events) == 1


@pytest.fixture
def topology():
    """One durable redis-server, two API processes (no workers) and two worker processes."""
    env = {
        "THOUGHTSTREAM_WORKER_LEASE_S": "2",
        "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "60",
        "THOUGHTSTREAM_REDIS_OUTAGE_S": "15",
    }
    with redis_topology(["api1", "api2"], ["w1", "w2"], env) as (redis, procs):
        yield redis, procs


def start_run(api: ServerProcess, input: dict = QUESTION) -> str:
    resp = httpx.post(api.url + "/runs", json={"agent": "reflective", "input": input}, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


async def test_run_started_on_one_api_is_watched_complete_through_the_other(topology):
    """A run submitted to API 1 and executed by a worker streams complete, in order, via API 2."""
    redis, procs = topology
    api1, api2 = procs["api1"], procs["api2"]
    run_id = start_run(api1)
    url2 = f"{api2.url}/runs/{run_id}/events"
    results = await asyncio.gather(*(read_sse(url2) for _ in range(30)))
    full, _ = await read_sse(f"{api1.url}/runs/{run_id}/events")
    assert_exact(full)
    assert {"THOUGHT", "TOOL_USE", "CRITIC_EVAL", "RESULT"} <= {e["ns"] for e in full}
    for events, done in results:
        assert done and events == full
    snap = httpx.get(f"{api2.url}/runs/{run_id}").json()
    assert snap["status"] == "succeeded" and snap["worker"]


async def test_one_pubsub_connection_per_api_process_not_per_client(topology):
    """Fan-out to many clients costs each API process one pub/sub connection."""
    redis, procs = topology
    api1, api2 = procs["api1"], procs["api2"]
    run_id = start_run(api1, {"question": "What is Redis Streams?", "max_rounds": 3})
    readers = [asyncio.create_task(read_sse(f"{(api1 if i % 2 else api2).url}/runs/{run_id}/events"))
               for i in range(60)]
    await asyncio.sleep(1.0)
    clients = redis_sync.Redis(port=redis.port).client_list()
    subscribers = [c for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]
    # Two API processes and two workers each hold exactly one pub/sub connection.
    assert len(subscribers) == 4, subscribers
    for events, done in await asyncio.gather(*readers):
        assert done
        assert_exact(events)


async def test_cancel_sent_to_the_other_api_stops_the_run(topology):
    """Cancel reaches the worker that owns the run, whichever API process receives it."""
    redis, procs = topology
    run_id = start_run(procs["api1"], {"question": "What is the capital of Australia?"})
    watcher = asyncio.create_task(read_sse(f"{procs['api1'].url}/runs/{run_id}/events"))
    deadline = time.monotonic() + 10
    while httpx.get(f"{procs['api2'].url}/runs/{run_id}").json()["status"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    resp = httpx.post(f"{procs['api2'].url}/runs/{run_id}/cancel", timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    events, done = await asyncio.wait_for(watcher, 10)
    assert done and events[-1]["data"]["state"] == "cancelled"
    assert_exact(events)


async def test_reconnect_through_the_other_api_resumes_exactly(topology):
    """Dropping mid-stream and resuming with Last-Event-ID on either API: each event exactly once."""
    redis, procs = topology
    urls_for = lambda rid: [f"{procs[a].url}/runs/{rid}/events" for a in ("api1", "api2")]  # noqa: E731
    runs = [start_run(procs["api1" if i % 2 else "api2"]) for i in range(4)]
    streams = await asyncio.gather(*(read_with_reconnects(urls_for(r)) for r in runs))
    for rid, events in zip(runs, streams):
        assert_exact(events)
        full, _ = await read_sse(urls_for(rid)[0])
        assert events == full


async def test_redis_restart_mid_stream_loses_nothing(topology):
    """Kill redis-server mid-stream and start it again: every client still sees every event once."""
    redis, procs = topology
    runs = [start_run(procs["api1"], {"question": "What is the capital of Australia?"}) for _ in range(2)]
    watchers = [asyncio.create_task(read_sse(f"{procs[api].url}/runs/{rid}/events", timeout=90))
                for rid in runs for api in ("api1", "api2") for _ in range(3)]
    await asyncio.sleep(2.0)  # every watcher is connected and streaming
    await asyncio.to_thread(redis.restart, 1.0)
    results = await asyncio.wait_for(asyncio.gather(*watchers), 90)
    for events, done in results:
        assert done, f"stream ended early after {len(events)} events"
        assert_exact(events)
        assert events[-1]["data"]["state"] == "succeeded"
    for rid in runs:
        full, _ = await read_sse(f"{procs['api2'].url}/runs/{rid}/events")
        assert [e for e, _ in results if e[0]["run_id"] == rid][0] == full
    assert httpx.get(procs["api1"].url + "/readyz").status_code == 200


async def test_readyz_reports_redis_down(topology):
    """While Redis is away, /readyz says so; when it is back, ready again."""
    redis, procs = topology
    redis.kill()
    resp = httpx.get(procs["api1"].url + "/readyz", timeout=10)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_ready"
    redis.start()
    deadline = time.monotonic() + 10
    while httpx.get(procs["api1"].url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


def fold(events: list[dict]) -> list[dict]:
    """Apply contract item 7: drop what a failed attempt emitted after rewind_to."""
    out: list[dict] = []
    for e in events:
        if e["ns"] == "STATUS" and e["data"]["state"] == "resumed":
            out = [x for x in out if x["seq"] <= e["data"]["rewind_to"]]
            continue
        out.append(e)
    return out


def comparable(events: list[dict]) -> list[tuple]:
    """Events without what legitimately differs between two runs: seq, ts, timings, ids."""
    rows = []
    for e in events:
        data = {k: v for k, v in e["data"].items() if k not in ("duration_s", "duration_ms")}
        rows.append((e["ns"], e["agent"], json.dumps(data, sort_keys=True)))
    return rows


async def wait_running_owner(procs: dict, run_id: str) -> tuple[dict, ServerProcess]:
    deadline = time.monotonic() + 10
    while True:
        snap = httpx.get(f"{procs['api1'].url}/runs/{run_id}").json()
        if snap.get("worker") and snap["status"] == "running":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    owner = next(p for k, p in procs.items() if k.startswith("w") and f"-{p.proc.pid}-" in snap["worker"])
    return snap, owner


async def test_killed_worker_run_resumes_on_another_worker(topology):
    """kill -9 the worker mid-run: another resumes it from its checkpoint; folded, the stream
    equals that of a run that never crashed, and no checkpointed step runs twice."""
    redis, procs = topology
    question = {"question": "When was the Eiffel Tower built and how tall is it?"}
    clean_id = start_run(procs["api1"], question)
    clean, _ = await read_sse(f"{procs['api1'].url}/runs/{clean_id}/events", timeout=60)
    run_id = start_run(procs["api1"], question)
    watchers = [asyncio.create_task(read_sse(f"{procs[a].url}/runs/{run_id}/events", timeout=60))
                for a in ("api1", "api2")]
    # And a Socket.IO client on API 2, with batched delivery, as the viewer subscribes.
    sio = await Watcher(procs["api2"].url).connect()
    await sio.subscribe(run_id, batch=True)
    # Let it get past a few checkpoints (planner and tools), then kill its worker mid-step.
    snap, owner = await wait_running_owner(procs, run_id)
    deadline = time.monotonic() + 10
    while httpx.get(f"{procs['api1'].url}/runs/{run_id}").json().get("progress", {}).get("step", -1) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    killed_at = time.monotonic()
    owner.kill()
    results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
    await sio.wait_end(run_id, timeout=30)
    await sio.close()
    assert len(sio.ends[run_id]) == 1 and sio.ends[run_id][0]["status"] == "succeeded"
    results.append((sio.events[run_id], True))
    resumed = None
    for events, done in results:
        assert done and events[-1]["data"]["state"] == "succeeded"
        assert_exact(events)
        marks = [e for e in events if e["data"].get("state") == "resumed"]
        assert len(marks) == 1 and marks[0]["data"]["attempt"] == 2
        resumed = marks[0]
        folded = fold(events)
        assert comparable(folded) == comparable(clean)
        steps = [e["data"]["step"] for e in folded if e["ns"] == "STEP"]
        assert steps == sorted(set(steps)), "a checkpointed step ran twice"
    took = resumed["ts"] - (time.time() - (time.monotonic() - killed_at))
    assert took < 2 + 5, f"resumed {took:.1f}s after the kill; lease is 2s"
    print(f"resumed {took:.2f}s after kill -9 (lease 2s)")


async def test_killed_worker_run_fails_when_attempts_are_used_up(topology):
    """With max_attempts=1 a run whose worker dies ends failed with a clear error, within the lease."""
    redis, procs = topology
    for name in ("w1", "w2"):
        procs[name].stop()
    env = {**procs["w1"].env, "THOUGHTSTREAM_MAX_ATTEMPTS": "1"}
    before = len(redis_sync.Redis(port=redis.port).xinfo_consumers(redis_keys.queue("ts"), "workers"))
    procs["w1"] = ServerProcess(command="worker", env=env).start()
    procs["w2"] = ServerProcess(command="worker", env=env).start()
    await asyncio.to_thread(wait_workers, redis, before + 2)
    run_id = start_run(procs["api1"], {"question": "What is the capital of Australia?"})
    watcher = asyncio.create_task(read_sse(f"{procs['api2'].url}/runs/{run_id}/events", timeout=60))
    _, owner = await wait_running_owner(procs, run_id)
    killed_at = time.monotonic()
    owner.kill()
    events, done = await asyncio.wait_for(watcher, 30)
    took = time.monotonic() - killed_at
    assert done and events[-1]["data"]["state"] == "failed"
    assert events[-2]["ns"] == "ERROR" and events[-2]["data"]["code"] == "worker_lost"
    assert "stopped heartbeating" in events[-2]["data"]["message"]
    assert "1 attempts" in events[-2]["data"]["message"]
    assert_exact(events)
    assert took < 2 + 5, f"noticed after {took:.1f}s; lease is 2s"


async def test_redis_away_past_the_outage_allowance_then_back(topology):
    """Redis down longer than the outage setting: the run stops without blocking anything,
    and once Redis is back it is resumed (not lost), ending with one terminal event."""
    redis, procs = topology
    for name in ("w1", "w2"):
        procs[name].stop()
    env = {**procs["w1"].env, "THOUGHTSTREAM_REDIS_OUTAGE_S": "1"}
    before = len(redis_sync.Redis(port=redis.port).xinfo_consumers(redis_keys.queue("ts"), "workers"))
    procs["w1"] = ServerProcess(command="worker", env=env).start()
    await asyncio.to_thread(wait_workers, redis, before + 1)
    run_id = start_run(procs["api1"], {"question": "What is the capital of Australia?"})
    await wait_running_owner(procs, run_id)
    await asyncio.to_thread(redis.restart, 3.0)  # three times the allowance
    events, done = await read_sse(f"{procs['api2'].url}/runs/{run_id}/events", timeout=60)
    assert done
    assert_exact(events)
    assert events[-1]["data"]["state"] in ("succeeded", "failed")
    if events[-1]["data"]["state"] == "succeeded":
        assert any(e["data"].get("state") == "resumed" for e in events)


async def test_a_retried_batch_is_applied_once(redis_server) -> None:
    """The append script takes a batch whose reply was lost again (same writer, same token)
    as done: the same seqs come back, nothing is logged twice - even when another writer
    appended in between."""
    import uuid as _uuid

    from server.backends import redis_connection
    from server.bus.redis import RedisBus

    prefix = f"t{_uuid.uuid4().hex[:8]}"
    async with redis_connection(redis_server.url, outage_s=5.0) as ops, RedisBus(
            ops, prefix=prefix, max_events=1000, ttl_s=60, subscriber_buffer=64) as bus, RedisBus(
            ops, prefix=prefix, max_events=1000, ttl_s=60, subscriber_buffer=64) as elsewhere:
        run = _uuid.uuid4().hex
        heads = [b'{"run_id":"%s","ns":"THOUGHT","agent":"a","data":{"i":%d},"ts":1.0,"seq":' % (run.encode(), i)
                 for i in range(3)]
        first = await bus._write_batch(run, heads, False, "tok-1")
        other = await elsewhere.append(run, "THOUGHT", "b", {"other": True})  # another process's
        again = await bus._write_batch(run, heads, False, "tok-1")
        assert (first, again, other.seq) == (1, 1, 4)
        events = await bus.read(run, 0)
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert [e.data for e in events] == [{"i": 0}, {"i": 1}, {"i": 2}, {"other": True}]
