"""The ceiling: a minimal Starlette SSE broadcaster, one asyncio.Queue per client.

    python -m uvicorn bench.raw_broadcaster:app --port 8100 --log-level warning

``POST /runs {count, rate, gate?}`` creates a run and answers ``{run_id, events_url}``
as thoughtstream does; its in-process producer emits the firehose's chunks on the
firehose's schedule (``bench.graphs.paced``) once the ``gate`` file exists (or, without
a gate, once its first subscriber is attached: there is no log to replay), then a
terminal STATUS event, after which every stream of the run ends. ``GET
/runs/{id}/events`` streams. Frames are shaped like thoughtstream's (``id``/``event``/
``data``); each event is encoded once and shared, and a client writes whatever is
queued in one write. No log, no replay, no ping, no disconnect watcher: what is left is
the cost of Starlette, uvicorn and asyncio themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .graphs import chunk, paced, wait_gate


class Run:
    def __init__(self, run_id: str, count: int, rate: float, gate: str | None) -> None:
        self.run_id = run_id
        self.queues: set[asyncio.Queue[bytes | None]] = set()
        self.attached = asyncio.Event()
        self.seq = 0
        self.task = asyncio.create_task(self.produce(count, rate, gate), name=f"raw-{run_id}")

    def publish(self, ns: str, data: dict) -> None:
        self.seq += 1
        body = orjson.dumps({"run_id": self.run_id, "seq": self.seq, "ns": ns, "agent": "emit",
                             "data": data, "ts": time.time()})
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (self.seq, ns.encode(), body)
        for q in self.queues:
            q.put_nowait(frame)

    async def produce(self, count: int, rate: float, gate: str | None) -> None:
        try:
            if gate:
                await wait_gate(gate)
            else:
                await self.attached.wait()

            def emit(i: int) -> None:
                data = chunk(i)
                self.publish(data.pop("ns"), data)

            await paced(count, rate, emit)
            self.publish("STATUS", {"state": "succeeded"})
        finally:
            for q in self.queues:
                q.put_nowait(None)
            runs.pop(self.run_id, None)


runs: dict[str, Run] = {}
ids = itertools.count(1)


async def create(request: Request) -> Response:
    body = await request.json()
    run_id = f"raw-{next(ids)}"
    runs[run_id] = Run(run_id, int(body["count"]), float(body["rate"]), body.get("gate"))
    return JSONResponse({"run_id": run_id, "events_url": f"/runs/{run_id}/events"}, status_code=202)


async def events(request: Request) -> Response:
    run = runs.get(request.path_params["run_id"])
    if run is None:
        return JSONResponse({"error": "no such run (or it ended)"}, status_code=404)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    run.queues.add(queue)
    run.attached.set()

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                end = items[-1] is None
                data = b"".join(items[:-1] if end else items)
                if data:
                    yield data
                if end:
                    return
        finally:
            run.queues.discard(queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "runs": len(runs)})


async def list_runs(request: Request) -> Response:
    return JSONResponse([{"run_id": r.run_id, "seq": r.seq} for r in list(runs.values())[:10]])


app = Starlette(routes=[
    Route("/runs", create, methods=["POST"]),
    Route("/runs", list_runs, methods=["GET"]),
    Route("/runs/{run_id}/events", events, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
])
