"""What every transport shares: who is calling, what a request must look like, and how a
failure is told to the client.

HTTP, SSE and Socket.IO all resolve the caller here, validate bodies with these models, and
turn every failure into one ``ApiError`` (status, code, message, detail, headers) through
``api_error``. Each transport only renders it: HTTP and SSE as ``{"error": {...}}`` JSON with
the status, Socket.IO acks as ``{ok: false, error: {...}}``, a live stream as ``reset``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..auth import DEFAULT_TENANT, LOCAL_CALLER, AuthError, Authenticator, Caller
from ..bus.base import BackendUnavailable, BusError, CursorAhead, CursorExpired, LogClosed, LogLost, UnknownLog
from ..runs.service import ServiceError

log = logging.getLogger(__name__)

MAX_CURSOR_DIGITS = 18  # seqs are far below 10**18; longer is garbage, not a cursor
MAX_IDEMPOTENCY_KEY = 255

__all__ = ["DEFAULT_TENANT", "LOCAL_CALLER", "ApiError", "Caller", "RequestError", "SubmitRequest", "api_error",
           "authorize"]


# --------------------------------------------------------------------------- identity


def identity_of(state: Any) -> Authenticator:
    """The app's authenticator (``app.state.identity``): the one place that decides who calls."""
    return state.identity


async def request_caller(request: Request) -> Caller:
    """The caller ``authorize`` resolved for this request (or resolve it now)."""
    caller = getattr(request.state, "caller", None)
    if caller is None:
        caller = await identity_of(request.app.state).of_request(request)
        request.state.caller = caller
    return caller


async def authorize(request: Request, role: str, *, ticket: bool = False) -> Caller:
    """Who is calling, if their role allows ``role``; else 401/403. With ``ticket``, a
    ``?ticket=`` (from ``POST /runs/{id}/ticket``) may stand in for the credential, for the
    run in the path only."""
    identity = identity_of(request.app.state)
    raw = request.query_params.get("ticket") if ticket else None
    if raw is not None:
        caller = await identity.of_ticket(raw, request.path_params.get("run_id", ""))
    else:
        caller = await identity.of_request(request)
    request.state.caller = caller.require(role)
    return caller


# --------------------------------------------------------------------------- requests


class ContextSpec(BaseModel):
    """What a run answers (the delivery gate): its result is judged against this when it ends."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: StrictStr = Field(min_length=1, max_length=200)
    version: StrictStr = Field(min_length=1, max_length=200)
    on_stale: Literal["mark", "hold"] = "mark"
    deliver_within_s: float | None = Field(None, gt=0, le=366 * 24 * 3600)


class SubmitRequest(BaseModel):
    """``POST /runs`` and Socket.IO ``start_run`` (which also takes ``idempotency_key``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    agent: StrictStr = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    context: ContextSpec | None = None


class RequestError(Exception):
    """A request a transport refuses before any service sees it (bad body, bad cursor, ...)."""

    def __init__(self, code: str, message: str, *, status: int = 400,
                 headers: dict[str, str] | None = None, **detail: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.detail = detail


def field_of(err: ValidationError) -> str:
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or "body"


def validate(model: type[BaseModel], payload: Any) -> Any:
    """The model, or a 422 ``invalid_request`` naming the first bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        fld = field_of(exc)
        raise RequestError("invalid_request", f"{fld}: {exc.errors()[0]['msg']}",
                           status=422, field=fld) from None


def parse_seq(raw: str) -> int:
    """A cursor's format: a plain ASCII decimal seq (bounds are ``subscribe()``'s business).

    ``str.isdigit`` alone lets through digits of other scripts (Arabic-Indic three is 3 to
    ``int``) and superscripts (which ``int`` rejects with an unhelpful message).
    """
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_CURSOR_DIGITS:
        raise RequestError("bad_cursor", f"cursor {raw[:40]!r} is not a non-negative integer seq")
    return int(raw)


def check_idempotency_key(key: Any, name: str) -> str | None:
    if key is None:
        return None
    if not (isinstance(key, str) and 0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise RequestError("bad_idempotency_key", f"{name} must be a string of 1-255 characters")
    return key


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ApiError:
    """One failure, as every transport tells it."""

    status: int
    code: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        # detail first: a detail key can never overwrite the code or the message.
        return {**self.detail, "code": self.code, "message": self.message}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers or None)

    def ack(self) -> dict[str, Any]:
        """A Socket.IO ack; a Retry-After travels as ``retry_after_s`` (acks have no headers)."""
        body = self.body()
        retry = self.headers.get("Retry-After")
        if retry is not None:
            try:
                body["retry_after_s"] = float(retry)
            except ValueError:
                pass
        return {"ok": False, "error": body}

    def reset(self, run_id: str) -> dict[str, Any]:
        """A live stream's ``reset``: the log no longer holds what this subscriber needs."""
        # A lost run is a 404 run_lost to a request; to a live stream, its log was lost.
        reason = self.detail.get("reason", self.code)
        body: dict[str, Any] = {"run_id": run_id, "reason": reason, "message": self.message}
        if "first_seq" in self.detail:
            body["first_seq"] = self.detail["first_seq"]
        return body


# Status and code of each bus error; a backend error this table does not name is a 503
# under its own code (the backend, not the request, is at fault).
_BUS_ERRORS: tuple[tuple[type[BusError], int, str | None], ...] = (
    (CursorExpired, 410, None),
    (LogLost, 404, "run_lost"),  # before UnknownLog, its base
    (UnknownLog, 410, "log_expired"),
    (CursorAhead, 400, None),
    (LogClosed, 409, None),
    (BackendUnavailable, 503, None),
)


def api_error(exc: BaseException) -> ApiError:
    """The one mapping from an exception to what the client is told."""
    if isinstance(exc, RequestError):
        return ApiError(exc.status, exc.code, exc.message, dict(exc.detail), dict(exc.headers))
    if isinstance(exc, AuthError):
        return ApiError(exc.status, exc.code, exc.message, {}, dict(exc.headers))
    if isinstance(exc, ServiceError):
        return ApiError(exc.status, exc.code, exc.message, dict(exc.detail), dict(exc.headers))
    if isinstance(exc, BusError):
        status, code = 503, exc.code
        for kind, kind_status, kind_code in _BUS_ERRORS:
            if isinstance(exc, kind):
                status, code = kind_status, kind_code or exc.code
                break
        detail: dict[str, Any] = {}
        if isinstance(exc, CursorExpired):
            detail["first_seq"] = exc.first_seq
        if isinstance(exc, LogLost):
            detail["reason"] = exc.code
        last_seq = getattr(exc, "last_seq", None)
        if isinstance(last_seq, int):
            detail["last_seq"] = last_seq
        headers = {"Retry-After": "2"} if status == 503 else {}
        return ApiError(status, code, str(exc), detail, headers)
    if isinstance(exc, ValidationError):
        fld = field_of(exc)
        return ApiError(422, "invalid_request", f"{fld}: {exc.errors()[0]['msg']}", {"field": fld})
    return ApiError(500, "internal", "the server failed; see its log")


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None, **detail: Any) -> JSONResponse:
    """An HTTP error built in place (for failures that are not exceptions)."""
    return ApiError(status, code, message, detail, headers or {}).response()


async def _render(request: Request, exc: Exception) -> JSONResponse:
    err = api_error(exc)
    if err.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return err.response()


def exception_handlers() -> dict[Any, Any]:
    """Starlette exception handlers: whatever a route raises, the one error shape and status."""
    return {RequestError: _render, ServiceError: _render, BusError: _render, AuthError: _render}
