"""The JSON HTTP API over RunService and the agent registry.

Handlers raise (``RequestError``, ``ServiceError``, ``BusError``); the app renders every
one of them through ``common.api_error`` (see ``exception_handlers``), so a failure has
one status and code whichever door it came through.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..events import dumps
from ..observability.exposition import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..runs.store import STATUSES
from ..auth import ADMIN, AUTHENTICATED, MEMBER, VIEWER
from ..auth.caller import TENANT_RE
from .api_models import (AgentList, AnswerRequest, Health, RevokeRequest, Revoked, RunPage, RunSnapshot, RunView,
                         SubmitAccepted, Ticket, WhoAmI, dump)
from .common import RequestError, SubmitRequest, check_idempotency_key, request_caller, validate
from . import polling
from .openapi import Operation, Param


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, *, empty: Any = None) -> Any:
    """The body as JSON, counted as it is read (a chunked body has no Content-Length).

    A body declared as something else is refused before it is read: form posts and
    text bodies are mistakes a client should hear about, not have guessed at. A body
    with no Content-Type at all is read as JSON (``curl --data`` habits aside, that is
    what a bare client means).
    """
    declared_type = request.headers.get("content-type")
    if declared_type is not None and not _is_json(declared_type):
        raise RequestError("unsupported_media_type",
                           f"the body must be JSON (Content-Type: application/json), not {declared_type[:80]!r}",
                           status=415)
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
    if not size and empty is not None:
        return empty  # an empty body where the route has a default (the LangGraph protocol's)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise RequestError("malformed_json", f"request body is not valid JSON: {exc}") from None


async def submit_run(request: Request) -> Response:
    req: SubmitRequest = validate(SubmitRequest, await read_json(request))
    idem = check_idempotency_key(request.headers.get("idempotency-key"), "Idempotency-Key")
    caller = await request_caller(request)
    rec, created = await request.app.state.runs.submit(
        req.agent, req.input, metadata=req.metadata, tenant=caller.tenant, sub=caller.sub,
        idempotency_key=idem, context=req.context.model_dump() if req.context else None)
    url = f"/runs/{rec.run_id}"
    body = SubmitAccepted(run_id=rec.run_id, status=rec.status, agent=rec.agent,
                          events_url=f"{url}/events", room=f"run:{rec.run_id}", created=created)
    return JSONBytes(dump(body), status_code=202, headers={"Location": url})


async def get_run(request: Request) -> Response:
    """The snapshot as a conditional GET: ETag, If-None-Match -> 304, ?wait= long-polls."""
    caller = await request_caller(request)
    return await polling.run_snapshot(request, request.path_params["run_id"], caller.scope)


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
    tenant = caller.scope
    wanted = q.get("tenant")
    if wanted is not None:
        if not TENANT_RE.match(wanted):
            raise RequestError("bad_query", "tenant must be a tenant name")
        if tenant is not None and wanted != tenant:
            # Another tenant's runs do not exist for this caller.
            return JSONBytes(dump(RunPage(runs=[], next_before=None)))
        tenant = wanted
    rows = await request.app.state.runs.list(tenant=tenant, status=status,
                                             limit=limit, before=before)
    next_before = rows[-1].created_at if len(rows) == limit else None
    gate = request.app.state.backend.gate
    views = [RunView.model_validate({**r.to_dict(), **({"result": None} if gate.withheld(r) else {})})
             for r in rows]  # a result the delivery gate holds is nobody's to read yet
    page = RunPage(runs=views, next_before=next_before)
    return JSONBytes(dump(page))


async def cancel_run(request: Request) -> Response:
    caller = await request_caller(request)
    rec = await request.app.state.runs.cancel(request.path_params["run_id"], tenant=caller.scope)
    return JSONBytes(dump(RunView.model_validate(rec.to_dict())))


async def resume_run(request: Request) -> Response:
    """Answer an interrupted run: body {"value": <any JSON>}."""
    payload = await read_json(request)
    if not isinstance(payload, dict) or "value" not in payload:
        raise RequestError("invalid_request", 'body must be an object with a "value"',
                           status=422, field="value")
    caller = await request_caller(request)  # the body's schema is AnswerRequest (any JSON "value")
    rec = await request.app.state.runs.answer(request.path_params["run_id"], payload["value"],
                                              tenant=caller.scope)
    return JSONBytes(dump(RunView.model_validate(rec.to_dict())), status_code=202)


async def mint_ticket(request: Request) -> Response:
    """A short-lived ticket for this run's SSE stream: EventSource cannot send headers, and a
    long-lived token must never sit in a URL (logs, history, Referer)."""
    caller = await request_caller(request)
    run_id = request.path_params["run_id"]
    await request.app.state.runs.get(run_id, tenant=caller.scope)  # another tenant's run is a 404
    ticket, expires_in = await request.app.state.identity.mint_ticket(caller, run_id)
    return JSONBytes(dump(Ticket(ticket=ticket, expires_in=expires_in, run_id=run_id)),
                     headers={"Cache-Control": "no-store"})


async def overview(request: Request) -> Response:
    """The operator's view, as JSON (the viewer's Operations tab polls it)."""
    state = request.app.state
    view = await state.runs.overview()
    view["backend"] = {"name": state.backend.name, "up": await state.bus.ping()}
    rates = getattr(state, "live_rates", None)
    if rates is not None:
        view.update(rates.sample())
    view["agents"] = state.registry.names()
    view["ts"] = time.time()
    return JSONBytes(view, headers={"Cache-Control": "no-store"})


async def whoami(request: Request) -> Response:
    caller = await request_caller(request)
    return JSONBytes(dump(WhoAmI.model_validate(caller.describe())))


async def revoke(request: Request) -> Response:
    """Cut credentials off now: new requests get 401, open streams end (every process)."""
    req: RevokeRequest = validate(RevokeRequest, await read_json(request))
    if (req.sub is None) == (req.jti is None):
        raise RequestError("invalid_request", 'give exactly one of "sub" and "jti"', status=422, field="body")
    kind, value = ("sub", req.sub) if req.sub is not None else ("jti", req.jti)
    assert value is not None
    at = await request.app.state.identity.revoke(kind, value)
    return JSONBytes(dump(Revoked(revoked={kind: value}, at=at)))


async def list_agents(request: Request) -> Response:
    return JSONBytes(dump(AgentList.model_validate({"agents": request.app.state.registry.describe()})))


async def healthz(request: Request) -> Response:
    return JSONBytes(dump(Health(status="ok")))


async def readyz(request: Request) -> Response:
    state = request.app.state
    if not await state.bus.ping():
        raise RequestError("not_ready", "the event bus backend is unreachable", status=503)
    # Ready to take runs; runs of an agent no worker serves wait queued until one comes.
    unserved = await state.runs.runner.unserved(state.registry.names())
    return JSONBytes(dump(Health(status="ready", agents_without_workers=unserved)))


async def metrics(request: Request) -> Response:
    return Response(await request.app.state.metrics_view.render(), media_type=METRICS_CONTENT_TYPE)


def submit_schema(agents: list[dict[str, Any]]) -> dict[str, Any]:
    """``SubmitRequest`` as this server takes it: one variant per registered agent, with
    that agent's own input schema (the model alone can only say "an object")."""
    base = SubmitRequest.model_json_schema()
    variants = []
    for agent in agents:
        schema = agent["input_schema"]
        if "$defs" in schema or b'"$ref"' in dumps(schema):
            schema = {"type": "object"}  # refs would point into the agent's own document
        variants.append({
            "type": "object", "additionalProperties": False, "required": ["agent"],
            "properties": {"agent": {"const": agent["name"]}, "input": schema,
                           "metadata": base["properties"]["metadata"]},
        })
    if not variants:
        return base
    return {"title": base["title"], "description": base.get("description", ""), "oneOf": variants}


