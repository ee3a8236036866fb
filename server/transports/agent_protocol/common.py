"""What the LangGraph protocol's routes share: the caller's thread and run named in the path,
a body read into its model, LangGraph's view of a run, and the OpenAPI words the routes are
declared with (see ``threads.py`` and ``runs.py``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...auth import VIEWER, Caller
from ...runs.service import NotFound
from ...runs.store import FAILED, INTERRUPTED, QUEUED, RUNNING, SUCCEEDED, RunRecord
from ...threads.service import ThreadService, hidden, iso
from ...threads.store import ThreadRecord
from ..common import request_caller, validate
from ..http import JSONBytes, read_json
from ..openapi import Operation, Param


def thread_service(request: Request) -> ThreadService:
    return request.app.state.threads


async def read_body(request: Request, model: Any) -> Any:
    raw = await read_json(request, empty={})
    return validate(model, {} if raw is None else raw)


def flag(raw: str | None) -> bool:
    """A boolean query parameter as either SDK spells it (true/True/1/yes)."""
    return (raw or "").strip().lower() in ("true", "1", "yes")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
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


def run_location(rec: RunRecord) -> dict[str, str]:
    url = f"/threads/{rec.thread_id}/runs/{rec.run_id}"
    return {"Content-Location": url, "Location": f"{url}/stream"}


# --------------------------------------------------------------------------- the thread and run in the path


async def path_thread(request: Request, caller: Caller | None = None, *, runs: bool = False) -> ThreadRecord:
    """The thread in the path, if the caller's; ``runs``: for its runs' endpoints, where a
    threadless run's own thread (hidden from thread endpoints) is found too."""
    caller = caller or await request_caller(request)
    return await thread_service(request).get_thread(request.path_params["thread_id"], tenant=caller.scope,
                                                    ephemeral=runs)


async def path_run(request: Request, thread: ThreadRecord) -> RunRecord:
    run_id = request.path_params["run_id"]
    rec = await request.app.state.runs.store.get(run_id)
    if rec is None or rec.thread_id != thread.thread_id or hidden(rec):
        raise NotFound(f"unknown run {run_id!r} of thread {thread.thread_id!r}")
    return rec


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


def op(method: str, path: str, summary: str, *, role: str = VIEWER, **kw: Any) -> Operation:
    kw.setdefault("tags", ("langgraph",))
    kw.setdefault("errors", (400, 404, 422))
    return Operation(method, path, summary, role=role, **kw)
