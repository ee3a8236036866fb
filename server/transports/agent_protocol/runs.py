"""LangGraph's runs: started on a thread or threadless, in the background, streamed or waited
for; listed, joined (their final values, or their stream again from a Last-Event-ID), and
cancelled. Every stream is ``bus.subscribe(run, after)`` framed by ``stream.Framer``.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from ...auth import MEMBER, Caller
from ...bus.base import BusError, CursorExpired, UnknownLog
from ...bus.subscription import subscribe
from ...runs.service import Conflict, NotFound
from ...runs.store import INTERRUPTED, QUEUED, RUNNING, RunRecord
from ..common import RequestError, parse_seq, request_caller, validate
from ..openapi import Param
from ..sse import CredentialEnded, Pings
from ..sse_response import LeanEventSourceResponse
from .common import (ANY, ARR, JOIN_PARAMS, LOCATION, OBJ, RID, SSE_SCHEMA, TID, flag, json_response, lg_status, op,
                     path_run, path_thread, read_body, run_location, run_output, run_view, thread_service)
from .models import CancelMany, RunCreate, ThreadCreate
from .stream import Framer, encode, end_frame, frame, parse_modes

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


async def _start(request: Request, req: RunCreate, *, thread_id: str | None) -> tuple[RunRecord, bool]:
    """Create the run (and its thread when asked); returns (record, cancel_on_disconnect)."""
    svc = thread_service(request)
    caller = await request_caller(request)
    agent = svc.resolve_assistant(req.assistant_id)
    try:
        parse_modes(req.stream_mode)
    except ValueError as exc:
        raise RequestError("invalid_request", str(exc), status=422, field="stream_mode") from None
    if thread_id is None:  # threadless: a thread of its own, not listed among the caller's
        thread = await svc.create_thread(tenant=caller.tenant, thread_id=None, metadata={},
                                         if_exists="raise", ephemeral=req.on_completion != "keep")
    else:
        try:
            thread = await svc.get_thread(thread_id, tenant=caller.scope)
        except NotFound:
            if req.if_not_exists != "create":
                raise
            validate(ThreadCreate, {"thread_id": thread_id})  # the same rules as POST /threads
            thread = await svc.create_thread(tenant=caller.tenant, thread_id=thread_id, metadata={},
                                             if_exists="do_nothing")
    rec = await svc.submit(thread=thread, agent=agent, body=req.model_dump(), tenant=caller.tenant,
                           sub=caller.sub)
    return rec, req.on_disconnect == "cancel"


async def create_run(request: Request) -> Response:
    req: RunCreate = await read_body(request, RunCreate)
    rec, _ = await _start(request, req, thread_id=request.path_params["thread_id"])
    return json_response(run_view(rec), headers={"Content-Location": run_location(rec)["Content-Location"]})


async def stream_new_run(request: Request) -> Response:
    req: RunCreate = await read_body(request, RunCreate)
    rec, cancel = await _start(request, req, thread_id=request.path_params.get("thread_id"))
    return await _stream(request, rec, after=0, modes=parse_modes(req.stream_mode),
                         subgraphs=bool(req.stream_subgraphs), cancel_on_disconnect=cancel)


async def wait_new_run(request: Request) -> Response:
    req: RunCreate = await read_body(request, RunCreate)
    rec, _ = await _start(request, req, thread_id=request.path_params.get("thread_id"))
    rec = await _until_end(request, rec)
    return json_response(run_output(rec), headers={"Content-Location": run_location(rec)["Content-Location"]})


async def list_runs(request: Request) -> Response:
    thread = await path_thread(request)
    q = request.query_params
    try:
        limit, offset = int(q.get("limit", "10")), int(q.get("offset", "0"))
    except ValueError:
        raise RequestError("bad_query", "limit and offset must be integers") from None
    if not (1 <= limit <= 1000 and offset >= 0):
        raise RequestError("bad_query", "limit must be 1-1000 and offset at least 0")
    status = q.get("status")
    rows = [run_view(r) for r in await thread_service(request).thread_runs(thread.thread_id)]
    if status:
        rows = [r for r in rows if r["status"] == status]
    return json_response(rows[offset:offset + limit])


async def get_run(request: Request) -> Response:
    return json_response(run_view(await path_run(request, await path_thread(request, runs=True))))


async def delete_run(request: Request) -> Response:
    rec = await path_run(request, await path_thread(request))
    if not rec.terminal:
        raise Conflict(f"run {rec.run_id!r} is {lg_status(rec)}; cancel it first")
    await request.app.state.runs.store.delete(rec.run_id)
    return Response(status_code=204)


async def _until_end(request: Request, rec: RunRecord) -> RunRecord:
    """Wait for the run's terminal event (read through the same subscription as a stream)."""
    bus = request.app.state.bus
    bounds = await bus.bounds(rec.run_id)
    if bounds is not None and not bounds.ended:
        sub = await subscribe(bus, rec.run_id, bounds.last_seq)
        try:
            async for _batch in sub:
                pass
        except BusError as exc:
            log.info("waiting for run %s: %s", rec.run_id, exc)
        finally:
            await sub.aclose()
    for _ in range(100):  # the ending writes the record before its events: it is there
        fresh = await request.app.state.runs.store.get(rec.run_id)
        if fresh is None or fresh.terminal:
            return fresh or rec
        await asyncio.sleep(0.01)
    return fresh


