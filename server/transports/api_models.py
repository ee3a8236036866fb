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
    status: RunStatus
    created_at: float
    started_at: float | None
    ended_at: float | None
    attempt: int
    error: dict[str, Any] | None
    result: Any = None
    progress: dict[str, Any]
    worker: str | None


class RunSnapshot(RunView):
    last_seq: int | None = Field(description="the seq of the newest event (null: the log expired)")
    first_seq: int | None = Field(description="the oldest seq the log still holds")


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
