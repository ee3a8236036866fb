"""Socket.IO delivery over the real memory bus, with a stand-in for engine.io's socket queue.

The queue is the one thing engine.io hides; here a test holds it, so it can stall a
socket at will and check that flow control only ever pauses reading the Subscription.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest

from server.bus.subscription import subscribe
from server.bus.memory import MemoryBus
from server.config import Settings
from server.events import STATUS
from server.transports.common import LOCAL_CALLER
from server.transports.engine import SocketGone
from server.transports.sio_watch import Client, Delivery, Watch

LIMIT = 8


class FakeEngine:
    """A socket queue the test drains (or not)."""

    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.received: list[tuple[str, Any]] = []
        self.kicked = False
        self.peak = 0

    def depth(self, eio_sid: str) -> int:
        return len(self.queue)

    async def send(self, eio_sid: str, packets: Any) -> None:
        if self.kicked:
            raise SocketGone
        self.queue.extend(packets)
        self.peak = max(self.peak, len(self.queue))

    async def kick(self, eio_sid: str) -> None:
        self.kicked = True

    def drain(self) -> None:
        for pkt in self.queue:
            name, body = json.loads(pkt.data[1:])
            self.received.append((name, body))
        self.queue.clear()

    def seqs(self) -> list[int]:
        out: list[int] = []
        for name, body in self.received:
            if name == "event":
                out.append(body["seq"])
            elif name == "events":
                out.extend(e["seq"] for e in body)
        return out


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    async with MemoryBus(max_events=10_000, ttl_s=60, subscriber_buffer=16) as b:
        yield b


def make(bus: MemoryBus, timeout_s: float = 5.0) -> tuple[Delivery, FakeEngine, Client]:
    settings = Settings(socketio_queue_limit=LIMIT, socketio_send_timeout_s=timeout_s)
    engine = FakeEngine()
    delivery = Delivery(settings, engine, lambda: bus)  # type: ignore[arg-type]
    return delivery, engine, Client("sid", "eio", LOCAL_CALLER)


async def watch(delivery: Delivery, client: Client, bus: MemoryBus, run: str, after: int | None,
                batch: bool = False) -> Watch:
    sub = await subscribe(bus, run, after)
    w = Watch(client, run, sub, batch, last=sub.last)
    delivery.start(w)
    return w


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_stalled_socket_stops_being_fed_then_resyncs_from_the_log(bus: MemoryBus) -> None:
    """While its queue is full the watch reads nothing; its Sink overflows, and once the
    queue drains the Subscription resyncs from the log: every event once, in order."""
    delivery, engine, client = make(bus)
    await bus.append("r", STATUS, "server", {"state": "queued"})
    w = await watch(delivery, client, bus, "r", 0)
    sub = w.sub
    for i in range(200):  # the socket never reads meanwhile; the run does not wait for it
        await bus.append("r", "THOUGHT", "a", {"i": i})
        if i % 10 == 0:
            await asyncio.sleep(0)
    await until(lambda: delivery.stats["cut_from_live"] >= 1)
    assert engine.peak <= LIMIT
    await bus.append("r", STATUS, "server", {"state": "succeeded"})
    while not engine.received or engine.received[-1][0] != "run_end":
        engine.drain()
        await asyncio.sleep(0.005)
        assert engine.peak <= LIMIT
    assert engine.seqs() == list(range(1, 203))
    assert engine.received[-1] == ("run_end", {"run_id": "r", "status": "succeeded"})
    assert sub is not None and sub.resyncs >= 1
    await until(lambda: not client.watches and not delivery._tasks)


async def test_a_socket_that_never_drains_is_kicked(bus: MemoryBus) -> None:
    delivery, engine, client = make(bus, timeout_s=0.2)
    await bus.append("r", STATUS, "server", {"state": "running"})
    w = await watch(delivery, client, bus, "r", 0)
    for i in range(50):
        await bus.append("r", "THOUGHT", "a", {"i": i})
    await until(lambda: engine.kicked)
    assert delivery.stats["disconnected_slow"] == 1
    await until(lambda: w.done and not delivery._tasks)
    assert len(engine.queue) <= LIMIT


async def test_a_cursor_at_the_terminal_event_gets_run_end_at_once(bus: MemoryBus) -> None:
    delivery, engine, client = make(bus)
    await bus.append("r", STATUS, "server", {"state": "running"})
    await bus.append("r", STATUS, "server", {"state": "cancelled"})
    await watch(delivery, client, bus, "r", 2)
    await until(lambda: engine.queue)
    engine.drain()
    assert engine.received == [("run_end", {"run_id": "r", "status": "cancelled"})]


async def test_drop_stops_delivery_at_once_and_detaches(bus: MemoryBus) -> None:
    """After drop() returns nothing more of the run is queued (the unsubscribe ack's promise)."""
    delivery, engine, client = make(bus)
    await bus.append("r", STATUS, "server", {"state": "running"})
    w = await watch(delivery, client, bus, "r", 0, batch=True)
    await until(lambda: engine.queue)
    engine.drain()
    delivery.drop(w)
    held = len(engine.queue)
    for i in range(20):
        await bus.append("r", "THOUGHT", "a", {"i": i})
        await asyncio.sleep(0)
    await until(lambda: not delivery._tasks)
    assert len(engine.queue) == held and not bus._logs["r"].sinks


async def test_a_watch_cancelled_before_it_ran_still_detaches(bus: MemoryBus) -> None:
    delivery, engine, client = make(bus)
    await bus.append("r", STATUS, "server", {"state": "running"})
    w = await watch(delivery, client, bus, "r", 0)
    delivery.drop(w)  # in the same step as start(): the task never ran
    await until(lambda: not delivery._tasks)
    assert not bus._logs["r"].sinks and not engine.queue


async def test_aclose_stops_every_watch(bus: MemoryBus) -> None:
    delivery, engine, client = make(bus)
    for run in ("a", "b", "c"):
        await bus.append(run, STATUS, "server", {"state": "running"})
        await watch(delivery, client, bus, run, None)
    await until(lambda: len(engine.queue) == 3)
    await delivery.aclose()
    assert not delivery._tasks and not any(lg.sinks for lg in bus._logs.values())
