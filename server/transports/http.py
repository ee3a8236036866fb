"""The JSON HTTP API over RunService and the agent registry.

Handlers raise (``RequestError``, ``ServiceError``, ``BusError``); the app renders every
one of them through ``common.api_error`` (see ``exception_handlers``), so a failure has
one status and code whichever door it came through.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events import dumps
from ..runs.store import STATUSES
from .common import RequestError, SubmitRequest, check_idempotency_key, request_caller, validate


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


async def read_json(request: Request) -> Any:
    """The body as JSON, counted as it is read (a chunked body has no Content-Length)."""
    limit = request.app.state.settings.max_body_bytes
    too_large = RequestError("body_too_large", f"request body exceeds {limit} bytes", status=413)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise RequestError("malformed_json", f"request body is not valid JSON: {exc}") from None


async def submit_run(request: Request) -> Response:
    req: SubmitRequest = validate(SubmitRequest, await read_json(request))
    idem = check_idempotency_key(request.headers.get("idempotency-key"), "Idempotency-Key")
    caller = await request_caller(request)
    rec, created = await request.app.state.runs.submit(
        req.agent, req.input, metadata=req.metadata, tenant=caller.tenant,
        idempotency_key=idem)
    url = f"/runs/{rec.run_id}"
    body = {"run_id": rec.run_id, "status": rec.status, "agent": rec.agent,
            "events_url": f"{url}/events", "room": f"run:{rec.run_id}", "created": created}
    return JSONBytes(body, status_code=202, headers={"Location": url})


async def get_run(request: Request) -> Response:
    caller = await request_caller(request)
    return JSONBytes(await request.app.state.runs.snapshot(request.path_params["run_id"],
                                                           tenant=caller.tenant))


async def list_runs(request: Request) -> Response:
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise RequestError("bad_status", f"status must be one of {sorted(STATUSES)}")
    try:
        limit = int(q.get("limit", "50"))
        before = float(q["before"]) if q.get("before") else None
    except ValueError:
        raise RequestError("bad_query", "limit must be an integer and before a number") from None
    if not 1 <= limit <= 200:
        raise RequestError("bad_query", "limit must be between 1 and 200")
    caller = await request_caller(request)
    rows = await request.app.state.runs.list(tenant=caller.tenant, status=status,
                                             limit=limit, before=before)
    next_before = rows[-1].created_at if len(rows) == limit else None
    return JSONBytes({"runs": [r.to_dict() for r in rows], "next_before": next_before})


async def cancel_run(request: Request) -> Response:
    caller = await request_caller(request)
    rec = await request.app.state.runs.cancel(request.path_params["run_id"], tenant=caller.tenant)
    return JSONBytes(rec.to_dict())


async def resume_run(request: Request) -> Response:
    """Answer an interrupted run: body {"value": <any JSON>}."""
    payload = await read_json(request)
    if not isinstance(payload, dict) or "value" not in payload:
        raise RequestError("invalid_request", 'body must be an object with a "value"',
                           status=422, field="value")
    caller = await request_caller(request)
    rec = await request.app.state.runs.answer(request.path_params["run_id"], payload["value"],
                                              tenant=caller.tenant)
    return JSONBytes(rec.to_dict(), status_code=202)


async def list_agents(request: Request) -> Response:
    return JSONBytes({"agents": request.app.state.registry.describe()})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    if not await request.app.state.bus.ping():
        raise RequestError("not_ready", "the event bus backend is unreachable", status=503)
    return JSONResponse({"status": "ready"})


routes = [
    Route("/runs", submit_run, methods=["POST"]),
    Route("/runs", list_runs, methods=["GET"]),
    Route("/runs/{run_id}", get_run, methods=["GET"]),
    Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/runs/{run_id}/resume", resume_run, methods=["POST"]),
    Route("/agents", list_agents, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