async def join_run(request: Request) -> Response:
    rec = await path_run(request, await path_thread(request, runs=True))
    if not rec.terminal:
        rec = await _until_end(request, rec)
    return json_response(run_output(rec))


def _join_cursor(request: Request) -> tuple[int, int] | None:
    """``Last-Event-ID`` (or ``?last_event_id=``) as (after seq, frames of the next event
    already had): none = live from now, ``-1`` = from the start, ``N`` = strictly after N,
    ``N.k`` = after N and the first k frames event N+1 gave (see ``stream.encode``)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if raw == "-1":
        return 0, 0
    seq, _, part = raw.partition(".")
    if part:
        if not (part.isascii() and part.isdigit() and len(part) < 4):
            raise RequestError("bad_cursor", f"cursor {raw[:40]!r} is not a LangGraph stream event id")
        return parse_seq(seq), int(part)
    return parse_seq(seq), 0


def _join_modes(request: Request, rec: RunRecord) -> frozenset[str]:
    """The modes a join asks for; none given (the SDKs' reconnects resend no query): the
    run's own, as it was created."""
    q = request.query_params
    raw: list[str] = []
    for value in q.getlist("stream_mode") + q.getlist("stream_mode[]"):
        if value.strip().startswith("["):  # a JSON array, as langgraph-api also accepts
            try:
                listed = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise RequestError("invalid_request", "stream_mode is not a JSON array", status=422,
                                   field="stream_mode") from None
            if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
                raise RequestError("invalid_request", "stream_mode must list mode names", status=422,
                                   field="stream_mode")
            raw += listed
            continue
        raw += [v for v in value.split(",") if v]
    try:
        return parse_modes(raw or (rec.lg or {}).get("stream_mode"))
    except ValueError as exc:
        raise RequestError("invalid_request", str(exc), status=422, field="stream_mode") from None


async def join_stream(request: Request) -> Response:
    rec = await path_run(request, await path_thread(request, runs=True))
    cursor = _join_cursor(request)
    if cursor is None:
        bounds = await request.app.state.bus.bounds(rec.run_id)
        # Live from now; a finished run replays all of it and ends (never a silent hang).
        cursor = (0 if bounds is None or bounds.ended else bounds.last_seq), 0
    q = request.query_params
    cancel = flag(q.get("cancel_on_disconnect"))
    subgraphs = flag(q["stream_subgraphs"]) if q.get("stream_subgraphs") else bool(
        (rec.lg or {}).get("stream_subgraphs"))
    return await _stream(request, rec, after=cursor[0], skip=cursor[1], modes=_join_modes(request, rec),
                         subgraphs=subgraphs, cancel_on_disconnect=cancel)


async def _stream(request: Request, rec: RunRecord, *, after: int, modes: frozenset[str],
                  subgraphs: bool, cancel_on_disconnect: bool, skip: int = 0) -> Response:
    bus = request.app.state.bus
    sub = await subscribe(bus, rec.run_id, after, attach=False)  # 400 / 410
    framer = Framer(rec.run_id, rec.thread_id or "", modes, subgraphs)
    if after > 0 and modes & Framer.STATEFUL:
        # Frames of these modes depend on what came before (a message accumulated so far,
        # the step a task runs in): the framer reads the log up to the cursor first, so a
        # joiner gets exactly the frames an uncut client got.
        bounds = await bus.bounds(rec.run_id)
        start = (bounds.first_seq - 1) if bounds is not None else 0  # a trimmed log: what it holds
        try:
            for e in await bus.read(rec.run_id, start, max(0, after - start)):
                if e.seq <= after:
                    framer.frames(e)
        except BusError as exc:
            log.info("join of run %s: its earlier events could not be read (%s)", rec.run_id, exc)
    caller = await request_caller(request)
    state = request.app.state
    settings = state.settings
    pings = Pings(sub)
    # The lean response, as the native streams: nothing cancels the body from outside (a
    # client leaving stops the subscription), so its clean-up runs whole.
    return LeanEventSourceResponse(
        _frames(sub, framer, state, caller, cancel_on_disconnect, rec, skip, pings),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **run_location(rec)},
        ping_period=min(HEARTBEAT_S, settings.sse_ping_s), on_ping=pings.due_now, interrupt=sub.stop,
        sep="\n", send_timeout=settings.sse_send_timeout_s)


