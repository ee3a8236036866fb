"""The ceiling: a minimal Starlette SSE broadcaster, one asyncio.Queue per client.

    python -m uvicorn bench.raw_broadcaster:app --port 8100 --log-level warning

``GET /events`` streams; ``POST /start?count=N&rate=R`` starts an in-process producer
that emits N THOUGHT events at R per second (the same absolute-schedule, one sleep per
10 ms pacing as ``bench/graphs.py``), then a terminal STATUS event, after which every
stream ends. Frames and JSON are shaped like thoughtstream's (``id``/``event``/``data``
with ``run_id, seq, ns, agent, data, ts``); each event is encoded once and shared, and a
client writes whatever is queued in one write, as thoughtstream's design asks. No log,
no resync, no ping, no disconnect watcher: what is left is the cost of Starlette,
uvicorn and asyncio themselves.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .graphs import TICK_S, token

RUN_ID = "raw"


class Hub:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes | None]] = set()
        self.producer: asyncio.Task[None] | None = None
        self.run = 0

    def publish(self, item: bytes | None) -> None:
        for q in self.queues:
            q.put_nowait(item)

    async def produce(self, count: int, rate: float) -> None:
        self.run += 1
        run_id = f"{RUN_ID}-{self.run}"
        loop = asyncio.get_running_loop()
        per_tick = max(1, round(rate * TICK_S))
        t0 = loop.time()
        for i in range(count):
            self.publish(frame(run_id, i + 1, "THOUGHT", "emit", {"text": token(i)}))
            n = i + 1
            if n % per_tick == 0 or n == count:
                await asyncio.sleep(max(0.0, t0 + n / rate - loop.time()))
        self.publish(frame(run_id, count + 1, "STATUS", "server", {"state": "succeeded"}))
        self.publish(None)


def frame(run_id: str, seq: int, ns: str, agent: str, data: dict) -> bytes:
    body = orjson.dumps({"run_id": run_id, "seq": seq, "ns": ns, "agent": agent, "data": data,
                         "ts": time.time()})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, ns.encode(), body)


hub = Hub()


async def events(request: Request) -> Response:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    hub.queues.add(queue)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                end = items[-1] is None
                chunk = b"".join(items[:-1] if end else items)
                if chunk:
                    yield chunk
                if end:
                    return
        finally:
            hub.queues.discard(queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def start(request: Request) -> Response:
    if hub.producer is not None and not hub.producer.done():
        return JSONResponse({"error": "a producer is already running"}, status_code=409)
    count = int(request.query_params.get("count", "2000"))
    rate = float(request.query_params.get("rate", "500"))
    hub.producer = asyncio.create_task(hub.produce(count, rate), name="raw-producer")
    return JSONResponse({"clients": len(hub.queues), "count": count, "rate": rate}, status_code=202)


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "clients": len(hub.queues)})


app = Starlette(routes=[
    Route("/events", events, methods=["GET"]),
    Route("/start", start, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
])
