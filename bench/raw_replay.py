"""The replay ceiling: a minimal Starlette app that replays a finished log it holds.

    python -m uvicorn bench.raw_replay:app --port 8100 --log-level warning

``POST /runs {count, preframed?}`` makes a finished log of ``count`` firehose chunks
(``bench.graphs.chunk``, shaped as thoughtstream's events: ``run_id`` a uuid hex, ``seq``,
``ns``, ``agent``, ``data``, ``ts``) and a terminal STATUS, each event's JSON encoded once,
and answers ``{run_id, events_url}``. ``GET /runs/{id}/events`` with ``Last-Event-ID: N``
writes the events after N, framed (``id``/``event``/``data``, as thoughtstream frames
them) in writes of at most ``WRITE_MAX`` bytes (whole frames), then ends. With
``preframed`` the frames are built once at creation, and a replay only joins them.
What is left is the cost of Starlette, uvicorn and asyncio (and, without ``preframed``,
of framing): no bus, no cursor checks, no subscription. The app is wrapped in
``bench.replay_timing.Timing`` (``GET /__timing``), as thoughtstream is in the replay trials.
"""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .graphs import chunk
from .replay_timing import Timing

WRITE_MAX = 64 * 1024

logs: dict[str, tuple[bool, list]] = {}  # run id -> (preframed, frames or (seq, ns bytes, JSON))


def encoded(run_id: str, seq: int, ns: str, data: dict) -> tuple[int, bytes, bytes]:
    body = orjson.dumps({"run_id": run_id, "seq": seq, "ns": ns, "agent": "emit", "data": data, "ts": time.time()})
    return seq, ns.encode(), body


def frame(e: tuple[int, bytes, bytes]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % e


async def create(request: Request) -> Response:
    body = await request.json()
    run_id = uuid.uuid4().hex
    events = []
    for i in range(int(body["count"])):
        data = chunk(i)
        events.append(encoded(run_id, i + 1, data.pop("ns"), data))
    events.append(encoded(run_id, len(events) + 1, "STATUS", {"state": "succeeded"}))
    preframed = bool(body.get("preframed"))
    logs[run_id] = (preframed, [frame(e) for e in events] if preframed else events)
    return JSONResponse({"run_id": run_id, "events_url": f"/runs/{run_id}/events"}, status_code=202)


async def events(request: Request) -> Response:
    log = logs.get(request.path_params["run_id"])
    if log is None:
        return JSONResponse({"error": "no such run"}, status_code=404)
    preframed, items = log
    after = int(request.headers.get("last-event-id") or 0)

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        out: list[bytes] = []
        size = 0
        for f in (items[after:] if preframed else map(frame, items[after:])):
            if size + len(f) > WRITE_MAX and out:
                yield b"".join(out)
                out, size = [], 0
            out.append(f)
            size += len(f)
        if out:
            yield b"".join(out)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "logs": len(logs)})


async def drop(request: Request) -> Response:
    logs.pop(request.path_params["run_id"], None)
    return Response(status_code=204)


app = Timing(Starlette(routes=[
    Route("/runs", create, methods=["POST"]),
    Route("/runs/{run_id}", drop, methods=["DELETE"]),
    Route("/runs/{run_id}/events", events, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]))
