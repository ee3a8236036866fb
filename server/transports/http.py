"""The JSON HTTP API over RunService and the agent registry."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events import dumps
from ..runs.service import ServiceError
from ..runs.store import DEFAULT_TENANT, STATUSES
from .errors import error_response


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent: StrictStr = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class BodyTooLarge(Exception):
    pass


def tenant_of(request: Request) -> str:
    """The caller's tenant; one fixed tenant until authentication lands."""
    return getattr(request.state, "tenant", None) or DEFAULT_TENANT


def service_error(exc: ServiceError) -> JSONResponse:
    """The JSON error for a ServiceError; its detail joins the body, never as keyword arguments.

    Spreading ``**exc.detail`` into ``error_response`` broke on a detail named like one of its
    parameters: ``Conflict(..., status="succeeded")`` (cancel of an ended run) was a 500.
    """
    body = {**exc.detail, "code": exc.code, "message": exc.message}
    return JSONResponse({"error": body}, status_code=exc.status, headers=exc.headers or None)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def field_of(err: ValidationError) -> str:
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or "body"


async def submit_run(request: Request) -> Response:
    settings = request.app.state.settings
    try:
        raw = await read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        return error_response(413, "body_too_large",
                              f"request body exceeds {settings.max_body_bytes} bytes")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_response(400, "malformed_json", f"request body is not valid JSON: {exc}")
    try:
        req = SubmitRequest.model_validate(payload)
    except ValidationError as exc:
        field = field_of(exc)
        msg = exc.errors()[0]["msg"]
        return error_response(422, "invalid_request", f"{field}: {msg}", field=field)
    idem = request.headers.get("idempotency-key")
    if idem is not None and not (0 < len(idem) <= 255):
        return error_response(400, "bad_idempotency_key", "Idempotency-Key must be 1-255 characters")
    try:
        rec, created = await request.app.state.runs.submit(
            req.agent, req.input, metadata=req.metadata, tenant=tenant_of(request),
            idempotency_key=idem)
    except ServiceError as exc:
        return service_error(exc)
    url = f"/runs/{rec.run_id}"
    body = {"run_id": rec.run_id, "status": rec.status, "agent": rec.agent,
            "events_url": f"{url}/events", "room": f"run:{rec.run_id}", "created": created}
    return JSONBytes(body, status_code=202, headers={"Location": url})


async def get_run(request: Request) -> Response:
    try:
        snap = await request.app.state.runs.snapshot(request.path_params["run_id"],
                                                     tenant=tenant_of(request))
    except ServiceError as exc:
        return service_error(exc)
    return JSONBytes(snap)


async def list_runs(request: Request) -> Response:
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        return error_response(400, "bad_status", f"status must be one of {sorted(STATUSES)}")
    try:
        limit = int(q.get("limit", "50"))
        before = float(q["before"]) if q.get("before") else None
    except ValueError:
        return error_response(400, "bad_query", "limit must be an integer and before a number")
    if not 1 <= limit <= 200:
        return error_response(400, "bad_query", "limit must be between 1 and 200")
    rows = await request.app.state.runs.list(tenant=tenant_of(request), status=status,
                                             limit=limit, before=before)
    next_before = rows[-1].created_at if len(rows) == limit else None
    return JSONBytes({"runs": [r.to_dict() for r in rows], "next_before": next_before})


async def cancel_run(request: Request) -> Response:
    try:
        rec = await request.app.state.runs.cancel(request.path_params["run_id"],
                                                  tenant=tenant_of(request))
    except ServiceError as exc:
        return service_error(exc)
    return JSONBytes(rec.to_dict())


async def resume_run(request: Request) -> Response:
    """Answer an interrupted run: body {"value": <any JSON>}."""
    settings = request.app.state.settings
    try:
        payload = orjson.loads(await read_body(request, settings.max_body_bytes))
    except BodyTooLarge:
        return error_response(413, "body_too_large", f"request body exceeds {settings.max_body_bytes} bytes")
    except orjson.JSONDecodeError as exc:
        return error_response(400, "malformed_json", f"request body is not valid JSON: {exc}")
    if not isinstance(payload, dict) or "value" not in payload:
        return error_response(422, "invalid_request", 'body must be an object with a "value"', field="value")
    try:
        rec = await request.app.state.runs.answer(request.path_params["run_id"], payload["value"],
                                                  tenant=tenant_of(request))
    except ServiceError as exc:
        return service_error(exc)
    return JSONBytes(rec.to_dict(), status_code=202)


async def list_agents(request: Request) -> Response:
    return JSONBytes({"agents": request.app.state.registry.describe()})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    ok = await request.app.state.bus.ping()
    if not ok:
        return error_response(503, "not_ready", "the event bus backend is unreachable")
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
