"""What clients can do with runs, whatever the transport: submit, look, list, cancel."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from ..bus.base import Bus
from ..events import STATUS
from .lifecycle import Lifecycle
from .store import INTERRUPTED, NO_ANSWER, QUEUED, RunRecord, RunStore, new_run_id


SNAPSHOT_SETTLE_S = 1.0


class ServiceError(Exception):
    status = 400
    code = "bad_request"
    headers: dict[str, str] = {}

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class Invalid(ServiceError):
    status, code = 422, "invalid_input"


class InvalidRequest(Invalid):
    code = "invalid_request"


class Busy(ServiceError):
    status, code = 429, "too_many_runs"
    headers = {"Retry-After": "5"}


class Runner(Protocol):
    """Where runs execute: the embedded queue, or the Redis queue its workers pull from."""

    async def enqueue(self, run_id: str, answer: Any = NO_ANSWER) -> None:
        """Queue a run to start, or (with ``answer``) an interrupted run to continue."""
        ...

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel the run wherever it executes; False if nothing executes it."""
        ...

    async def depth(self) -> int: ...


class RunService:
    def __init__(self, *, store: RunStore, bus: Bus, runner: Runner, registry: Any,
                 max_queued: int, lifecycle: Lifecycle | None = None) -> None:
        self.store = store
        self.bus = bus
        self.runner = runner
        self.lifecycle = lifecycle or Lifecycle(store=store, bus=bus)
        self.registry = registry
        self.max_queued = max_queued

    async def submit(self, agent: str, input: Any, *, metadata: dict[str, Any] | None = None,
                     tenant: str, idempotency_key: str | None = None) -> tuple[RunRecord, bool]:
        """Validate, store as queued, enqueue. Returns (record, created)."""
        from ..agents.registry import InvalidInput, UnknownAgent

        try:
            spec = self.registry.get(agent)
        except UnknownAgent:
            raise NotFound(f"unknown agent {agent!r}; GET /agents lists them",
                           agents=self.registry.names()) from None
        try:
            clean = spec.validate_input(input)
        except InvalidInput as exc:
            raise Invalid(f"input.{exc.field}: {exc.message}", field=f"input.{exc.field}") from None
        metadata = metadata or {}
        timeout = metadata.get("timeout_s")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout > 0):
            raise InvalidRequest("metadata.timeout_s: must be a positive number of seconds",
                          field="metadata.timeout_s")
        if idempotency_key is not None:
            # A retry of an accepted request gets its run back, even when the queue is full.
            existing = await self.store.find_idempotent(tenant, idempotency_key)
            if existing is not None:
                return self._same_request(existing, agent, clean, metadata), False
        if await self.runner.depth() >= self.max_queued:
            raise Busy(f"{self.max_queued} runs are already queued; retry later")
        rec = RunRecord(run_id=new_run_id(), agent=agent, input=clean, metadata=metadata,
                        tenant=tenant, idempotency_key=idempotency_key)
        stored, created = await self.store.create(rec)
        if not created:  # a concurrent request with the same key won the race
            return self._same_request(stored, agent, clean, metadata), False
        await self.bus.append(stored.run_id, STATUS, "server", {"state": QUEUED})
        await self.runner.enqueue(stored.run_id)
        return stored, True

    @staticmethod
    def _same_request(stored: RunRecord, agent: str, input: Any, metadata: dict[str, Any]) -> RunRecord:
        if (stored.agent, stored.input, stored.metadata) != (agent, input, metadata):
            raise Conflict("this Idempotency-Key was used for a different request")
        return stored

    async def get(self, run_id: str, *, tenant: str) -> RunRecord:
        rec = await self.store.get(run_id)
        if rec is None or rec.tenant != tenant:
            raise NotFound(f"unknown run {run_id!r}")
        return rec

    async def snapshot(self, run_id: str, *, tenant: str) -> dict[str, Any]:
        rec = await self.get(run_id, tenant=tenant)
        bounds = await self.bus.bounds(run_id)
        # An ending writes the record, then the terminal events (lifecycle.py): a snapshot
        # taken between the two would say "succeeded" with a last_seq that then grows.
        # The ender is mid-write; give it a moment so the snapshot is one moment's truth.
        deadline = time.monotonic() + SNAPSHOT_SETTLE_S
        while rec.terminal and bounds is not None and not bounds.ended and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            bounds = await self.bus.bounds(run_id)
        out = rec.to_dict()
        out["last_seq"] = bounds.last_seq if bounds else None
        out["first_seq"] = bounds.first_seq if bounds else None
        return out

    async def list(self, *, tenant: str, status: str | None, limit: int,
                   before: float | None) -> list[RunRecord]:
        return await self.store.list(tenant=tenant, status=status, limit=limit, before=before)

    async def cancel(self, run_id: str, *, tenant: str, wait_s: float = 5.0) -> RunRecord:
        rec = await self.get(run_id, tenant=tenant)
        if rec.terminal:
            raise Conflict(f"run {run_id!r} already ended {rec.status}", status=rec.status)
        reason = "cancelled by client"
        if rec.status in (QUEUED, INTERRUPTED):  # nothing executes it: end it right here
            ending = await self.lifecycle.cancel(run_id, reason)
            if ending.ended or ending.record is None or ending.record.terminal:
                return ending.record or rec
            # It (re)started meanwhile: cancel the execution instead.
        await self.runner.cancel(run_id, reason)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            rec = await self.get(run_id, tenant=tenant)
            if rec.terminal:
                break
            await asyncio.sleep(0.05)
        return rec

    async def answer(self, run_id: str, answer: Any, *, tenant: str) -> RunRecord:
        """Answer a run waiting in ``interrupted`` (POST /runs/{id}/resume on the wire)."""
        rec = await self.get(run_id, tenant=tenant)
        if rec.status != INTERRUPTED:
            raise Conflict(f"run {run_id!r} is {rec.status}, not interrupted; nothing to resume",
                           status=rec.status)
        await self.runner.enqueue(run_id, answer)
        return rec
