"""Issue 13 across processes: two API processes (``--workers 0``) and a worker, one Redis.

Runs execute on the worker; clients talk to API 1 and API 2. Who watches is known to every
process (presence in Redis), so "the watcher on API 1 disconnected, the run ended on the
worker, the next subscriber on API 2 gets the INBOX" is the whole deployment's empty room.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
import socketio
from httpx_sse import aconnect_sse
from langgraph_sdk import get_client

from tests.support import ServerProcess, redis_topology

from .test_gate import (
    AGENTS,
    T,
    check_verdict,
    context_log,
    ctx,
    ctx_stream,
    error_code,
    finished,
    get_context,
    inbox_of,
    one_verdict,
    put_version,
    run_log,
    running,
    snap,
    submit,
    ticks,
    uid,
    verdicts_of,
    wait_until,
)


@pytest.fixture(scope="module")
def deployment() -> Iterator[tuple[Any, dict[str, ServerProcess]]]:
    env = {
        "THOUGHTSTREAM_AGENTS": json.dumps([f"{k}={v}" for k, v in AGENTS.items()]),
        "THOUGHTSTREAM_SSE_PING_S": "0.5",
        "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "32",
        "THOUGHTSTREAM_SOCKETIO_PING_INTERVAL_S": "2",
    }
    with redis_topology(["api1", "api2"], ["w1"], env, durable=False) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def topo(deployment: tuple[Any, dict[str, ServerProcess]]) -> dict[str, ServerProcess]:
    return deployment[1]


async def presence_members(redis_url: str) -> dict[str, int]:
    """Every presence room in Redis with its member count (expired or not)."""
    from redis.asyncio import Redis

    r = Redis.from_url(redis_url)
    try:
        return {k.decode(): int(await r.zcard(k)) async for k in r.scan_iter(match="*:presence:*")}
    finally:
        await r.aclose()


@pytest.fixture
async def c1(topo: dict[str, ServerProcess]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=topo["api1"].url, timeout=T) as c:
        yield c


@pytest.fixture
async def c2(topo: dict[str, ServerProcess]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=topo["api2"].url, timeout=T) as c:
        yield c


# ============================================================================= the empty room across processes


async def leave_mid_run(c1: httpx.AsyncClient, key: str, rid: str, watch: str) -> None:
    """Watch on API 1 (the context's stream, the run's, or both, as a page does) until the
    run is executing on the worker, then disconnect."""
    async def run_stream() -> None:
        async with asyncio.timeout(T):
            async with aconnect_sse(c1, "GET", f"/runs/{rid}/events") as src:
                async for sse in src.aiter_sse():
                    if sse.event == "TICK":
                        break

    if watch == "context":
        async with ctx_stream(c1, key):
            await running(c1, rid)
    elif watch == "run":
        await run_stream()
    elif watch == "socketio":
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(str(c1.base_url).rstrip("/"), transports=["websocket"], wait_timeout=5)
        try:
            assert (await sio.call("subscribe_context", {"key": key}, timeout=10))["ok"] is True
            assert (await sio.call("subscribe", {"run_id": rid}, timeout=10))["ok"] is True
            await running(c1, rid)
        finally:
            await sio.disconnect()
    else:
        async with ctx_stream(c1, key):
            await run_stream()
    assert (await snap(c1, rid))["status"] == "running"


@pytest.mark.parametrize("watch", ["context", "run", "both", "socketio"])
async def test_a_watcher_that_disconnects_leaves_its_rooms_at_once(
        deployment: tuple[Any, dict[str, ServerProcess]], c1: httpx.AsyncClient, watch: str) -> None:
    """Presence is gone as soon as the client is (not at its 30 s expiry), whichever way the
    stream's clean-up runs: sse-starlette cancels the context stream's body at every await."""
    for _ in range(3):
        key = uid()
        rid = await submit(c1, "ticker", ticks(40, 0.05), ctx(key, "v1"))
        await leave_mid_run(c1, key, rid, watch)
        async def empty() -> bool:
            return not any((await presence_members(deployment[0].url)).values())

        await wait_until(empty, "every presence room empty after the watcher left", timeout=10)  # its expiry: 30 s
        await finished(c1, rid)


@pytest.mark.parametrize("watch", ["context", "run", "both", "socketio"])
async def test_watcher_on_api1_left_run_ends_on_worker_next_subscriber_on_api2_gets_inbox(
        c1: httpx.AsyncClient, c2: httpx.AsyncClient, watch: str) -> None:
    key = uid()
    rid = await submit(c1, "ticker", ticks(15, 0.1), ctx(key, "v1"))
    await leave_mid_run(c1, key, rid, watch)
    s = await finished(c2, rid)
    assert s["worker"] is not None  # it ran on the worker
    # The worker writes the VERDICT after the run's terminal STATUS (which ended the wait above).
    verdicts = [e["data"] for e in await verdicts_of(c2, key, [rid])]
    assert len(verdicts) == 1 and verdicts[0]["unwatched"] is True, (
        f"the run ended {s['ended_at'] - s['started_at']:.1f} s after it started, long after API 1's "
        f"watcher ({watch}) disconnected, yet its VERDICT says unwatched={verdicts[0].get('unwatched')}")
    [entry] = await inbox_of(c2, key, 1)
    assert entry == {"run_id": rid, "status": "succeeded", "verdict": s["verdict"],
                     "ended_at": s["ended_at"], "held": False}
    async with ctx_stream(c2, key) as sub:
        assert sub.frames[0][0] == "INBOX" and sub.frames[0][2] == {"key": key, "entries": [entry]}
        # then live events from the worker, through API 2, with ids
        live = await submit(c1, "ticker", ticks(2, 0.05), ctx(key, "v1"))
        [started] = await sub.wait_for("RUN_STARTED", live)
        [verdict] = await sub.wait_for("VERDICT", live)
        assert started["data"] == {"key": key, "run_id": live, "version": "v1"}
        assert verdict["data"]["verdict"] == (await finished(c2, live))["verdict"]
        assert started["seq"] < verdict["seq"]
        await asyncio.sleep(0.3)
        assert [e["run_id"] for e in (await get_context(c1, key))["inbox"]] == [rid]  # watched on API 2
    # The same INBOX over Socket.IO on API 2, then ack on API 1 empties it for everyone.
    got: list[Any] = []
    sio = socketio.AsyncClient(reconnection=False)
    sio.on("event", lambda ev: got.append(ev))
    await sio.connect(str(c2.base_url).rstrip("/"), transports=["websocket"], wait_timeout=5)
    try:
        ack = await sio.call("subscribe_context", {"key": key}, timeout=10)
        assert ack["ok"] is True, ack
        await wait_until(lambda: asyncio.sleep(0, got), "INBOX over socket.io", timeout=10)
        assert got[0] == {"ns": "INBOX", "key": key, "data": {"key": key, "entries": [entry]}}
    finally:
        await sio.disconnect()
    r = await c1.post(f"/contexts/{key}/inbox/ack", json={})
    assert r.status_code == 200 and r.json()["inbox"] == []
    assert (await get_context(c2, key))["inbox"] == []


async def test_a_context_watched_on_api1_keeps_endings_out_of_the_inbox(
        c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    key = uid()
    await put_version(c2, key, "v1")
    async with ctx_stream(c1, key) as watcher:
        rid = await submit(c2, "ticker", ticks(3, 0.05), ctx(key, "v1"))
        [verdict] = await watcher.wait_for("VERDICT", rid)
        assert verdict["data"]["verdict"] == (await finished(c2, rid))["verdict"]
        assert verdict["data"].get("unwatched", False) is False
        await asyncio.sleep(0.3)
        assert (await get_context(c2, key))["inbox"] == []
    async with ctx_stream(c2, key) as sub:
        assert sub.frames[0][2] == {"key": key, "entries": []}


async def test_a_run_watched_on_api2_is_not_in_the_inbox(c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    """An SSE subscriber of the run on API 2, open when the run ends on the worker (x5)."""
    key = uid()
    unwatched = []
    for _ in range(5):
        # Half a second: the stream on API 2 opens while the run is still going, even on a loaded machine.
        rid = await submit(c1, "ticker", ticks(5, 0.1), ctx(key, "v1"))
        log = await run_log(c2, rid)
        assert log[-1]["data"]["state"] == "succeeded"
        await verdicts_of(c1, key, [rid])  # written after its ending's inbox decision
        if [e for e in (await get_context(c1, key))["inbox"] if e["run_id"] == rid]:
            unwatched.append(rid)
    assert unwatched == [], f"{len(unwatched)} of 5 runs watched on API 2 went to the inbox"


async def test_the_context_log_is_one_log_on_every_process(c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    key = uid()
    rid = await submit(c1, "ticker", ticks(4, 0.1), ctx(key, "v1"))
    await running(c2, rid)
    await put_version(c2, key, "v2")
    await finished(c1, rid)
    await verdicts_of(c2, key, [rid])  # the worker writes it after the run's terminal STATUS
    one, two = await context_log(c1, key), await context_log(c2, key)
    assert one == two
    assert [e["ns"] for e in one] == ["RUN_STARTED", "VERSION", "VERDICT"]


# ============================================================================= verdicts across processes


async def test_stale_and_superseded_across_processes(c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    key = uid()
    rid = await submit(c1, "ticker", ticks(5, 0.1), ctx(key, "rev-17"))
    await running(c1, rid)
    await put_version(c2, key, "rev-18")
    check_verdict(await one_verdict(c2, rid, key), "stale", key, "rev-17", "rev-18")
    key2 = uid()
    a = await submit(c1, "ticker", ticks(5, 0.1), ctx(key2, "v1"))
    await running(c1, a)
    b = await submit(c2, "ticker", ticks(7, 0.1), ctx(key2, "v1"))
    check_verdict(await one_verdict(c1, a, key2), "superseded", key2, "v1", "v1", superseded_by=b)
    check_verdict(await one_verdict(c2, b, key2), "fresh", key2, "v1", "v1")


async def test_race_put_on_api2_as_the_run_ends_on_the_worker(c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    """20 runs: the PUT goes to API 2 at the moment the worker ends the run; one verdict each."""
    tag = uuid.uuid4().hex[:6]

    async def one(i: int) -> tuple[str, str]:
        key = f"xrace-{tag}-{i}"
        rid = await submit(c1, "ticker", ticks(3, 0.03), ctx(key, "v1"))
        jitter = random.Random(i).uniform(0.0, 0.06)
        put: asyncio.Task[httpx.Response] | None = None

        async def move() -> httpx.Response:
            await asyncio.sleep(jitter)
            return await c2.put(f"/contexts/{key}", json={"version": "v2"})

        async with asyncio.timeout(T):
            async with aconnect_sse(c1, "GET", f"/runs/{rid}/events") as src:
                async for sse in src.aiter_sse():
                    if sse.data and sse.event == "TICK" and json.loads(sse.data)["data"]["index"] == 2:
                        put = asyncio.create_task(move())
        assert put is not None and (await put).status_code == 200
        return key, rid

    states: dict[str, int] = {}
    for key, rid in await asyncio.gather(*(one(i) for i in range(20))):
        v = await one_verdict(c2, rid, key)
        assert v["state"] in ("fresh", "stale") and v["current_version"] == {"fresh": "v1", "stale": "v2"}[v["state"]]
        states[v["state"]] = states.get(v["state"], 0) + 1
    print(f"cross-process race: {states}")


# ============================================================================= hold + deliver across processes


async def test_held_on_the_worker_delivered_on_api2_announced_on_api1(c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    key = uid()
    rid = await submit(c1, "ticker", ticks(4, 0.1), ctx(key, "v1", on_stale="hold"))
    await running(c1, rid)
    await put_version(c2, key, "v2")
    v = await one_verdict(c1, rid, key, held=True)
    async with ctx_stream(c1, key) as watcher:
        r = await c2.post(f"/runs/{rid}/deliver")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body == {"run_id": rid, "output": {"count": 4, "interval_s": 0.1, "ticks": 4},
                        "verdict": v, "delivered_anyway": True}
        [event] = await watcher.wait_for("RESULT", rid)
        assert event["data"] == {"key": key, **body}
    again = await c1.post(f"/runs/{rid}/deliver")
    assert again.status_code == 409 and error_code(again) == "already_delivered", again.text
    assert (await snap(c1, rid))["delivery"]["delivered_at"] is not None


async def test_deliver_at_once_on_both_processes_delivers_once(c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    key = uid()
    rid = await submit(c1, "ticker", ticks(4, 0.1), ctx(key, "v1", on_stale="hold"))
    await running(c1, rid)
    await put_version(c1, key, "v2")
    await one_verdict(c1, rid, key, held=True)
    got = await asyncio.gather(*(cl.post(f"/runs/{rid}/deliver") for cl in (c1, c2) * 4))
    codes = sorted(r.status_code for r in got)
    results = [e for e in await context_log(c2, key) if e["ns"] == "RESULT"]
    assert (codes, len(results)) == ([200] + [409] * 7, 1), f"8 delivers at once: {codes}, {len(results)} RESULT events"


async def test_thread_run_held_on_the_worker_delivered_through_api2(topo: dict[str, ServerProcess],
                                                                     c1: httpx.AsyncClient, c2: httpx.AsyncClient) -> None:
    lg1 = get_client(url=topo["api1"].url, api_key=None, timeout=httpx.Timeout(T, connect=5.0))
    lg2 = get_client(url=topo["api2"].url, api_key=None, timeout=httpx.Timeout(T, connect=5.0))
    try:
        tid = (await lg1.threads.create())["thread_id"]
        await asyncio.wait_for(lg1.runs.wait(tid, "slow", input={"steps": 1}), T)
        state0 = await lg2.threads.get_state(tid)
        head0 = state0["checkpoint"]["checkpoint_id"]
        run = await lg1.runs.create(tid, "slow", input={"steps": 3, "delay": 0.2}, metadata={"on_stale": "hold"})
        await running(c1, run["run_id"])
        await put_version(c2, tid, "edited-on-api2")
        s = await finished(c2, run["run_id"])
        check_verdict(s["verdict"], "stale", tid, head0, "edited-on-api2")
        assert s["delivery"] == {"held": True, "delivered_at": None}
        for lg in (lg1, lg2):
            state = await lg.threads.get_state(tid)
            assert state["values"] == state0["values"] and state["checkpoint"]["checkpoint_id"] == head0
        r = await c2.post(f"/runs/{run['run_id']}/deliver")
        assert r.status_code == 200, r.text
        for lg in (lg1, lg2):
            assert (await lg.threads.get_state(tid))["values"] == {"steps": 3, "delay": 0.2, "goal": 4,
                                                                   "done": [0, 1, 2, 3]}
    finally:
        await lg1.aclose()
        await lg2.aclose()
