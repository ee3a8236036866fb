"""Socket.IO transport against real server processes, with the python-socketio client.

Every test checks what a browser relies on: per run, the events a socket receives are
exactly the suffix of the run's log after its cursor (compared with the log read over
SSE from the start), each once, in order, followed by one ``run_end``.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import httpx
import pytest
import socketio
import websockets
from engineio.payload import Payload
from websockets.asyncio.client import connect as ws_connect

from tests.support import ServerProcess

# A long-polling response carries every packet queued since the last poll; the Python
# engine.io client refuses more than 16 per response unless told otherwise (browsers don't).
Payload.max_decode_packets = 100_000

TERMINAL = {"succeeded", "failed", "cancelled"}
AGENTS = {
    "ticker": "tests/integration/graphs.py:ticker",
    "bulk": "tests/fixtures/bulk_graph.py:bulk",
}
STRICT_ORIGIN = "https://app.example.com"
LOG_MAX = 2000
# A long-poll GET of a client that left is answered at the next ping; at 2 s, a server
# stops within its graceful-shutdown time instead of waiting for it.
QUICK_PINGS = {"THOUGHTSTREAM_SOCKETIO_PING_INTERVAL_S": "2"}


def agent_flags() -> list[str]:
    return [f for name, spec in AGENTS.items() for f in ("--agent", f"{name}={spec}")]


def start_all(*servers: ServerProcess) -> None:
    """Start servers in parallel (each takes a second or two to import and bind)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        for fut in [pool.submit(s.start) for s in servers]:
            fut.result()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServerProcess]]:
    """main: defaults. strict: one allowed origin, a tiny socket queue and a short send
    timeout (slow sockets), logs of at most 2000 events (cursor expiry)."""
    made = {
        "main": ServerProcess(*agent_flags(), env={**QUICK_PINGS, "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "32"}),
        "strict": ServerProcess(*agent_flags(), env={**QUICK_PINGS,
            "THOUGHTSTREAM_ALLOWED_ORIGINS": STRICT_ORIGIN,
            "THOUGHTSTREAM_SOCKETIO_QUEUE_LIMIT": "64",
            "THOUGHTSTREAM_SOCKETIO_SEND_TIMEOUT_S": "5",
            "THOUGHTSTREAM_LOG_MAX_EVENTS": str(LOG_MAX),
            "THOUGHTSTREAM_LOG_LEVEL": "info",
        }),
    }
    try:
        start_all(*made.values())
        yield made
    finally:
        for s in made.values():
            s.stop()


@pytest.fixture
def main(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["main"]


# --------------------------------------------------------------------------- helpers


async def post_run(base: str, agent: str, input: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.post("/runs", json={"agent": agent, "input": input})
        assert r.status_code == 202, r.text
        return r.json()["run_id"]


async def snapshot(base: str, run_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get(f"/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()


async def wait_seq(base: str, run_id: str, at_least: int, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = (await snapshot(base, run_id))["last_seq"] or 0
        if last >= at_least:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not reach seq {at_least}")


async def sse_log(base: str, run_id: str, timeout: float = 20) -> list[dict[str, Any]]:
    """The whole log over SSE from the first event (waits for the run to end)."""
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        async with http.stream("GET", f"/runs/{run_id}/events") as resp:
            assert resp.status_code == 200
            async with asyncio.timeout(timeout):
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        ev = json.loads(line[6:])
                        if "seq" in ev:
                            events.append(ev)
    assert events and events[-1]["ns"] == "STATUS" and events[-1]["data"]["state"] in TERMINAL
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


class Watcher:
    """One python-socketio connection that records what it receives, per run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.ends: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.resets: list[dict[str, Any]] = []
        self.stream: list[tuple[str, Any]] = []  # everything, in arrival order
        self.sio.on("event", self._on_event)
        self.sio.on("run_end", self._on_end)
        self.sio.on("reset", self._on_reset)
        self.sio.on("events", self._on_events)

    def _on_events(self, evs: list[dict[str, Any]]) -> None:
        self.stream.append(("events", len(evs)))
        for ev in evs:
            self.events[ev["run_id"]].append(ev)

    def _on_event(self, ev: dict[str, Any]) -> None:
        self.stream.append(("event", ev))
        self.events[ev["run_id"]].append(ev)

    def _on_end(self, body: dict[str, Any]) -> None:
        self.stream.append(("run_end", body))
        self.ends[body["run_id"]].append(body)

    def _on_reset(self, body: dict[str, Any]) -> None:
        self.stream.append(("reset", body))
        self.resets.append(body)

    async def connect(self, transports: tuple[str, ...] = ("websocket",), **kw: Any) -> Watcher:
        await self.sio.connect(self.url, transports=list(transports), wait_timeout=5, **kw)
        return self

    async def call(self, event: str, payload: Any) -> Any:
        return await self.sio.call(event, (payload,), timeout=10)

    async def subscribe(self, run_id: str, after: int | None = None, *, expect_ok: bool = True,
                        batch: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"run_id": run_id, **({"batch": True} if batch else {})}
        if after is not None:
            body["after"] = after
        ack = await self.sio.call("subscribe", body, timeout=10)
        if expect_ok:
            assert ack["ok"] is True, ack
        return ack

    async def wait_end(self, *run_ids: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.ends[r] for r in run_ids):
            if time.monotonic() > deadline:
                missing = [r for r in run_ids if not self.ends[r]]
                raise AssertionError(f"no run_end for {missing} after {timeout}s")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await hang_up(self.sio)


async def hang_up(sio: socketio.AsyncClient, abort: bool = False) -> None:
    """Disconnect. A polling client's clean disconnect waits for its pending long-poll GET,
    which the server answers only at the next ping (25 s), so polling clients just leave."""
    if not sio.connected:
        return
    if abort or sio.transport() == "polling":
        await sio.eio.disconnect(abort=True)
    else:
        await sio.disconnect()


def check_suffix(got: list[dict[str, Any]], log: list[dict[str, Any]], after: int) -> None:
    """``got`` is exactly the log after seq ``after``: every event once, in order, equal."""
    seqs = [e["seq"] for e in got]
    assert seqs == list(range(after + 1, len(log) + 1)), f"after={after}: got seqs {seqs[:10]}...{seqs[-10:]}"
    assert got == log[after:]


# --------------------------------------------------------------------------- tests


async def test_subscribe_mid_run_from_many_cursors(main: ServerProcess) -> None:
    """Sockets join a live run over and over, from 0, from random cursors and from the
    live edge (even a cursor the process's feed has not reached yet): exact suffixes."""
    run = await post_run(main.url, "ticker", {"count": 250, "interval_s": 0.006})
    ref = await Watcher(main.url).connect()
    await ref.subscribe(run, 0)
    rng = random.Random(4)
    await wait_seq(main.url, run, 5)

    async def join(delay: float) -> tuple[Watcher, int] | None:
        await asyncio.sleep(delay)
        if ref.ends[run]:
            return None
        seen = ref.events[run][-1]["seq"] if ref.events[run] else 0
        kind = rng.random()
        if kind < 0.3:  # the log's end right now: often ahead of what the feed has handed out
            after = (await snapshot(main.url, run))["last_seq"]
        else:
            after = rng.choice([0, 1, seen, seen, max(0, seen - 1), rng.randint(0, seen)])
        w = await Watcher(main.url).connect()
        ack = await w.subscribe(run, after)
        assert ack["run"]["run_id"] == run
        return w, after

    joined = [j for j in await asyncio.gather(*(join(i * 0.025 + rng.uniform(0, 0.02)) for i in range(50)))
              if j is not None]
    await ref.wait_end(run)
    log = await sse_log(main.url, run)
    check_suffix(ref.events[run], log, 0)
    for w, after in joined:
        await w.wait_end(run)
        check_suffix(w.events[run], log, after)
        assert w.ends[run] == [{"run_id": run, "status": "succeeded"}]
        await w.close()
    assert len(joined) >= 10
    assert sum(1 for _, a in joined if a > 0) >= 5

    # After the end of a (shorter) run, one socket resubscribes from every cursor, 0 through its last seq.
    short = await post_run(main.url, "ticker", {"count": 40, "interval_s": 0.0})
    log = await sse_log(main.url, short)
    for after in range(len(log) + 1):
        ref.events[short].clear()
        ref.ends[short].clear()
        await ref.subscribe(short, after)
        await ref.wait_end(short)
        check_suffix(ref.events[short], log, after)
        assert len(ref.ends[short]) == 1
    await ref.close()


async def test_no_cursor_means_from_the_start_and_ack_comes_first(main: ServerProcess) -> None:
    run = await post_run(main.url, "ticker", {"count": 30, "interval_s": 0.005})
    await wait_seq(main.url, run, 10)
    w = await Watcher(main.url).connect()
    acked = asyncio.Event()

    def on_ack(ack: Any) -> None:  # called in arrival order, like event handlers
        w.stream.append(("ack", ack))
        acked.set()

    await w.sio.emit("subscribe", {"run_id": run}, callback=on_ack)  # no "after"
    await asyncio.wait_for(acked.wait(), 10)
    kind, ack = w.stream[0]
    assert kind == "ack" and ack == {"ok": True, "run": ack["run"]}, w.stream[:3]
    assert ack["run"]["run_id"] == run and ack["run"]["status"] in {"running", "succeeded"}
    await w.wait_end(run)
    check_suffix(w.events[run], await sse_log(main.url, run), 0)
    assert w.stream[-1] == ("run_end", {"run_id": run, "status": "succeeded"})
    await w.close()


async def test_many_runs_on_one_socket(main: ServerProcess) -> None:
    runs = [await post_run(main.url, "ticker", {"count": 40 + 5 * i, "interval_s": 0.01}) for i in range(8)]
    w = await Watcher(main.url).connect()
    for r in runs:
        await w.subscribe(r, 0)
    await w.wait_end(*runs)
    for r in runs:
        check_suffix(w.events[r], await sse_log(main.url, r), 0)
        assert len(w.ends[r]) == 1
    # Events of different runs interleave on the socket; each run's run_end follows its last event.
    order = [(kind, body["run_id"], body.get("seq")) for kind, body in w.stream]
    for r in runs:
        mine = [o for o in order if o[1] == r]
        assert mine[-1][0] == "run_end" and all(k == "event" for k, _, _ in mine[:-1])
    assert len({rid for _, rid, _ in order[:len(order) // 2]}) > 1, "runs should interleave"
    await w.close()


async def test_chaos_reconnects_every_event_once_in_order(main: ServerProcess) -> None:
    """Clients that drop at random (cleanly or not, WebSocket or polling) and resubscribe
    with their last seq end up with every event of 15 runs once, in order."""
    runs = [await post_run(main.url, "ticker", {"count": 60 + 7 * i, "interval_s": 0.012}) for i in range(15)]

    async def chaos_client(seed: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int], int]:
        rng = random.Random(seed)
        got: dict[str, list[dict[str, Any]]] = defaultdict(list)
        ends: dict[str, int] = defaultdict(int)
        violations = 0
        cycles = 0
        deadline = time.monotonic() + 30
        while any(ends[r] == 0 for r in runs):
            assert time.monotonic() < deadline, "chaos client did not finish"
            cycles += 1
            generation = object()
            current = [generation]
            sio = socketio.AsyncClient(reconnection=False)

            def on_event(ev: dict[str, Any], gen: object = generation) -> None:
                nonlocal violations
                if current[0] is not gen:
                    return  # this connection was abandoned; the client no longer listens
                mine = got[ev["run_id"]]
                if mine and ev["seq"] != mine[-1]["seq"] + 1 or not mine and ev["seq"] != 1:
                    violations += 1
                mine.append(ev)

            def on_end(body: dict[str, Any], gen: object = generation) -> None:
                if current[0] is gen:
                    ends[body["run_id"]] += 1

            sio.on("event", on_event)
            sio.on("run_end", on_end)
            transports = ["polling"] if rng.random() < 0.15 else ["websocket"]
            await sio.connect(main.url, transports=transports, wait_timeout=5)
            def on_events(evs: list[dict[str, Any]], gen: object = generation) -> None:
                for ev in evs:
                    on_event(ev, gen)

            sio.on("events", on_events)
            batch = rng.random() < 0.4  # some connections take lists of events
            pending = [r for r in runs if ends[r] == 0]
            acks = await asyncio.gather(*(
                sio.call("subscribe", {"run_id": r, "after": got[r][-1]["seq"] if got[r] else 0, "batch": batch},
                         timeout=10)
                for r in pending))
            assert all(a["ok"] for a in acks), acks
            await asyncio.sleep(rng.uniform(0.02, 0.25))
            current[0] = None  # stop listening, then drop the connection
            await hang_up(sio, abort=rng.random() < 0.5)
        return got, ends, violations

    results = await asyncio.gather(*(chaos_client(s) for s in range(3)))
    logs = {r: await sse_log(main.url, r) for r in runs}
    for got, ends, violations in results:
        assert violations == 0
        for r in runs:
            check_suffix(got[r], logs[r], 0)
            assert ends[r] == 1


async def test_batch_mode_sends_lists_of_events(main: ServerProcess) -> None:
    """``batch: true`` gets ``events`` messages (lists, at most 128 events each): the same
    events, once, in order, from any cursor, live or from history."""
    run = await post_run(main.url, "ticker", {"count": 160, "interval_s": 0.003})
    live = await Watcher(main.url).connect()
    await live.subscribe(run, 0, batch=True)
    await wait_seq(main.url, run, 40)
    mid = await Watcher(main.url).connect()
    await mid.subscribe(run, 20, batch=True)
    await live.wait_end(run)
    await mid.wait_end(run)
    log = await sse_log(main.url, run)
    check_suffix(live.events[run], log, 0)
    check_suffix(mid.events[run], log, 20)
    assert mid.stream[0][0] == "events" and mid.stream[0][1] > 1  # the catch-up came as lists
    assert all(kind in ("events", "run_end") for kind, _ in live.stream + mid.stream)
    after = await Watcher(main.url).connect()
    await after.subscribe(run, 0, batch=True)
    await after.wait_end(run)
    check_suffix(after.events[run], log, 0)
    sizes = [n for kind, n in after.stream if kind == "events"]
    # At most 128 per message; a catch-up of more arrives as several lists (the history is
    # read in pages, a small first one so the first events leave at once).
    assert len(log) > 128 and max(sizes) <= 128 and len(sizes) >= 2 and sum(sizes) == len(log)
    for w in (live, mid, after):
        await w.close()


async def test_unsubscribe_stops_delivery(main: ServerProcess) -> None:
    # a runs 3 s: still going when unsubscribed, even on a loaded machine (its end would be delivered).
    a = await post_run(main.url, "ticker", {"count": 300, "interval_s": 0.01})
    b = await post_run(main.url, "ticker", {"count": 80, "interval_s": 0.01})
    w = await Watcher(main.url).connect()
    await w.subscribe(a, 0)
    await w.subscribe(b, 0)
    while len(w.events[a]) < 10:
        await asyncio.sleep(0.01)
    ack = await w.call("unsubscribe", {"run_id": a})
    assert ack == {"ok": True, "run_id": a, "was_subscribed": True}
    held = len(w.events[a])  # everything of run a was queued before the ack
    await w.wait_end(b)
    await asyncio.sleep(0.2)
    assert len(w.events[a]) == held and not w.ends[a]
    check_suffix(w.events[b], await sse_log(main.url, b), 0)
    assert await w.call("unsubscribe", {"run_id": a}) == {"ok": True, "run_id": a, "was_subscribed": False}
    # Resubscribing from the last seq held completes run a with no gap.
    last = w.events[a][-1]["seq"]
    await w.subscribe(a, last)
    await w.wait_end(a)
    check_suffix(w.events[a], await sse_log(main.url, a), 0)
    await w.close()


async def test_unsubscribe_right_after_subscribe_is_ordered(main: ServerProcess) -> None:
    """Requests of one socket take effect in the order sent, even without awaiting acks."""
    # 3 s: still going when (un)subscribed, even on a loaded machine (an ended run's replay
    # would bring its run_end at once).
    run = await post_run(main.url, "ticker", {"count": 300, "interval_s": 0.01})
    w = await Watcher(main.url).connect()
    acks: list[Any] = []
    await w.sio.emit("subscribe", {"run_id": run, "after": 0}, callback=lambda *a: acks.append(a))
    await w.sio.emit("unsubscribe", {"run_id": run}, callback=lambda *a: acks.append(a))
    while len(acks) < 2:
        await asyncio.sleep(0.01)
    assert acks[0][0]["ok"] and acks[1][0] == {"ok": True, "run_id": run, "was_subscribed": True}
    held = len(w.events[run])
    await asyncio.sleep(0.6)
    assert len(w.events[run]) == held and not w.ends[run]
    await w.close()


async def test_start_run_and_cancel_run(main: ServerProcess) -> None:
    w = await Watcher(main.url).connect()
    ack = await w.call("start_run", {"agent": "ticker", "input": {"count": 1000, "interval_s": 0.01},
                                     "metadata": {"who": "test"}})
    assert ack["ok"] is True and ack["status"] == "queued" and ack["created"] is True, ack
    run = ack["run_id"]
    assert ack["room"] == f"run:{run}" and ack["events_url"] == f"/runs/{run}/events"
    await w.subscribe(run, 0)
    while len(w.events[run]) < 5:
        await asyncio.sleep(0.01)
    ack = await w.call("cancel_run", {"run_id": run})
    assert ack["ok"] is True and ack["run"]["status"] == "cancelled", ack
    await w.wait_end(run)
    assert w.ends[run] == [{"run_id": run, "status": "cancelled"}]
    check_suffix(w.events[run], await sse_log(main.url, run), 0)

    again = await w.call("cancel_run", {"run_id": run})
    assert again["ok"] is False and again["error"]["code"] == "conflict"
    assert (await w.call("cancel_run", {"run_id": "nope"}))["error"]["code"] == "not_found"
    unknown = await w.call("start_run", {"agent": "nope", "input": {}})
    assert unknown["error"]["code"] == "not_found" and "ticker" in unknown["error"]["agents"]
    bad_input = await w.call("start_run", {"agent": "ticker", "input": {"count": "many"}})
    assert bad_input["error"]["code"] == "invalid_input", bad_input
    for payload, fld in (({"input": {}}, "agent"), ({"agent": "ticker", "input": [], }, "input"),
                         ({"agent": "ticker", "input": {}, "extra": 1}, "extra")):
        err = await w.call("start_run", payload)
        assert err["error"]["code"] == "invalid_request" and err["error"]["field"] == fld, err
    assert (await w.call("start_run", "ticker"))["error"]["code"] == "bad_request"
    assert (await w.call("start_run", {"agent": "ticker", "input": {}, "idempotency_key": 5}
                         ))["error"]["code"] == "bad_idempotency_key"
    # The same idempotency key gives the same run.
    body = {"agent": "ticker", "input": {"count": 1, "interval_s": 0.0}, "idempotency_key": "k-" + run}
    first, second = await w.call("start_run", body), await w.call("start_run", body)
    assert first["ok"] and second["ok"] and first["run_id"] == second["run_id"] and second["created"] is False
    # A reflective run started over Socket.IO streams to the same socket.
    ack = await w.call("start_run", {"agent": "reflective", "input": {"question": "What is 6 * 7?"}})
    assert ack["ok"], ack
    await w.subscribe(ack["run_id"])
    await w.wait_end(ack["run_id"])
    check_suffix(w.events[ack["run_id"]], await sse_log(main.url, ack["run_id"]), 0)
    assert {e["ns"] for e in w.events[ack["run_id"]]} >= {"THOUGHT", "TOOL_USE", "CRITIC_EVAL", "STATUS"}
    await w.close()


async def test_bad_payloads_get_error_acks_and_the_connection_survives(main: ServerProcess) -> None:
    run = await post_run(main.url, "ticker", {"count": 3, "interval_s": 0.0})
    last = len(await sse_log(main.url, run))
    w = await Watcher(main.url).connect()
    cases: list[tuple[str, tuple[Any, ...], str]] = [
        ("subscribe", (), "bad_request"),
        ("subscribe", ("just a string",), "bad_request"),
        ("subscribe", ([run],), "bad_request"),
        ("subscribe", (42,), "bad_request"),
        ("subscribe", (None,), "bad_request"),
        ("subscribe", ({"run_id": run}, {"after": 0}), "bad_request"),
        ("subscribe", ({},), "bad_request"),
        ("subscribe", ({"after": 0},), "bad_request"),
        ("subscribe", ({"run_id": 5},), "bad_request"),
        ("subscribe", ({"run_id": ""},), "bad_request"),
        ("subscribe", ({"run_id": "x" * 5000},), "bad_request"),
        ("subscribe", ({"run_id": "no-such-run"},), "not_found"),
        ("subscribe", ({"run_id": run, "after": "abc"},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": -1},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": "-1"},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": 1.5},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": True},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": "\uff11"},), "bad_cursor"),  # fullwidth one
        ("subscribe", ({"run_id": run, "after": [1]},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": {"seq": 1}},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": 10**30},), "bad_cursor"),
        ("subscribe", ({"run_id": run, "after": last + 1},), "cursor_ahead"),
        ("subscribe", ({"run_id": run, "batch": "yes"},), "bad_request"),
        ("unsubscribe", (), "bad_request"),
        ("unsubscribe", ({"run_id": None},), "bad_request"),
        ("cancel_run", ({},), "bad_request"),
        ("cancel_run", ("x",), "bad_request"),
        ("start_run", (), "bad_request"),
        ("no_such_event", ({"run_id": run},), "unknown_event"),
        ("connect", (), "unknown_event"),
        ("connect", ({"x": 1},), "unknown_event"),
        ("disconnect", (), "unknown_event"),
    ]
    for event, args, code in cases:
        ack = await w.sio.call(event, args, timeout=10)  # a tuple: one argument per item
        assert isinstance(ack, dict) and ack.get("ok") is False, (event, args, ack)
        assert ack["error"]["code"] == code, (event, args, ack)
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
    # A string cursor of digits is accepted (it is what a header-minded client sends).
    await w.subscribe(run, str(last - 1))
    await w.wait_end(run)
    assert [e["seq"] for e in w.events[run]] == [last]
    assert w.sio.connected

    # A malformed Socket.IO frame from another client does not hurt this one or the server.
    async with ws_connect(f"ws://127.0.0.1:{main.port}/socket.io/?EIO=4&transport=websocket") as raw:
        await raw.recv()
        await raw.send("40")
        await raw.recv()
        for junk in ('42["subscribe",', "4garbage", '42{"not":"a list"}', "9", "42[]", '42[5]'):
            await raw.send(junk)
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient() as http:
        assert (await http.get(main.url + "/healthz")).status_code == 200
    w.events[run].clear()
    w.ends[run].clear()
    await w.subscribe(run, 0)
    await w.wait_end(run)
    assert len(w.events[run]) == last
    await w.close()


async def origin_allowed(server: ServerProcess, origin: str | None, transport: str) -> bool:
    """The engine.io handshake answer for this Origin: 200/101 (allowed) or 400 (refused)."""
    headers = {"Origin": origin} if origin else {}
    if transport == "polling":
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{server.url}/socket.io/?EIO=4&transport=polling", headers=headers)
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:
            assert "not an accepted origin" in r.text
        return r.status_code == 200
    try:
        async with ws_connect(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                              origin=origin) as ws:  # type: ignore[arg-type]
            assert (await ws.recv()).startswith("0")
    except websockets.exceptions.InvalidStatus as exc:
        assert exc.response.status_code in (400, 403), exc.response.status_code
        return False
    return True


async def test_origins(servers: dict[str, ServerProcess]) -> None:
    main, strict = servers["main"], servers["strict"]
    # Default: the server's own origin and loopback origins; nothing else. No Origin: not a browser.
    for transport in ("websocket", "polling"):
        for origin, allowed in ((None, True), (main.url, True), ("http://localhost:5173", True),
                                ("http://[::1]:3000", True), ("https://127.0.0.1", True),
                                ("http://evil.example", False), ("https://127.0.0.1.evil.example", False),
                                ("http://localhost.evil.example:5173", False), ("null", False),
                                ("file://", False)):
            assert await origin_allowed(main, origin, transport) is allowed, (transport, origin)
    # A configured list replaces the loopback default; the own origin still works.
    for origin, allowed in ((STRICT_ORIGIN, True), (STRICT_ORIGIN + "/", True), ("HTTPS://APP.example.com", True),
                            (strict.url, True), ("http://localhost:5173", False),
                            ("https://app.example.com.evil.example", False), ("http://app.example.com", False)):
        for transport in ("websocket", "polling"):
            assert await origin_allowed(strict, origin, transport) is allowed, (transport, origin)

    # And as a Socket.IO client sees it: a refused Origin is a failed connection.
    ok = await Watcher(main.url).connect(headers={"Origin": "http://localhost:5173"})
    assert ok.sio.connected
    await ok.close()
    with pytest.raises((socketio.exceptions.ConnectionError, RuntimeError)):
        await Watcher(strict.url).connect(headers={"Origin": "http://localhost:5173"})


async def test_long_polling_delivers_everything(main: ServerProcess) -> None:
    run = await post_run(main.url, "ticker", {"count": 60, "interval_s": 0.005})
    w = await Watcher(main.url).connect(("polling",))
    await w.subscribe(run, 0)
    await w.wait_end(run)
    check_suffix(w.events[run], await sse_log(main.url, run), 0)
    await w.close()


async def test_cursor_older_than_the_log(servers: dict[str, ServerProcess]) -> None:
    tiny = servers["strict"]
    run = await post_run(tiny.url, "ticker", {"count": LOG_MAX + 40, "interval_s": 0.0})
    # Wait for the end through the snapshot (it waits for the terminal event), not through
    # a Socket.IO probe: a probe reading from seq 1 while the ticker outruns the 2,000-event
    # bound may fall behind the trim and rightly get ``reset`` instead of ``run_end``.
    deadline = time.monotonic() + 30
    while (snap := await snapshot(tiny.url, run))["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, snap
        await asyncio.sleep(0.05)
    first, last = snap["first_seq"], snap["last_seq"]
    assert first > 1 and last - first + 1 == LOG_MAX
    w = await Watcher(tiny.url).connect()
    ack = await w.subscribe(run, 0, expect_ok=False)
    assert ack["ok"] is False and ack["error"]["code"] == "cursor_expired" and ack["error"]["first_seq"] == first
    assert not w.events[run]
    # No cursor: an explicit reset first, then what is kept.
    ack = await w.subscribe(run)
    assert ack["ok"] and ack["first_seq"] == first
    await w.wait_end(run)
    assert w.stream[0] == ("reset", {"run_id": run, "reason": "log_trimmed", "first_seq": first})
    assert [e["seq"] for e in w.events[run]] == list(range(first, last + 1))
    # A cursor inside the kept log is fine.
    w.events[run].clear()
    await w.subscribe(run, first + 5)
    while len(w.ends[run]) < 2:
        await asyncio.sleep(0.01)
    assert [e["seq"] for e in w.events[run]] == list(range(first + 6, last + 1))
    await w.close()


# --------------------------------------------------------------------------- slow sockets


class RawSocket:
    """A Socket.IO client on a raw WebSocket with a tiny receive buffer, which can stop reading."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list[dict[str, Any]] = []
        self.ends: list[dict[str, Any]] = []
        self.closed = False
        self._acks: dict[int, Any] = {}
        self._next_id = 0

    async def connect(self) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.ws = await ws_connect(f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket",
                                   sock=sock, max_queue=1, compression=None, ping_interval=None,
                                   max_size=None)
        assert (await self.ws.recv()).startswith("0")
        await self.ws.send("40")
        joined = await self.ws.recv()
        assert joined.startswith("40")
        self.sid = json.loads(joined[2:])["sid"]
        return self

    async def emit(self, event: str, payload: Any) -> int:
        self._next_id += 1
        await self.ws.send(f"42{self._next_id}" + json.dumps([event, payload]))
        return self._next_id

    def _handle(self, msg: str) -> None:
        if msg == "2":
            asyncio.ensure_future(self.ws.send("3"))
        elif msg.startswith("42"):
            name, body = json.loads(msg[2:])
            (self.events if name == "event" else self.ends if name == "run_end" else []).append(body)
        elif msg.startswith("43"):
            head, _, rest = msg[2:].partition("[")
            self._acks[int(head)] = json.loads("[" + rest)[0]

    async def read(self, until: float, stop_when: Any = None) -> None:
        """Read frames until ``stop_when()`` is true, the deadline passes, or the server closes."""
        try:
            while not (stop_when and stop_when()):
                left = until - time.monotonic()
                if left <= 0:
                    return
                try:
                    msg = await asyncio.wait_for(self.ws.recv(), left)
                except TimeoutError:
                    return
                self._handle(msg)
        except websockets.exceptions.ConnectionClosed:
            self.closed = True

    async def ack(self, ack_id: int, timeout: float = 10) -> Any:
        await self.read(time.monotonic() + timeout, lambda: ack_id in self._acks)
        return self._acks[ack_id]

    async def close(self) -> None:
        await self.ws.close()


async def wait_log(server: ServerProcess, text: str, timeout: float = 30) -> float:
    """Wait until the server's log contains ``text``; returns the wall-clock time it was seen."""
    deadline = time.monotonic() + timeout
    while text not in server.output():
        assert time.monotonic() < deadline, f"the server never logged {text!r}"
        await asyncio.sleep(0.05)
    return time.time()


async def test_slow_sockets_are_cut_and_resync_without_slowing_the_run(servers: dict[str, ServerProcess]) -> None:
    """Queue limit 64 packets, send timeout 5 s. A socket that stalls for a moment is cut
    from the live room and later catches up from the log; one that stalls for good is
    disconnected and resumes with its cursor; a healthy socket and the run never wait."""
    strict = servers["strict"]
    count, rate = 1500, 1500.0  # ~6 MB of 4 KB events in about a second; socket buffers hold ~4 MB
    run = await post_run(strict.url, "bulk", {"count": count, "size": 4096, "rate": rate})
    healthy = await Watcher(strict.url).connect()
    napper, stuck = await RawSocket(strict.port).connect(), await RawSocket(strict.port).connect()
    assert (await napper.ack(await napper.emit("subscribe", {"run_id": run, "after": 0})))["ok"]
    assert (await stuck.ack(await stuck.emit("subscribe", {"run_id": run, "after": 0})))["ok"]
    await healthy.subscribe(run, 0)

    async def nap_then_read() -> None:
        # Stalled until the server cuts it from the live room, then it reads again.
        await wait_log(strict, f"socket {napper.sid} cut from live")
        await napper.read(time.monotonic() + 30, lambda: napper.ends)

    napping = asyncio.create_task(nap_then_read())
    await healthy.wait_end(run, timeout=30)
    healthy_done = time.time()
    kicked_at = await wait_log(strict, f"socket {stuck.sid} disconnected: its queue stayed above")
    snap = await snapshot(strict.url, run)
    # Nobody waited for the stuck socket: the run and the healthy socket finished before
    # the server gave up on it (it could not have released them earlier).
    assert snap["ended_at"] < kicked_at and healthy_done < kicked_at
    log = await sse_log(strict.url, run)
    check_suffix(healthy.events[run], log, 0)

    # The napper got everything, once, in order (its catch-up came from the log).
    await napping
    assert [e["seq"] for e in napper.events] == list(range(1, len(log) + 1))
    assert napper.ends == [{"run_id": run, "status": "succeeded"}]

    # The stuck socket reads what was queued before it was dropped, then the connection closes ...
    await stuck.read(time.monotonic() + 30)
    assert stuck.closed and not stuck.ends
    got = [e["seq"] for e in stuck.events]
    assert got == list(range(1, len(got) + 1)) and len(got) < len(log)
    # ... and its client resumes from its last seq.
    again = await Watcher(strict.url).connect()
    await again.subscribe(run, got[-1] if got else 0)
    await again.wait_end(run)
    check_suffix(again.events[run], log, got[-1] if got else 0)
    await napper.close()
    await healthy.close()
    await again.close()


# --------------------------------------------------------------------------- many processes


@pytest.fixture(scope="module")
def redis_apis(redis_server: Any) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two API processes (no workers) and one worker process sharing one Redis."""
    env = {**QUICK_PINGS, "THOUGHTSTREAM_REDIS_URL": redis_server.url,
           "THOUGHTSTREAM_KEY_PREFIX": f"sio{random.randrange(1 << 30)}"}
    apis = (ServerProcess(*agent_flags(), "--workers", "0", env=env),
            ServerProcess(*agent_flags(), "--workers", "0", env=env))
    worker = ServerProcess(*agent_flags(), command="worker", env=env)
    try:
        start_all(*apis, worker)
        yield apis
    finally:
        for p in (*apis, worker):
            p.stop()


async def test_many_api_processes_over_redis(redis_apis: tuple[ServerProcess, ServerProcess]) -> None:
    """Each API process feeds its own rooms from the bus: sockets on either process, and
    clients hopping between them with their last seq, get every event once, in order."""
    api1, api2 = redis_apis
    runs = [await post_run(api1.url, "ticker", {"count": 50 + 10 * i, "interval_s": 0.01}) for i in range(4)]
    steady = [await Watcher(api.url).connect() for api in (api1, api2)]
    for w in steady:
        for r in runs:
            await w.subscribe(r, 0, batch=w is steady[1])
    rng = random.Random(7)
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ended: set[str] = set()
    deadline = time.monotonic() + 40
    while len(ended) < len(runs):  # a hopper: a new connection to a random API each time
        assert time.monotonic() < deadline
        hop = await Watcher(rng.choice(redis_apis).url).connect()
        for r in runs:
            if r not in ended:
                await hop.subscribe(r, got[r][-1]["seq"] if got[r] else 0)
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        snapshot_events = {r: list(hop.events[r]) for r in runs}
        snapshot_ends = {r for r in runs if hop.ends[r]}
        await hop.close()
        for r in runs:
            got[r] += snapshot_events[r]
        ended |= snapshot_ends
    for w in steady:
        await w.wait_end(*runs, timeout=30)
    for r in runs:
        log = await sse_log(api2.url, r)
        check_suffix(got[r], log, 0)
        for w in steady:
            check_suffix(w.events[r], log, 0)
            assert len(w.ends[r]) == 1
    for w in steady:
        await w.close()
