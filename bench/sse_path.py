"""CPU per delivered event of thoughtstream's SSE path, in one process, without sockets.

    .venv/bin/python -m bench.sse_path [--clients 100 --events 2000 --batch 5]

The fan-out bench (``bench.fanout``) measures the whole server on loopback, on a
machine shared with other work, so its numbers are noisy. This one is deterministic
enough to attribute costs: the real memory bus, ``subscribe`` and the SSE endpoint's
generator inside a real ``EventSourceResponse``, whose ASGI ``send`` only counts
bytes. A producer appends ``batch`` events, waits until every subscriber has written them
as one chunk, and goes on (as a paced graph at 500/s with 10 ms ticks does), so every
variant makes the same writes and differs only in CPU per write. Variants
switch one suspected cost off at a time, in-process only (the server's files are not
touched), and ``raw`` is the minimal queue-per-client StreamingResponse of
``bench/raw_broadcaster.py`` for scale. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import types
from contextlib import contextmanager
from typing import Any, AsyncIterator, Callable, Iterator

from sse_starlette import EventSourceResponse
from starlette.responses import StreamingResponse

from server.bus import base as bus_base
from server.bus.base import subscribe
from server.bus.memory import MemoryBus
from server.transports import sse

from .graphs import token

RUN = "bench-run"
SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": [], "asgi": {"spec_version": "2.4"}}


class Counter:
    """The ASGI ``send`` of every response: counts writes, wakes the producer when a batch is out."""

    def __init__(self) -> None:
        self.sends = 0
        self.target = 0
        self.reached = asyncio.Event()

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            self.sends += 1
            if self.sends == self.target:
                self.reached.set()

    async def written(self, n: int) -> None:
        """Wait until ``n`` more writes have happened (one per subscriber per batch)."""
        self.target += n
        if self.sends < self.target:
            self.reached.clear()
            await self.reached.wait()


async def never() -> dict:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def produce(publish: Callable[[int], Any], end: Callable[[], Any], events: int, batch: int,
                  counter: Counter, clients: int) -> None:
    """``batch`` events, then wait until every subscriber wrote them: one write per batch each,
    as when a paced producer sleeps 10 ms between batches, so variants compare per write."""
    await asyncio.sleep(0.05)  # every subscriber attached and its history written
    counter.target = counter.sends
    for i in range(events):
        await publish(i)
        if (i + 1) % batch == 0 or i + 1 == events:
            await counter.written(clients)
    await end()


async def server_path(clients: int, events: int, batch: int, send_timeout: float | None) -> Counter:
    bus = MemoryBus(max_events=events + 10, ttl_s=3600, subscriber_buffer=max(1024, batch * 4))
    await bus.append(RUN, "STATUS", "server", {"state": "running"})
    counter = Counter()
    responses = []
    for _ in range(clients):
        sub = await subscribe(bus, RUN, None)
        kwargs: dict[str, Any] = {"ping": 15, "sep": "\n", "send_timeout": send_timeout}
        if hasattr(sse, "ping_comment"):
            kwargs["ping_message_factory"] = sse.ping_comment
        responses.append(EventSourceResponse(sse._frames(sub, None), **kwargs))
    tasks = [asyncio.create_task(r(SCOPE, never, counter.send)) for r in responses]

    async def publish(i: int) -> None:
        await bus.append(RUN, "THOUGHT", "emit", {"text": token(i)})

    async def end() -> None:
        await bus.append(RUN, "STATUS", "server", {"state": "succeeded"})

    await produce(publish, end, events, batch, counter, clients)
    await asyncio.gather(*tasks)
    return counter


async def raw_path(clients: int, events: int, batch: int) -> Counter:
    from .raw_broadcaster import frame

    counter = Counter()
    queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue() for _ in range(clients)]

    def stream(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                done = items[-1] is None
                chunk = b"".join(items[:-1] if done else items)
                if chunk:
                    yield chunk
                if done:
                    return
        return gen()

    tasks = [asyncio.create_task(StreamingResponse(stream(q), media_type="text/event-stream")(
        SCOPE, never, counter.send)) for q in queues]

    async def publish(i: int) -> None:
        f = frame(RUN, i + 1, "THOUGHT", "emit", {"text": token(i)})
        for q in queues:
            q.put_nowait(f)

    async def end() -> None:
        f = frame(RUN, events + 1, "STATUS", "server", {"state": "succeeded"})
        for q in queues:
            q.put_nowait(f)
            q.put_nowait(None)

    await produce(publish, end, events, batch, counter, clients)
    await asyncio.gather(*tasks)
    return counter


@contextmanager
def encode_once() -> Iterator[None]:
    """Each event's frame encoded once, not once per subscriber (a cache keyed by seq)."""
    original = sse.frame
    cache: dict[tuple[str, int], bytes] = {}

    def frame(event: Any) -> bytes:
        key = (event.run_id, event.seq)
        f = cache.get(key)
        if f is None:
            f = cache[key] = original(event)
        return f

    sse.frame = frame
    try:
        yield
    finally:
        sse.frame = original