RUN_ID = Param("run_id", "path", {"type": "string", "minLength": 1}, "the run's id")
RUNS = ("runs",)

# Every route of this module, described once: app.py serves them and /openapi.json
# publishes them from this table.
operations: list[tuple[Any, Operation]] = [
    (submit_run, Operation(
        "POST", "/runs", "Start a run: stored as queued, executed in the background",
        ok_status=202, ok_model=SubmitAccepted, ok_headers=("Location",), body=SubmitRequest,
        params=(Param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 255},
                      "the same key returns the same run"),),
        errors=(400, 404, 409, 413, 415, 422, 429), tags=RUNS, role=MEMBER)),
    (list_runs, Operation(
        "GET", "/runs", "Recent runs of the caller's tenant, newest first, paged",
        ok_model=RunPage,
        params=(Param("status", "query", {"type": "string", "enum": sorted(STATUSES)}),
                Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
                Param("before", "query", {"type": "number"}, "created_at of the last run of the previous page"),
                Param("tenant", "query", {"type": "string"}, "an admin's filter (others see their own tenant only)")),
        errors=(400,), tags=RUNS, role=VIEWER)),
    (get_run, Operation(
        "GET", "/runs/{run_id}", "A run's snapshot: status, timestamps, result or error, log bounds "
                                 "(ETag; 304 to a matching If-None-Match; ?wait= long-polls)",
        ok_model=RunSnapshot, ok_headers=("ETag", "Retry-After"), also_ok=(304,),
        also_ok_headers=("ETag", "Retry-After"),
        params=(RUN_ID,
                Param("If-None-Match", "header", {"type": "string"},
                      "the ETag of the snapshot the client has: 304 while it is still current"),
                Param("wait", "query", {"type": "number", "exclusiveMinimum": 0, "maximum": polling.MAX_WAIT_S},
                      f"{polling.WAIT_DOC}. {polling.RETRY_AFTER_RULE}")),
        errors=(400, 404), tags=RUNS, role=VIEWER)),
    (cancel_run, Operation(
        "POST", "/runs/{run_id}/cancel", "Cancel a run wherever it executes",
        ok_model=RunView, params=(RUN_ID,), errors=(404, 409), tags=RUNS, role=MEMBER)),
    (resume_run, Operation(
        "POST", "/runs/{run_id}/resume", "Answer a run waiting in interrupted",
        ok_status=202, ok_model=RunView, body=AnswerRequest, params=(RUN_ID,),
        errors=(400, 404, 409, 413, 415, 422), tags=RUNS, role=MEMBER)),
    (mint_ticket, Operation(
        "POST", "/runs/{run_id}/ticket", "A short-lived ticket that opens this run's SSE stream (for EventSource)",
        ok_model=Ticket, params=(RUN_ID,), errors=(404,), tags=RUNS, role=VIEWER)),
    (list_agents, Operation("GET", "/agents", "The registered agents and their input schemas",
                            ok_model=AgentList, tags=("agents",), role=VIEWER)),
    (overview, Operation("GET", "/admin/overview",
                         "The operator's view: queue and running runs per tenant, workers per agent, backend",
                         ok_schema={"type": "object"}, tags=("admin",), role=ADMIN)),
    (whoami, Operation("GET", "/whoami", "The caller: tenant, subject, roles, credential expiry",
                       ok_model=WhoAmI, tags=("auth",), role=AUTHENTICATED)),
    (revoke, Operation("POST", "/admin/revoke", "Revoke a subject's credentials or one token (jti), now",
                       ok_model=Revoked, body=RevokeRequest, errors=(400, 413, 415, 422), tags=("auth",),
                       role=ADMIN)),
    (healthz, Operation("GET", "/healthz", "Liveness", ok_model=Health, tags=("meta",))),
    (readyz, Operation("GET", "/readyz", "Readiness: the backend is reachable", ok_model=Health,
                       tags=("meta",))),
    (metrics, Operation("GET", "/metrics", "Prometheus metrics of every process of the deployment "
                                           "(text format; also on --metrics-port, without auth)",
                        ok_media="text/plain", ok_schema={"type": "string"}, tags=("meta",), role=ADMIN)),
]
