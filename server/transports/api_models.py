"""The HTTP API's response bodies, as pydantic models.

Handlers build their answers from these, and ``openapi.py`` describes the API from the
same classes, so the published schema cannot drift from what is sent. Request bodies
live in ``common.py`` (Socket.IO validates with them too).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["queued", "running", "interrupted", "succeeded", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` for programs, a ``message`` for people, and
    whatever detail the code carries (``field``, ``first_seq``, ``status``, …)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SubmitAccepted(BaseModel):
    """``202`` to ``POST /runs``: the run is stored and queued; watch it at ``events_url``."""

    run_id: str
    status: RunStatus
    agent: str
    events_url: str
    room: str = Field(description="the Socket.IO room of the run")
    created: bool = Field(description="false when an Idempotency-Key returned an earlier run")


class RunView(BaseModel):
    """A run's record; ``GET /runs/{id}`` adds where its log starts and ends."""

    run_id: str
    agent: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    tenant: str
    sub: str | None = Field(None, description="who started it (the credential's subject)")
    status: RunStatus
    created_at: float
    started_at: float | None
    ended_at: float | None
    attempt: int
    error: dict[str, Any] | None
    result: Any = None
    progress: dict[str, Any]
    worker: str | None
    thread_id: str | None = Field(None, description="the LangGraph thread of a thread run (LangGraph protocol)")
    context: dict[str, Any] | None = Field(None, description="what the run answers: {key, version, on_stale, deliver_within_s}")
    verdict: dict[str, Any] | None = Field(None, description="the delivery gate's verdict, decided when the run ended")
    delivery: dict[str, Any] | None = Field(None, description="a held result: {held, delivered_at}")


class RunSnapshot(RunView):
    last_seq: int | None = Field(description="the seq of the newest event (null: the log expired)")
    first_seq: int | None = Field(description="the oldest seq the log still holds")
    queue_position: int | None = Field(None, description="a queued run's place among its tenant's waiting runs (1: next)")
    queue_reason: str | None = Field(None, description="why a queued run waits (its tenant's cap, no worker for its agent, …)")


class RunPage(BaseModel):
    runs: list[RunView]
    next_before: float | None = Field(description="pass as ?before= for the next page; null on the last")


class AgentInfo(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]


class AgentList(BaseModel):
    agents: list[AgentInfo]


class Health(BaseModel):
    status: Literal["ok", "ready"]
    agents_without_workers: list[str] | None = Field(
        None, description="agents no live worker takes (their runs wait queued); readyz only")


class WhoAmI(BaseModel):
    """The caller, as this server sees their credential."""

    tenant: str
    sub: str
    roles: list[str]
    via: Literal["none", "jwt", "api_key"]
    expires_at: float | None = Field(description="the credential's exp (null: it does not expire)")


class Ticket(BaseModel):
    """Opens ``GET /runs/{run_id}/events?ticket=…`` (and re-opens it, until it expires)."""

    ticket: str
    expires_in: int = Field(description="seconds the ticket can open the stream")
    run_id: str


class RevokeRequest(BaseModel):
    """``{"sub": …}`` revokes a subject's credentials issued until now; ``{"jti": …}`` one token."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sub: str | None = Field(None, min_length=1, max_length=256)
    jti: str | None = Field(None, min_length=1, max_length=256)


class Revoked(BaseModel):
    revoked: dict[str, str]
    at: float


class AnswerRequest(BaseModel):
    """``POST /runs/{id}/resume``: the answer to the question the run's interrupt asked."""

    value: Any = Field(description="any JSON value; the graph's interrupt() returns it")


class EventView(BaseModel):
    """One event, exactly as an SSE ``data:`` line and a Socket.IO ``event`` carry it."""

    run_id: str
    seq: int = Field(ge=1, description="the event's position in its run's log: 1, 2, 3, … no holes")
    ns: str = Field(description="THOUGHT, TOOL_USE, CRITIC_EVAL, STATUS, RESULT, ERROR, STEP, …")
    agent: str = Field(description="the node path that emitted it")
    data: dict[str, Any]
    ts: float


class ResetView(BaseModel):
    """``event: reset``: the log no longer holds what this stream needed; restart without a cursor."""

    reason: str = Field(description="log_trimmed, cursor_expired, log_expired, log_lost")
    first_seq: int | None = None
    message: str | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
