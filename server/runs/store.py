"""Run records: what a run is, its lifecycle, and where records live."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
INTERRUPTED = "interrupted"  # waiting for a human's answer (LangGraph interrupt())
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUSES = frozenset({QUEUED, RUNNING, INTERRUPTED}) | TERMINAL

# Which transitions the lifecycle allows; anything else is a bug or a race lost.
_ALLOWED = {
    QUEUED: {RUNNING, CANCELLED, FAILED},
    RUNNING: {SUCCEEDED, FAILED, CANCELLED, QUEUED, INTERRUPTED},
    INTERRUPTED: {RUNNING, CANCELLED, FAILED},
}

# "No answer given": an answer to an interrupt may legitimately be None.
NO_ANSWER: object = object()

DEFAULT_TENANT = "default"


class InvalidTransition(Exception):
    def __init__(self, run_id: str, current: str, wanted: str) -> None:
        self.current = current
        super().__init__(f"run {run_id!r} is {current}; it cannot become {wanted}")


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    agent: str
    input: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    tenant: str = DEFAULT_TENANT
    sub: str | None = None  # who started it (the credential's subject)
    status: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    attempt: int = 0
    error: dict[str, Any] | None = None
    result: Any = None
    progress: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    idempotency_key: str | None = None
    # A run of a LangGraph thread (the LangGraph protocol): its state lives in the
    # checkpointer under this thread id instead of the run id.
    thread_id: str | None = None
    # The LangGraph protocol's run options (command, config, context, interrupt_before/after,
    # checkpoint to start from, multitask strategy): see threads/service.py.
    lg: dict[str, Any] | None = None
    # The delivery gate: what the run answers ({key, version, on_stale, deliver_within_s}),
    # the verdict decided when it ended, and (a held result) whether it was delivered.
    context: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None
    delivery: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("idempotency_key")
        return d


class RunStore(Protocol):
    async def create(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Store a new record; with an idempotency key already used, return that run and False."""
        ...

    async def get(self, run_id: str) -> RunRecord | None: ...

    async def find_idempotent(self, tenant: str, key: str) -> RunRecord | None:
        """The run created earlier with this Idempotency-Key, if any."""
        ...

    async def list(
        self, *, tenant: str | None, status: str | None = None, limit: int = 50, before: float | None = None,
        thread_id: str | None = None,
    ) -> list[RunRecord]:
        """Newest first; ``tenant=None`` lists every tenant's runs (an admin's view);
        ``thread_id``: only that thread's runs."""
        ...

    async def delete(self, run_id: str) -> None:
        """Forget the record (a rolled-back or deleted thread's run)."""
        ...

    async def update(self, run_id: str, **changes: Any) -> RunRecord: ...

    async def transition(self, run_id: str, status: str, **changes: Any) -> RunRecord:
        """Change status if the lifecycle allows it, else InvalidTransition."""
        ...


class MemoryRunStore:
    """Records in a dict; finished ones beyond ``max_records`` are forgotten oldest first."""

    def __init__(self, max_records: int = 10_000, journal: Any = None) -> None:
        self.journal = journal  # optional: keeps records on disk across restarts
        self.max_records = max_records
        self._runs: dict[str, RunRecord] = {}
        self._idem: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()

    async def create(self, record: RunRecord) -> tuple[RunRecord, bool]:
        async with self._lock:
            if record.idempotency_key is not None:
                key = (record.tenant, record.idempotency_key)
                existing = self._idem.get(key)
                if existing is not None and existing in self._runs:
                    return self._runs[existing], False
                self._idem[key] = record.run_id
            self._put(record)
            forgotten = self._prune()
        if forgotten and self.journal is not None:
            await self.journal.forget_runs(forgotten)
        return record, True

    def _put(self, rec: RunRecord) -> None:
        self._runs[rec.run_id] = rec
        if self.journal is not None:
            # orjson writes the dataclass itself: the same JSON as asdict's, without its deep copy.
            self.journal.put_run(rec.run_id, rec)

    def restore(self, records: list[dict[str, Any]]) -> None:
        for raw in records:
            rec = RunRecord(**{k: v for k, v in raw.items() if k in RunRecord.__dataclass_fields__})
            self._runs[rec.run_id] = rec
            if rec.idempotency_key is not None:
                self._idem[(rec.tenant, rec.idempotency_key)] = rec.run_id

    def stats(self) -> dict[str, int]:
        return {"records": len(self._runs), "idempotency_keys": len(self._idem)}

    def all(self) -> list[RunRecord]:
        return list(self._runs.values())

    def _prune(self) -> list[str]:
        excess = len(self._runs) - self.max_records
        if excess <= 0:
            return []
        done = [r for r in self._runs.values() if r.terminal]
        done.sort(key=lambda r: r.created_at)
        for r in done[:excess]:
            del self._runs[r.run_id]
            if r.idempotency_key is not None:
                self._idem.pop((r.tenant, r.idempotency_key), None)
        return [r.run_id for r in done[:excess]]

    async def get(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    async def find_idempotent(self, tenant: str, key: str) -> RunRecord | None:
        run_id = self._idem.get((tenant, key))
        return self._runs.get(run_id) if run_id is not None else None

    async def list(
        self, *, tenant: str | None, status: str | None = None, limit: int = 50, before: float | None = None,
        thread_id: str | None = None,
    ) -> list[RunRecord]:
        rows = [
            r for r in self._runs.values()
            if (tenant is None or r.tenant == tenant)
            and (status is None or r.status == status)
            and (before is None or r.created_at < before)
            and (thread_id is None or r.thread_id == thread_id)
        ]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return rows[:limit]

    async def delete(self, run_id: str) -> None:
        async with self._lock:
            rec = self._runs.pop(run_id, None)
            if rec is not None and rec.idempotency_key is not None:
                self._idem.pop((rec.tenant, rec.idempotency_key), None)
        if rec is not None and self.journal is not None:
            await self.journal.forget_runs([run_id])

    async def update(self, run_id: str, **changes: Any) -> RunRecord:
        rec = replace(self._runs[run_id], **changes)
        self._put(rec)
        return rec

    async def transition(self, run_id: str, status: str, **changes: Any) -> RunRecord:
        async with self._lock:
            rec = self._runs.get(run_id)
            if rec is None:
                raise InvalidTransition(run_id, "missing", status)
            if status not in _ALLOWED.get(rec.status, ()):
                raise InvalidTransition(run_id, rec.status, status)
            rec = replace(rec, status=status, **changes)
            self._put(rec)
            return rec