@contextmanager
def no_wait_for() -> Iterator[None]:
    """Subscription waits on its sink directly, without asyncio.wait_for's task and timer."""
    original = bus_base.asyncio
    shim = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio) if not k.startswith("__")})

    async def wait_for(aw: Any, timeout: float | None) -> Any:
        return await aw

    shim.wait_for = wait_for
    bus_base.asyncio = shim
    try:
        yield
    finally:
        bus_base.asyncio = original


@contextmanager
def nothing() -> Iterator[None]:
    yield


def measure(name: str, make: Callable[[], Any], delivered: int) -> dict:
    t0, w0 = time.process_time(), time.perf_counter()
    counter = asyncio.run(make())
    cpu = time.process_time() - t0
    return {"variant": name, "us_per_event": round(1e6 * cpu / delivered, 2),
            "us_per_write": round(1e6 * cpu / max(1, counter.sends), 1), "writes": counter.sends,
            "cpu_s": round(cpu, 3), "wall_s": round(time.perf_counter() - w0, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--batch", type=int, default=5, help="events appended per loop turn")
    p.add_argument("--repeat", type=int, default=3, help="best (lowest CPU) of this many")
    p.add_argument("--only", help="run only variants whose name contains this")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()  # as uvicorn runs the server
    except ImportError:  # pragma: no cover - depends on the machine
        pass
    c, e, b = args.clients, args.events, args.batch
    delivered = c * e
    variants: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("server as is", nothing, lambda: server_path(c, e, b, 30.0)),
        ("encode once", encode_once, lambda: server_path(c, e, b, 30.0)),
        ("no send_timeout", nothing, lambda: server_path(c, e, b, None)),
        ("no wait_for", no_wait_for, lambda: server_path(c, e, b, 30.0)),
        ("all three", lambda: _stack(encode_once(), no_wait_for()), lambda: server_path(c, e, b, None)),
        ("raw queue broadcaster", nothing, lambda: raw_path(c, e, b)),
    ]
    rows = []
    for name, ctx, make in variants:
        if args.only and args.only not in name:
            continue
        best = None
        for _ in range(args.repeat):
            with ctx():
                row = measure(name, make, delivered)
            if best is None or row["cpu_s"] < best["cpu_s"]:
                best = row
        rows.append(best)
        print(f"[sse_path] {best}", file=sys.stderr, flush=True)
    print(json.dumps({"clients": c, "events": e, "batch": b, "python": sys.version.split()[0],
                      "results": rows}, indent=2))
    return 0


@contextmanager
def _stack(*contexts: Any) -> Iterator[None]:
    for cm in contexts:
        cm.__enter__()
    try:
        yield
    finally:
        for cm in reversed(contexts):
            cm.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
