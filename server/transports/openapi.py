"""``GET /openapi.json``: the OpenAPI 3.1 description of the HTTP API, built from the
routes' own declarations and the pydantic models the handlers use.

Each route is declared once with ``operation(...)``: the Starlette ``Route`` that serves
it and the ``Operation`` that describes it come from the same call, so a route cannot
exist undescribed. OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic
emits, so model schemas go in unchanged under ``components/schemas``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .api_models import ErrorBody
from .common import authorize

REF = "#/components/schemas/{model}"

# What each error status means across the API (the codes are in the error body).
ERROR_MEANING = {
    400: "bad request: malformed JSON, a bad cursor or query",
    401: "no credential (unauthenticated), a bad one (invalid_token) or an expired one (token_expired)",
    403: "the caller's role does not allow this (forbidden)",
    404: "unknown run or agent (another tenant's run is unknown too)",
    409: "conflict with the run's state or an Idempotency-Key",
    410: "the cursor is older than the retained log, or the log expired",
    413: "request body too large",
    415: "the body is not declared as application/json",
    422: "the body or input does not match its schema",
    429: "too many runs queued; retry after Retry-After seconds",
    503: "the backend is unreachable; retry after Retry-After seconds",
}
COMMON_ERRORS = (503,)


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    ok_status: int = 200
    ok_model: type[BaseModel] | None = None
    ok_media: str = "application/json"
    ok_schema: dict[str, Any] | None = None  # for bodies that are not a model (SSE)
    ok_headers: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    models: tuple[type[BaseModel], ...] = ()  # models ok_schema refers to by ref(...)
    # The role a caller needs (None: open to anyone, e.g. /healthz). ``ticket``: a
    # ``?ticket=`` may stand in for the credential (EventSource cannot send headers).
    role: str | None = None
    ticket: bool = False
    also_ok: tuple[int, ...] = ()  # other success statuses (a cancel's 204 with ?wait=1)
    also_ok_headers: tuple[str, ...] = ()  # headers of those (a 304's ETag and Retry-After)
    # Other media types of the ok response: ((media, schema), ...) — an SSE route's
    # ?format=json page is one route and one status, with two bodies.
    ok_alt: tuple[tuple[str, dict[str, Any]], ...] = ()


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


@dataclass
class Api:
    """The operations of the HTTP API, in the order they were declared."""

    title: str
    version: str
    operations: list[Operation] = field(default_factory=list)
    # Component schemas this server knows better than the model alone: {model name: schema}
    # (``POST /runs`` takes one input schema per registered agent).
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def operation(self, endpoint: Callable[[Request], Any], op: Operation) -> Route:
        """The route serving ``op``; with a ``role``, the caller is checked before the
        handler runs, so no handler can forget to (it reads ``request.state.caller``)."""
        self.operations.append(op)
        if op.role is not None:
            endpoint = _guarded(endpoint, op.role, op.ticket)
        return Route(op.path, endpoint, methods=[op.method])

    def document(self) -> dict[str, Any]:
        models: set[type[BaseModel]] = {ErrorBody}
        for op in self.operations:
            models.update(m for m in (op.ok_model, op.body, *op.models) if m is not None)
        pairs = [(m, "serialization") for m in models] + [(m, "validation") for m in models]
        refs, defs = models_json_schema(pairs, ref_template=REF)
        ref_of = {m: refs[(m, "validation")] for m in models}
        schemas = defs.get("$defs", {})
        schemas.update(self.overrides)
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = _describe(op, ref_of)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
        }


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
    "ticket": {"type": "apiKey", "in": "query", "name": "ticket",
               "description": "from POST /runs/{run_id}/ticket; opens that run's stream only"},
}


def _guarded(endpoint: Callable[[Request], Any], role: str, ticket: bool) -> Callable[[Request], Any]:
    async def guarded(request: Request) -> Any:
        await authorize(request, role, ticket=ticket)
        return await endpoint(request)

    guarded.__name__ = getattr(endpoint, "__name__", "endpoint")
    return guarded


def _describe(op: Operation, ref_of: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    errors = set(op.errors)
    if op.role is not None:
        schemes = ["bearer", "apiKey", *(["ticket"] if op.ticket else [])]
        out["security"] = [{name: []} for name in schemes]
        out["x-role"] = op.role
        errors |= {401, 403}
    if op.tags:
        out["tags"] = list(op.tags)
    if op.params:
        out["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
             "schema": p.schema, **({"description": p.description} if p.description else {})}
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": ref_of[op.body]}}}
    ok_schema = ref_of[op.ok_model] if op.ok_model is not None else op.ok_schema
    ok: dict[str, Any] = {"description": op.summary}
    if ok_schema is not None:
        ok["content"] = {op.ok_media: {"schema": ok_schema}}
        ok["content"].update({media: {"schema": schema} for media, schema in op.ok_alt})
    if op.ok_headers:
        ok["headers"] = {h: {"schema": {"type": "string"}} for h in op.ok_headers}
    responses: dict[str, Any] = {str(op.ok_status): ok}
    for status in op.also_ok:
        responses[str(status)] = {"description": op.summary}
        if op.also_ok_headers:
            responses[str(status)]["headers"] = {h: {"schema": {"type": "string"}} for h in op.also_ok_headers}
    for status in sorted({*errors, *COMMON_ERRORS}):
        err: dict[str, Any] = {"description": ERROR_MEANING[status],
                               "content": {"application/json": {"schema": ref_of[ErrorBody]}}}
        if status in (429, 503):
            err["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        elif status == 401:
            err["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = err
    out["responses"] = responses
    return out


def _operation_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.strip("/").split("/") if w] or ["root"]
    return op.method.lower() + "_" + "_".join(words).replace("-", "_").replace(".", "_")


def serve_document(api: Api) -> Route:
    """The ``GET /openapi.json`` route; the document is built on first request, then kept."""
    cache: dict[str, bytes] = {}

    async def openapi_json(request: Request) -> Response:
        if "doc" not in cache:
            cache["doc"] = orjson.dumps(api.document())
        return Response(cache["doc"], media_type="application/json")

    return api.operation(openapi_json, Operation(
        "GET", "/openapi.json", "This document: the OpenAPI 3.1 description of the HTTP API",
        ok_schema={"type": "object"}, tags=("meta",)))
