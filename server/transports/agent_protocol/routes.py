"""LangGraph's Agent Server HTTP protocol: assistants, threads, runs and their streams.

A thin adapter, like the other transports: runs go through ``RunService`` (queue, fair
share, lifecycle), threads through ``ThreadService``, and every stream is
``bus.subscribe(run, after)`` framed by ``stream.Framer``. Paths and shapes are the ones
the official SDKs (``langgraph-sdk``, ``@langchain/langgraph-sdk``) and ``RemoteGraph`` read.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from ...auth import MEMBER, VIEWER, Caller
from ...bus.base import BusError, CursorExpired, UnknownLog, subscribe
from ...runs.service import Conflict, NotFound
from ...runs.store import FAILED, INTERRUPTED, QUEUED, RUNNING, SUCCEEDED, RunRecord
from ...threads.service import ThreadService, hidden, iso
from ...threads.store import ThreadRecord
from ..common import RequestError, parse_seq, request_caller, validate
from ..http import JSONBytes, read_json
from ..openapi import Operation, Param
from ..sse import CredentialEnded, Pings
from ..sse_response import LeanEventSourceResponse
from .models import (AssistantSearch, CancelMany, HistoryRequest, RunCreate, StateAt, StateUpdate, ThreadCreate,
                     ThreadPatch, ThreadSearch)
from .stream import Framer, encode, end_frame, frame, parse_modes

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


def _threads(request: Request) -> ThreadService:
    return request.app.state.threads


async def _body(request: Request, model: Any) -> Any:
    raw = await read_json(request, empty={})
    return validate(model, {} if raw is None else raw)


def _flag(raw: str | None) -> bool:
    """A boolean query parameter as either SDK spells it (true/True/1/yes)."""
    return (raw or "").strip().lower() in ("true", "1", "yes")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONBytes(data, status_code=status, headers=headers)


# --------------------------------------------------------------------------- views


def lg_status(rec: RunRecord) -> str:
    """Our run status in LangGraph's words."""
    if rec.status == QUEUED:
        return "pending"
    if rec.status == RUNNING:
        return "running"
    if rec.status == INTERRUPTED:
        return "interrupted"
    if rec.status == SUCCEEDED:
        return "success"  # also when it stopped at interrupt(): the thread waits, as the official servers say
    if rec.status == FAILED:
        return "timeout" if (rec.error or {}).get("code") == "timeout" else "error"
    return "interrupted"  # cancelled: stopped by a client or by a newer run on its thread


def run_view(rec: RunRecord) -> dict[str, Any]:
    opts = rec.lg or {}
    return {"run_id": rec.run_id, "thread_id": rec.thread_id, "assistant_id": opts.get("assistant_id"),
            "created_at": iso(rec.created_at), "updated_at": iso(rec.ended_at or rec.started_at or rec.created_at),
            "status": lg_status(rec), "metadata": rec.metadata,
            "multitask_strategy": opts.get("multitask_strategy"),
            "kwargs": {k: opts.get(k) for k in ("input", "command", "config", "context", "stream_mode",
                                                "interrupt_before", "interrupt_after")}}


def run_output(rec: RunRecord) -> Any:
    """What ``/runs/wait`` and ``join`` answer: the last values (with ``__interrupt__``), or the error."""
    if rec.status == FAILED:
        err = rec.error or {}
        return {"__error__": {"error": err.get("code", "error"), "message": err.get("message", "")}}
    delivery = rec.delivery or {}
    if delivery.get("held") and delivery.get("delivered_at") is None:
        # Held by the delivery gate: not the answer until POST /runs/{id}/deliver.
        return {"__held__": {"verdict": rec.verdict}}
    # Always an object: the JS SDK looks for "__error__" in it.
    return (rec.result if rec.status == SUCCEEDED else None) or {}


def _location(rec: RunRecord) -> dict[str, str]:
    url = f"/threads/{rec.thread_id}/runs/{rec.run_id}"
    return {"Content-Location": url, "Location": f"{url}/stream"}


# --------------------------------------------------------------------------- assistants