HEARTBEAT = b": heartbeat\n\n"  # LangGraph's keep-alive comment


async def _frames(sub: Any, framer: Framer, state: Any, caller: Caller, cancel_on_disconnect: bool,
                  rec: RunRecord, skip: int, pings: Pings) -> AsyncIterator[bytes]:
    session = state.identity.sessions.open(caller, lambda why: sub.stop(CredentialEnded(why)))
    metrics = state.metrics.transport("langgraph")
    metrics.subscribers.inc()
    try:
        try:
            await sub.open()
            async for batch in sub:
                if pings.due:
                    pings.due = False
                    yield HEARTBEAT
                if not batch:
                    continue
                chunks = []
                for e in batch:
                    chunks.append(encode(framer.frames(e), e.seq, skip))
                    skip = 0  # only the first event after the cursor was partly had
                out = b"".join(chunks)
                if out:
                    yield out
                metrics.batch(batch, len(batch), 0.0)
        except (CursorExpired, UnknownLog) as exc:
            yield frame("error", {"error": type(exc).__name__, "message": str(exc)}, None)
            yield end_frame()
            framer.ended = True
        except CredentialEnded as exc:
            yield frame("error", {"error": exc.why, "message": "the credential ended; rejoin with a "
                                  "new one and Last-Event-ID to continue"}, None)
        except BusError as exc:
            log.warning("LangGraph stream of run %s ended: %s", sub.run_id, exc)
        # A cursor at or past the terminal event gets nothing more (it had the end): exact.
    finally:
        if cancel_on_disconnect and not framer.ended:
            # The creating client left before the end: on_disconnect=cancel stops the run.
            # First: a clean-up being cancelled may not get past its next await.
            state.lg_tasks.spawn(_cancel_quietly(state, rec.run_id))
        metrics.subscribers.dec()
        session.close()
        await sub.aclose()


async def _cancel_quietly(state: Any, run_id: str) -> None:
    try:
        await state.runs.cancel(run_id, tenant=None, wait_s=0, reason="its stream disconnected (on_disconnect=cancel)")
    except Conflict:
        pass


async def cancel_run(request: Request) -> Response:
    thread = await path_thread(request, runs=True)
    rec = await path_run(request, thread)
    q = request.query_params
    wait = flag(q.get("wait"))
    action = q.get("action") or "interrupt"
    if action not in ("interrupt", "rollback"):
        raise RequestError("bad_query", "action must be interrupt or rollback")
    await thread_service(request).cancel(rec, action=action, wait=wait)
    if wait:
        await _until_end(request, rec)
        return Response(status_code=204)
    return Response(status_code=202)


