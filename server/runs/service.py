"""What clients can do with runs, whatever the transport: submit, look, list, cancel."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Callable, Protocol

from ..bus.base import Bus
from ..events import STATUS
from .fair import Refused
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


class Limited(ServiceError):
    """A tenant limit (queue cap, creation rate): 429 with its own code and a computed Retry-After."""

    status = 429

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.message, retry_after_s=round(refused.retry_after_s, 3))
        self.code = refused.code
        self.headers = {"Retry-After": str(max(1, math.ceil(refused.retry_after_s)))}


class Runner(Protocol):
    """Where runs execute: the embedded queue, or the Redis queue its workers pull from.
    Both dispatch by fair share (``fair.py``)."""

    async def admit(self, tenant: str, run_id: str = "") -> None:
        """Raise ``fair.Refused`` if the tenant's queue cap or creation rate refuses a new run;
        else ``run_id`` holds a place in the tenant's queue until ``enqueue`` (or ``unreserve``)."""
        ...

    async def unreserve(self, tenant: str, run_id: str) -> None:
        """An admitted creation did not happen (it failed, or an idempotent twin won)."""
        ...

    async def enqueue(self, rec: RunRecord, answer: Any = NO_ANSWER) -> None:
        """Queue a run to start, or (with ``answer``) an interrupted run to continue."""
        ...

    async def withdraw(self, run_id: str) -> bool:
        """A queued run was cancelled: take it out of the queue (False: it was not waiting)."""
        ...

    async def position(self, rec: RunRecord) -> tuple[int, str] | None:
        """A queued run's 1-based place among its tenant's waiting runs, and why it waits."""
        ...

    async def overview(self) -> dict[str, Any]: ...

    async def unserved(self, agents: list[str]) -> list[str]:
        """Of ``agents``, those no live worker takes."""
        ...

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel the run wherever it executes; False if nothing executes it."""
        ...

    async def depth(self) -> int: ...


class RunService:
    def __init__(self, *, store: RunStore, bus: Bus, runner: Runner, registry: Any,
                 max_queued: int, lifecycle: Lifecycle | None = None,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.bus = bus
        self.runner = runner
        self.lifecycle = lifecycle or Lifecycle(store=store, bus=bus)
        self.registry = registry
        self.max_queued = max_queued
        self.on_refused = on_refused  # (tenant, reason): the metrics count refusals

    async def submit(self, agent: str, input: Any, *, metadata: dict[str, Any] | None = None,
                     tenant: str, sub: str | None = None,
                     idempotency_key: str | None = None, thread_id: str | None = None,
                     lg: dict[str, Any] | None = None, start: bool = True,
                     context: dict[str, Any] | None = None) -> tuple[RunRecord, bool]:
        """Validate, store as queued, enqueue. Returns (record, created).

        ``thread_id``/``lg``: a LangGraph thread run (its input is the graph's own, checked
        by the graph). ``start=False``: stored and counted, but it waits for its thread's
        earlier runs (``threads.service`` enqueues it when they end)."""
        from ..agents.registry import InvalidInput, UnknownAgent

        try:
            spec = self.registry.get(agent)
        except UnknownAgent:
            raise NotFound(f"unknown agent {agent!r}; GET /agents lists them",
                           agents=self.registry.names()) from None
        try:
            clean = spec.validate_input(input) if thread_id is None else {}
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
        run_id = new_run_id()
        try:
            await self.runner.admit(tenant, run_id)  # holds a queue place for run_id
        except Refused as exc:
            if self.on_refused is not None:
                self.on_refused(tenant, exc.code)
            raise Limited(exc) from None
        queued = False
        try:
            rec = RunRecord(run_id=run_id, agent=agent, input=clean, metadata=metadata,
                            tenant=tenant, sub=sub, idempotency_key=idempotency_key,
                            thread_id=thread_id, lg=lg, context=context,
                            progress={} if start else {"parked": True})
            stored, created = await self.store.create(rec)
            if not created:  # a concurrent request with the same key won the race
                return self._same_request(stored, agent, clean, metadata), False
            await self.bus.append(stored.run_id, STATUS, "server", {"state": QUEUED})
            if context and self.lifecycle.gate is not None:
                await self.lifecycle.gate.started(stored)  # the newest run on its key now
            if start:
                await self.runner.enqueue(stored)
                queued = True
            return stored, True
        finally:
            if not queued:
                await self.runner.unreserve(tenant, run_id)

    @staticmethod
    def _same_request(stored: RunRecord, agent: str, input: Any, metadata: dict[str, Any]) -> RunRecord:
        if (stored.agent, stored.input, stored.metadata) != (agent, input, metadata):
            raise Conflict("this Idempotency-Key was used for a different request")
        return stored

    async def get(self, run_id: str, *, tenant: str | None) -> RunRecord:
        """The run, if ``tenant`` owns it (None: any tenant, an admin). Another tenant's run
        is unknown, in the same words as one that does not exist."""
        rec = await self.store.get(run_id)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            raise NotFound(f"unknown run {run_id!r}")
        return rec

    async def snapshot(self, run_id: str, *, tenant: str | None) -> dict[str, Any]:
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
        if self.lifecycle.gate is not None and self.lifecycle.gate.withheld(rec):
            out["result"] = None  # held by the delivery gate until POST /runs/{id}/deliver
        out["last_seq"] = bounds.last_seq if bounds else None
        out["first_seq"] = bounds.first_seq if bounds else None
        if rec.status == QUEUED:
            place = await self.runner.position(rec)
            if place is not None:
                out["queue_position"], out["queue_reason"] = place
        return out

    async def overview(self) -> dict[str, Any]:
        """Queued and running runs per tenant (and agent), oldest waits, workers per agent."""
        view = await self.runner.overview()
        view.setdefault("workers", {})
        view["agents_without_workers"] = await self.runner.unserved(self.registry.names())
        view["queued_total"] = sum(t["queued"] for t in view["tenants"].values())
        view["running_total"] = sum(t["running"] for t in view["tenants"].values())
        return view

    async def list(self, *, tenant: str | None, status: str | None, limit: int,
                   before: float | None) -> list[RunRecord]:
        return await self.store.list(tenant=tenant, status=status, limit=limit, before=before)

    async def cancel(self, run_id: str, *, tenant: str | None, wait_s: float = 5.0,
                     reason: str = "cancelled by client") -> RunRecord:
        rec = await self.get(run_id, tenant=tenant)
        if rec.terminal:
            raise Conflict(f"run {run_id!r} already ended {rec.status}", status=rec.status)
        if rec.status in (QUEUED, INTERRUPTED):  # nothing executes it: end it right here
            ending = await self.lifecycle.cancel(run_id, reason)
            if ending.ended or ending.record is None or ending.record.terminal:
                if not await self.runner.withdraw(run_id) and ending.ended:
                    # Not waiting any more: a worker claimed it between our read and the
                    # cancel, and may be executing it. Tell it, so it stops now (and gives
                    # its slots back) rather than at its next refused append.
                    await self.runner.cancel(run_id, reason)
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

    async def answer(self, run_id: str, answer: Any, *, tenant: str | None) -> RunRecord:
        """Answer a run waiting in ``interrupted`` (POST /runs/{id}/resume on the wire)."""
        rec = await self.get(run_id, tenant=tenant)
        if rec.status != INTERRUPTED:
            raise Conflict(f"run {run_id!r} is {rec.status}, not interrupted; nothing to resume",
                           status=rec.status)
        await self.runner.enqueue(rec, answer)
        return rec