async def search_assistants(request: Request) -> Response:
    q: AssistantSearch = await _body(request, AssistantSearch)
    rows = [a for a in _threads(request).assistants()
            if (q.graph_id is None or a["graph_id"] == q.graph_id)
            and (q.name is None or a["name"] == q.name)
            and (not q.metadata or all(a["metadata"].get(k) == v for k, v in q.metadata.items()))]
    return _json(rows[q.offset:q.offset + q.limit])


async def get_assistant(request: Request) -> Response:
    svc = _threads(request)
    return _json(svc.assistant(svc.resolve_assistant(request.path_params["assistant_id"])))


def _schema(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a graph whose schema cannot be rendered still runs
        return None


async def assistant_schemas(request: Request) -> Response:
    svc = _threads(request)
    name = svc.resolve_assistant(request.path_params["assistant_id"])
    graph = svc.registry.get(name).graph
    return _json({"graph_id": name,
                  "input_schema": _schema(graph.get_input_jsonschema),
                  "output_schema": _schema(graph.get_output_jsonschema),
                  "state_schema": _schema(lambda: _state_schema(graph)),
                  "config_schema": _schema(graph.get_config_jsonschema),
                  "context_schema": _schema(graph.get_context_jsonschema)})


def _state_schema(graph: Any) -> Any:
    """The JSON schema of the graph's whole state (every channel, not only its input)."""
    from pydantic import TypeAdapter

    state = getattr(getattr(graph, "builder", None), "state_schema", None)
    if state is None:
        return graph.get_input_jsonschema()
    return TypeAdapter(state).json_schema()


async def assistant_graph(request: Request) -> Response:
    svc = _threads(request)
    name = svc.resolve_assistant(request.path_params["assistant_id"])
    xray = _flag(request.query_params.get("xray"))
    graph = svc.registry.get(name).graph
    drawn = await asyncio.to_thread(lambda: graph.get_graph(xray=xray).to_json())
    return _json(drawn)


# --------------------------------------------------------------------------- threads


async def _thread(request: Request, caller: Caller | None = None, *, runs: bool = False) -> ThreadRecord:
    """The thread in the path, if the caller's; ``runs``: for its runs' endpoints, where a
    threadless run's own thread (hidden from thread endpoints) is found too."""
    caller = caller or await request_caller(request)
    return await _threads(request).get_thread(request.path_params["thread_id"], tenant=caller.scope,
                                              ephemeral=runs)


async def create_thread(request: Request) -> Response:
    req: ThreadCreate = await _body(request, ThreadCreate)
    caller = await request_caller(request)
    rec = await _threads(request).create_thread(tenant=caller.tenant, thread_id=req.thread_id,
                                                metadata=req.metadata or {},
                                                if_exists=req.if_exists or "raise")
    return _json(await _threads(request).thread_view(rec))


async def get_thread(request: Request) -> Response:
    return _json(await _threads(request).thread_view(await _thread(request)))


async def patch_thread(request: Request) -> Response:
    req: ThreadPatch = await _body(request, ThreadPatch)
    rec = await _thread(request)
    svc = _threads(request)
    import time

    rec = await svc.threads.update(rec.thread_id, metadata={**rec.metadata, **(req.metadata or {})},
                                   updated_at=time.time()) or rec
    return _json(await svc.thread_view(rec))


async def delete_thread(request: Request) -> Response:
    caller = await request_caller(request)
    await _threads(request).delete_thread(request.path_params["thread_id"], tenant=caller.scope)
    return Response(status_code=204)


async def search_threads(request: Request) -> Response:
    req: ThreadSearch = await _body(request, ThreadSearch)
    caller = await request_caller(request)
    rows = await _threads(request).search_threads(tenant=caller.scope, metadata=req.metadata,
                                                  status=req.status, limit=req.limit, offset=req.offset)
    return _json(rows)


async def thread_state(request: Request) -> Response:
    rec = await _thread(request)
    subgraphs = _flag(request.query_params.get("subgraphs"))
    return _json(await _threads(request).state(rec, checkpoint_id=request.path_params.get("checkpoint_id"),
                                               subgraphs=subgraphs))


async def thread_state_at(request: Request) -> Response:
    """``POST /threads/{id}/state/checkpoint`` {checkpoint, subgraphs}: how RemoteGraph reads state."""
    req: StateAt = await _body(request, StateAt)
    rec = await _thread(request)
    checkpoint_id = (req.checkpoint or {}).get("checkpoint_id")
    return _json(await _threads(request).state(rec, checkpoint_id=checkpoint_id, subgraphs=bool(req.subgraphs)))


async def update_thread_state(request: Request) -> Response:
    req: StateUpdate = await _body(request, StateUpdate)
    rec = await _thread(request)
    checkpoint_id = req.checkpoint_id or (req.checkpoint or {}).get("checkpoint_id")
    return _json(await _threads(request).update_state(rec, values=req.values, as_node=req.as_node,
                                                      checkpoint_id=checkpoint_id))


async def thread_history(request: Request) -> Response:
    req: HistoryRequest = await _body(request, HistoryRequest)
    rec = await _thread(request)
    before = req.before.get("checkpoint_id") if isinstance(req.before, dict) else req.before
    return _json(await _threads(request).history(rec, limit=req.limit, before=before,
                                                 metadata=req.metadata))


# --------------------------------------------------------------------------- runs


async def _run(request: Request, thread: ThreadRecord) -> RunRecord:
    run_id = request.path_params["run_id"]
    rec = await request.app.state.runs.store.get(run_id)
    if rec is None or rec.thread_id != thread.thread_id or hidden(rec):
        raise NotFound(f"unknown run {run_id!r} of thread {thread.thread_id!r}")
    return rec


async def _start(request: Request, req: RunCreate, *, thread_id: str | None) -> tuple[RunRecord, bool]:
    """Create the run (and its thread when asked); returns (record, cancel_on_disconnect)."""
    svc = _threads(request)
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
    req: RunCreate = await _body(request, RunCreate)
    rec, _ = await _start(request, req, thread_id=request.path_params["thread_id"])
    return _json(run_view(rec), headers={"Content-Location": _location(rec)["Content-Location"]})


async def stream_new_run(request: Request) -> Response:
    req: RunCreate = await _body(request, RunCreate)
    rec, cancel = await _start(request, req, thread_id=request.path_params.get("thread_id"))
    return await _stream(request, rec, after=0, modes=parse_modes(req.stream_mode),
                         subgraphs=bool(req.stream_subgraphs), cancel_on_disconnect=cancel)


async def wait_new_run(request: Request) -> Response:
    req: RunCreate = await _body(request, RunCreate)
    rec, _ = await _start(request, req, thread_id=request.path_params.get("thread_id"))
    rec = await _until_end(request, rec)
    return _json(run_output(rec), headers={"Content-Location": _location(rec)["Content-Location"]})


async def list_runs(request: Request) -> Response:
    thread = await _thread(request)
    q = request.query_params
    try:
        limit, offset = int(q.get("limit", "10")), int(q.get("offset", "0"))
    except ValueError:
        raise RequestError("bad_query", "limit and offset must be integers") from None
    if not (1 <= limit <= 1000 and offset >= 0):
        raise RequestError("bad_query", "limit must be 1-1000 and offset at least 0")
    status = q.get("status")
    rows = [run_view(r) for r in await _threads(request).thread_runs(thread.thread_id)]
    if status:
        rows = [r for r in rows if r["status"] == status]
    return _json(rows[offset:offset + limit])


async def get_run(request: Request) -> Response:
    return _json(run_view(await _run(request, await _thread(request, runs=True))))


async def delete_run(request: Request) -> Response:
    rec = await _run(request, await _thread(request))
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
    rec = await _run(request, await _thread(request, runs=True))
    if not rec.terminal:
        rec = await _until_end(request, rec)
    return _json(run_output(rec))


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
    rec = await _run(request, await _thread(request, runs=True))
    cursor = _join_cursor(request)
    if cursor is None:
        bounds = await request.app.state.bus.bounds(rec.run_id)
        # Live from now; a finished run replays all of it and ends (never a silent hang).
        cursor = (0 if bounds is None or bounds.ended else bounds.last_seq), 0
    q = request.query_params
    cancel = _flag(q.get("cancel_on_disconnect"))
    subgraphs = _flag(q["stream_subgraphs"]) if q.get("stream_subgraphs") else bool(
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
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_location(rec)},
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
    thread = await _thread(request, runs=True)
    rec = await _run(request, thread)
    q = request.query_params
    wait = _flag(q.get("wait"))
    action = q.get("action") or "interrupt"
    if action not in ("interrupt", "rollback"):
        raise RequestError("bad_query", "action must be interrupt or rollback")
    await _threads(request).cancel(rec, action=action, wait=wait)
    if wait:
        await _until_end(request, rec)
        return Response(status_code=204)
    return Response(status_code=202)


async def cancel_many(request: Request) -> Response:
    req: CancelMany = await _body(request, CancelMany)
    caller = await request_caller(request)
    svc = _threads(request)
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

TID = Param("thread_id", "path", {"type": "string", "minLength": 1})
RID = Param("run_id", "path", {"type": "string", "minLength": 1})
AID = Param("assistant_id", "path", {"type": "string", "minLength": 1})
OBJ = {"type": "object"}
ARR = {"type": "array", "items": {"type": "object"}}
ANY: dict[str, Any] = {}
SSE_SCHEMA = {"type": "object", "description": "LangGraph stream events: `metadata` first, one event per "
              "chunk of each requested stream mode (`mode|ns` for subgraphs), `error`, then `end`; "
              "`id:` is the run's seq (Last-Event-ID to rejoin); `: heartbeat` comments"}
LOCATION = ("Content-Location", "Location")
JOIN_PARAMS = (TID, RID,
               Param("Last-Event-ID", "header", {"type": "string", "pattern": "^(-1|[0-9]{1,18})$"},
                     "rejoin strictly after this id; -1: from the start; none: live from now"),
               Param("stream_mode", "query", {"type": "string"}, "modes to send (repeat or comma-separate)"),
               Param("cancel_on_disconnect", "query", {"type": "boolean"}),
               Param("stream_subgraphs", "query", {"type": "boolean"}))


def _op(method: str, path: str, summary: str, *, role: str = VIEWER, **kw: Any) -> Operation:
    kw.setdefault("tags", ("langgraph",))
    kw.setdefault("errors", (400, 404, 422))
    return Operation(method, path, summary, role=role, **kw)


operations = [
    (search_assistants, _op("POST", "/assistants/search", "Assistants: one per registered agent",
                            body=AssistantSearch, ok_schema=ARR, errors=(400, 413, 415, 422))),
    (get_assistant, _op("GET", "/assistants/{assistant_id}", "An assistant, by its id or graph name",
                        ok_schema=OBJ, params=(AID,))),
    (assistant_schemas, _op("GET", "/assistants/{assistant_id}/schemas", "The graph's JSON schemas",
                            ok_schema=OBJ, params=(AID,))),
    (assistant_graph, _op("GET", "/assistants/{assistant_id}/graph", "The graph's nodes and edges",
                          ok_schema=OBJ, params=(AID, Param("xray", "query", {"type": "boolean"})))),
    (create_thread, _op("POST", "/threads", "Create a thread (thread_id, if_exists, metadata)", role=MEMBER,
                        body=ThreadCreate, ok_schema=OBJ, errors=(400, 409, 413, 415, 422))),
    (search_threads, _op("POST", "/threads/search", "The caller's threads, newest first",
                         body=ThreadSearch, ok_schema=ARR, errors=(400, 413, 415, 422))),
    (get_thread, _op("GET", "/threads/{thread_id}", "A thread: status, values, interrupts",
                     ok_schema=OBJ, params=(TID,))),
    (patch_thread, _op("PATCH", "/threads/{thread_id}", "Merge metadata into a thread", role=MEMBER,
                       body=ThreadPatch, ok_schema=OBJ, params=(TID,), errors=(400, 404, 413, 415, 422))),
    (delete_thread, _op("DELETE", "/threads/{thread_id}", "Delete a thread, its runs and checkpoints",
                        role=MEMBER, ok_status=204, params=(TID,))),
    (thread_state, _op("GET", "/threads/{thread_id}/state", "The thread's state (checkpoint null when fresh)",
                       ok_schema=OBJ, params=(TID, Param("subgraphs", "query", {"type": "boolean"})))),
    (thread_state, _op("GET", "/threads/{thread_id}/state/{checkpoint_id}", "The thread's state at a checkpoint",
                       ok_schema=OBJ, params=(TID, Param("checkpoint_id", "path", {"type": "string"})))),
    (thread_state_at, _op("POST", "/threads/{thread_id}/state/checkpoint", "The thread's state at a checkpoint",
                          body=StateAt, ok_schema=OBJ, params=(TID,), errors=(400, 404, 413, 415, 422))),
    (update_thread_state, _op("POST", "/threads/{thread_id}/state", "Update the thread's state (as a node)",
                              role=MEMBER, body=StateUpdate, ok_schema=OBJ, params=(TID,),
                              errors=(400, 404, 409, 413, 415, 422))),
    (thread_history, _op("POST", "/threads/{thread_id}/history", "The thread's states, newest first",
                         body=HistoryRequest, ok_schema=ARR, params=(TID,), errors=(400, 404, 413, 415, 422))),
    (create_run, _op("POST", "/threads/{thread_id}/runs", "Start a run in the background", role=MEMBER,
                     body=RunCreate, ok_schema=OBJ, ok_headers=("Content-Location",), params=(TID,),
                     errors=(400, 404, 409, 413, 415, 422, 429))),
    (stream_new_run, _op("POST", "/threads/{thread_id}/runs/stream", "Start a run and stream it", role=MEMBER,
                         body=RunCreate, ok_media="text/event-stream", ok_schema=SSE_SCHEMA,
                         ok_headers=LOCATION, params=(TID,), errors=(400, 404, 409, 413, 415, 422, 429))),
    (wait_new_run, _op("POST", "/threads/{thread_id}/runs/wait", "Start a run and answer its final values",
                       role=MEMBER, body=RunCreate, ok_schema=ANY, params=(TID,),
                       errors=(400, 404, 409, 413, 415, 422, 429))),
    (list_runs, _op("GET", "/threads/{thread_id}/runs", "The thread's runs, newest first", ok_schema=ARR,
                    params=(TID, Param("limit", "query", {"type": "integer"}),
                            Param("offset", "query", {"type": "integer"}),
                            Param("status", "query", {"type": "string"})))),
    (get_run, _op("GET", "/threads/{thread_id}/runs/{run_id}", "A run of the thread", ok_schema=OBJ,
                  params=(TID, RID))),
    (delete_run, _op("DELETE", "/threads/{thread_id}/runs/{run_id}", "Forget an ended run", role=MEMBER,
                     ok_status=204, params=(TID, RID), errors=(400, 404, 409))),
    (join_run, _op("GET", "/threads/{thread_id}/runs/{run_id}/join", "Wait for the run; its final values",
                   ok_schema=ANY, params=(TID, RID))),
    (join_stream, _op("GET", "/threads/{thread_id}/runs/{run_id}/stream",
                      "Join a run's stream (Last-Event-ID: strictly after; -1: from the start)",
                      ok_media="text/event-stream", ok_schema=SSE_SCHEMA, ok_headers=LOCATION,
                      params=JOIN_PARAMS, errors=(400, 404, 410, 422))),
    (cancel_run, _op("POST", "/threads/{thread_id}/runs/{run_id}/cancel",
                     "Cancel a run (action interrupt|rollback; wait=1 answers 204 once it ended)",
                     role=MEMBER, ok_status=202, also_ok=(204,),
                     params=(TID, RID, Param("wait", "query", {"type": "boolean"}),
                             Param("action", "query", {"type": "string", "enum": ["interrupt", "rollback"]})),
                     errors=(400, 404, 409))),
    (stream_new_run, _op("POST", "/runs/stream", "Start a threadless run and stream it", role=MEMBER,
                         body=RunCreate, ok_media="text/event-stream", ok_schema=SSE_SCHEMA,
                         ok_headers=LOCATION, errors=(400, 404, 409, 413, 415, 422, 429))),
    (wait_new_run, _op("POST", "/runs/wait", "Start a threadless run and answer its final values",
                       role=MEMBER, body=RunCreate, ok_schema=ANY, errors=(400, 404, 409, 413, 415, 422, 429))),
    (cancel_many, _op("POST", "/runs/cancel", "Cancel runs by ids, thread or status", role=MEMBER,
                      ok_status=204, body=CancelMany, errors=(400, 404, 413, 415, 422))),
]