async def cancel_many(request: Request) -> Response:
    req: CancelMany = await read_body(request, CancelMany)
    caller = await request_caller(request)
    svc = thread_service(request)
    store = request.app.state.runs.store
    targets: list[RunRecord] = []
    if req.run_ids:
        for rid in req.run_ids:
            rec = await store.get(rid)
            if rec is None or rec.thread_id is None or (caller.scope is not None and rec.tenant != caller.scope):
                raise NotFound(f"unknown run {rid!r}")
            targets.append(rec)
    elif req.thread_id:
        thread = await svc.get_thread(req.thread_id, tenant=caller.scope)
        targets = await svc.thread_runs(thread.thread_id)
    elif req.status:
        targets = [r for r in await store.list(tenant=caller.scope, limit=200) if r.thread_id is not None]
    else:
        raise RequestError("invalid_request", "give run_ids, thread_id or status", status=422)
    wanted = {"pending": {QUEUED}, "running": {RUNNING}}.get(req.status or "all", {QUEUED, RUNNING, INTERRUPTED})
    for rec in targets:
        if rec.status in wanted and not rec.terminal:
            await svc.cancel(rec, action="interrupt", wait=False)
    return Response(status_code=204)


# --------------------------------------------------------------------------- declarations

operations = [
    (create_run, op("POST", "/threads/{thread_id}/runs", "Start a run in the background", role=MEMBER,
                    body=RunCreate, ok_schema=OBJ, ok_headers=("Content-Location",), params=(TID,),
                    errors=(400, 404, 409, 413, 415, 422, 429))),
    (stream_new_run, op("POST", "/threads/{thread_id}/runs/stream", "Start a run and stream it", role=MEMBER,
                        body=RunCreate, ok_media="text/event-stream", ok_schema=SSE_SCHEMA,
                        ok_headers=LOCATION, params=(TID,), errors=(400, 404, 409, 413, 415, 422, 429))),
    (wait_new_run, op("POST", "/threads/{thread_id}/runs/wait", "Start a run and answer its final values",
                      role=MEMBER, body=RunCreate, ok_schema=ANY, params=(TID,),
                      errors=(400, 404, 409, 413, 415, 422, 429))),
    (list_runs, op("GET", "/threads/{thread_id}/runs", "The thread's runs, newest first", ok_schema=ARR,
                   params=(TID, Param("limit", "query", {"type": "integer"}),
                           Param("offset", "query", {"type": "integer"}),
                           Param("status", "query", {"type": "string"})))),
    (get_run, op("GET", "/threads/{thread_id}/runs/{run_id}", "A run of the thread", ok_schema=OBJ,
                 params=(TID, RID))),
    (delete_run, op("DELETE", "/threads/{thread_id}/runs/{run_id}", "Forget an ended run", role=MEMBER,
                    ok_status=204, params=(TID, RID), errors=(400, 404, 409))),
    (join_run, op("GET", "/threads/{thread_id}/runs/{run_id}/join", "Wait for the run; its final values",
                  ok_schema=ANY, params=(TID, RID))),
    (join_stream, op("GET", "/threads/{thread_id}/runs/{run_id}/stream",
                     "Join a run's stream (Last-Event-ID: strictly after; -1: from the start)",
                     ok_media="text/event-stream", ok_schema=SSE_SCHEMA, ok_headers=LOCATION,
                     params=JOIN_PARAMS, errors=(400, 404, 410, 422))),
    (cancel_run, op("POST", "/threads/{thread_id}/runs/{run_id}/cancel",
                    "Cancel a run (action interrupt|rollback; wait=1 answers 204 once it ended)",
                    role=MEMBER, ok_status=202, also_ok=(204,),
                    params=(TID, RID, Param("wait", "query", {"type": "boolean"}),
                            Param("action", "query", {"type": "string", "enum": ["interrupt", "rollback"]})),
                    errors=(400, 404, 409))),
    (stream_new_run, op("POST", "/runs/stream", "Start a threadless run and stream it", role=MEMBER,
                        body=RunCreate, ok_media="text/event-stream", ok_schema=SSE_SCHEMA,
                        ok_headers=LOCATION, errors=(400, 404, 409, 413, 415, 422, 429))),
    (wait_new_run, op("POST", "/runs/wait", "Start a threadless run and answer its final values",
                      role=MEMBER, body=RunCreate, ok_schema=ANY, errors=(400, 404, 409, 413, 415, 422, 429))),
    (cancel_many, op("POST", "/runs/cancel", "Cancel runs by ids, thread or status", role=MEMBER,
                     ok_status=204, body=CancelMany, errors=(400, 404, 413, 415, 422))),
]
