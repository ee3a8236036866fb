"""Delivery contexts over HTTP and SSE, and releasing a held result (the delivery gate).

A thin adapter like the others: the decisions are ``gate/gate.py``'s, the context stream is
``bus.subscribe`` over the context's own log, framed as the native SSE frames.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.requests import Request
from starlette.responses import Response

from ..auth import MEMBER, VIEWER, Caller
from ..bus.base import BusError, CursorExpired, UnknownLog
from ..bus.subscription import subscribe
from ..events import dumps
from ..runs.service import Conflict, NotFound
from .common import api_error, request_caller, validate
from .http import JSONBytes, read_json
from .openapi import Operation, Param
from .sse import CURSOR, PING, CredentialEnded, RETRY_MS, Pings, ended_frame, frame, parse_cursor, reset_frame
from .sse_response import LeanEventSourceResponse


class NotHeld(Conflict):
    code = "not_held"


class AlreadyDelivered(Conflict):
    code = "already_delivered"


class VersionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: StrictStr = Field(min_length=1, max_length=200)


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    run_ids: list[StrictStr] | None = Field(None, max_length=1000)


def _gate(request: Request) -> Any:
    return request.app.state.backend.gate


async def context_view(request: Request, tenant: str, key: str) -> dict[str, Any]:
    rec = await _gate(request).contexts.get(tenant, key)
    if rec is None:
        raise NotFound(f"unknown context {key!r}")
    view = _gate(request).view(rec)
    store = request.app.state.runs.store
    for run in view["runs"]:
        found = await store.get(run["run_id"])
        run["status"] = found.status if found is not None else None
    return view


async def put_context(request: Request) -> Response:
    req: VersionRequest = validate(VersionRequest, await read_json(request))
    caller = await request_caller(request)
    key = request.path_params["key"]
    await _gate(request).set_version(caller.tenant, key, req.version)
    return JSONBytes(await context_view(request, caller.tenant, key))


def _tenant(caller: Caller) -> str:
    # Contexts are named within a tenant; an admin's are its own tenant's.
    return caller.tenant


async def get_context(request: Request) -> Response:
    caller = await request_caller(request)
    return JSONBytes(await context_view(request, _tenant(caller), request.path_params["key"]))


async def ack_inbox(request: Request) -> Response:
    req: AckRequest = validate(AckRequest, await read_json(request, empty={}))
    caller = await request_caller(request)
    key = request.path_params["key"]
    await context_view(request, caller.tenant, key)  # 404 first
    await _gate(request).contexts.ack(caller.tenant, key, req.run_ids)
    return JSONBytes(await context_view(request, caller.tenant, key))


async def context_events(request: Request) -> Response:
    caller = await request_caller(request)
    key = request.path_params["key"]
    gate = _gate(request)
    rec = await gate.contexts.get(caller.tenant, key)
    if rec is None:
        raise NotFound(f"unknown context {key!r}")
    log = await gate.log_of(rec)
    after = parse_cursor(request)
    if after is None:  # live from now, after the inbox
        bounds = await request.app.state.bus.bounds(log)
        after = bounds.last_seq if bounds is not None else 0
    sub = await subscribe(request.app.state.bus, log, after, attach=False)
    state = request.app.state
    pings = Pings(sub)
    # The run stream's response: the body runs in the request's task and is never cancelled
    # from outside (a client leaving stops the subscription), so its clean-up runs whole.
    return LeanEventSourceResponse(
        _frames(sub, key, gate, caller, state, pings),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping_period=state.settings.sse_ping_s, on_ping=pings.due_now, interrupt=sub.stop,
        sep="\n", send_timeout=state.settings.sse_send_timeout_s)


async def _frames(sub: Any, key: str, gate: Any, caller: Caller, state: Any,
                  pings: Pings) -> AsyncIterator[bytes]:
    session = state.identity.sessions.open(caller, lambda why: sub.stop(CredentialEnded(why)))
    try:
        await sub.open()  # watching the context from here on: an ending now is not unwatched
        rec = await gate.contexts.get(caller.tenant, key)
        inbox = rec.inbox if rec is not None else []
        yield b"retry: %d\n\nevent: INBOX\ndata: %s\n\n" % (RETRY_MS, dumps({"key": key, "entries": inbox}))
        try:
            async for batch in sub:
                if pings.due:
                    pings.due = False
                    yield PING
                if batch:
                    yield b"".join(map(frame, batch))
        except (CursorExpired, UnknownLog) as exc:
            body = api_error(exc).reset(sub.run_id)
            del body["run_id"]
            yield reset_frame(body)
        except CredentialEnded as exc:
            yield ended_frame(exc.why)
        except BusError:
            pass
    finally:
        session.close()
        await sub.aclose()


async def deliver(request: Request) -> Response:
    """Release a held result: a RESULT marked ``delivered_anyway`` (and a thread moves to it)."""
    caller = await request_caller(request)
    runs = request.app.state.runs
    rec = await runs.get(request.path_params["run_id"], tenant=caller.scope)
    delivery = rec.delivery or {}
    if not delivery.get("held"):
        raise NotHeld(f"run {rec.run_id!r} holds no result")
    if delivery.get("delivered_at") is not None or not await _gate(request).claim_delivery(rec.run_id):
        fresh = await runs.store.get(rec.run_id)
        raise AlreadyDelivered(f"run {rec.run_id!r} was already delivered",
                               delivered_at=((fresh.delivery or {}) if fresh else {}).get("delivered_at"))
    rec = await runs.store.update(rec.run_id, delivery={**delivery, "delivered_at": time.time()})
    if rec.thread_id is not None and request.app.state.threads is not None:
        await request.app.state.threads.deliver(rec)
    body = {"run_id": rec.run_id, "output": rec.result, "verdict": rec.verdict, "delivered_anyway": True}
    await _gate(request).delivered(rec, body)
    return JSONBytes(body)


KEY = Param("key", "path", {"type": "string", "minLength": 1, "maxLength": 200})
OBJ = {"type": "object"}

operations = [
    (put_context, Operation("PUT", "/contexts/{key}", "Move a delivery context to a new version (creates it)",
                            body=VersionRequest, ok_schema=OBJ, params=(KEY,), errors=(400, 413, 415, 422),
                            tags=("contexts",), role=MEMBER)),
    (get_context, Operation("GET", "/contexts/{key}", "A delivery context: its version, runs in flight, inbox",
                            ok_schema=OBJ, params=(KEY,), errors=(404,), tags=("contexts",), role=VIEWER)),
    (ack_inbox, Operation("POST", "/contexts/{key}/inbox/ack", "Empty the context's inbox (or drop the runs given)",
                          body=AckRequest, ok_schema=OBJ, params=(KEY,), errors=(400, 404, 413, 415, 422),
                          tags=("contexts",), role=MEMBER)),
    (context_events, Operation(
        "GET", "/contexts/{key}/events",
        "Watch a context: INBOX first, then its events (RUN_STARTED, VERDICT, VERSION, RESULT)",
        ok_media="text/event-stream", ok_schema={"type": "object", "description": "`event: INBOX` "
                                                 "then `id: <seq>` / `event: <ns>` / `data: <event JSON>`"},
        params=(KEY, Param("Last-Event-ID", "header", CURSOR), Param("last_event_id", "query", CURSOR),
                Param("after", "query", CURSOR)),
        errors=(400, 404, 410), tags=("contexts",), role=VIEWER)),
    (deliver, Operation("POST", "/runs/{run_id}/deliver", "Release a result the delivery gate held",
                        ok_schema=OBJ, params=(Param("run_id", "path", {"type": "string", "minLength": 1}),),
                        errors=(404, 409), tags=("runs",), role=MEMBER)),
]
