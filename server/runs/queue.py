"""Dispatch: the embedded queue. Runs beyond the concurrency limit wait as ``queued``,
and start in the order fair share decides (``fair.FairQueue``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .executor import Executor
from .fair import FairQueue, TenantPolicy, Waiting
from .lifecycle import SHUTDOWN_REASON, Dispatch, Lifecycle, RunHandle
from .store import NO_ANSWER, RunRecord, RunStore

log = logging.getLogger(__name__)


class LocalRunner:
    """An asyncio queue drained by ``concurrency`` worker tasks, all owned here.

    Each run executes in its own task (so cancel hits exactly that run); the worker
    that started it awaits it, so every task has an owner and shutdown is orderly.
    """

    def __init__(self, *, executor: Executor, store: RunStore, concurrency: int,
                 lifecycle: Lifecycle | None = None, policy: TenantPolicy | None = None,
                 on_dispatch: Callable[[str, float], None] | None = None) -> None:
        self.executor = executor
        self.store = store
        self.lifecycle = lifecycle or executor.lifecycle
        self.concurrency = concurrency
        self._queue = FairQueue(policy or TenantPolicy())
        self.on_dispatch = on_dispatch  # (tenant, seconds it waited): the metrics' queued time
        self._workers: set[asyncio.Task[None]] = set()
        self._running: dict[str, RunHandle] = {}

    async def __aenter__(self) -> LocalRunner:
        for i in range(self.concurrency):
            task = asyncio.create_task(self._work(), name=f"run-worker-{i}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def depth(self) -> int:
        return self._queue.depth()

    def active(self) -> int:
        return len(self._running)

    def stats(self) -> dict[str, int]:
        return {"running": len(self._running), "queued": self._queue.depth(), "workers": len(self._workers)}

    async def admit(self, tenant: str, run_id: str = "") -> None:
        """Refused (429) if the tenant's queue cap or creation rate says no; else ``run_id``
        holds a place in the queue until it is enqueued (or ``unreserve``)."""
        self._queue.admit(tenant, run_id)

    async def unreserve(self, tenant: str, run_id: str) -> None:
        self._queue.unreserve(tenant, run_id)

    async def enqueue(self, rec: RunRecord, answer: Any = NO_ANSWER) -> None:
        """Queue a run to start, or (with ``answer``) an interrupted run to continue."""
        self._queue.put(Waiting(Dispatch(rec.run_id, answer=answer), rec.tenant, rec.agent, time.time()))

    async def withdraw(self, run_id: str) -> bool:
        """A queued run was cancelled: it gives up its place (False: it was not waiting)."""
        return self._queue.withdraw(run_id)

    async def unserved(self, agents: list[str]) -> list[str]:
        """Agents no live worker takes: none, this process runs them all."""
        return []

    async def position(self, rec: RunRecord) -> tuple[int, str] | None:
        return self._queue.position(rec.run_id, rec.tenant)

    async def overview(self) -> dict[str, Any]:
        """Per tenant: queued, running (and per agent), oldest wait; one process serves every agent."""
        view = self._queue.overview()
        view["workers"] = {"*": 1}
        view["slots"] = self.concurrency
        return view

    async def recover(self, records: list[RunRecord]) -> None:
        """At start-up, for every run the last process left behind: what the lifecycle
        decides (queued runs start again, running ones resume, interrupted ones wait)."""
        for rec in sorted(records, key=lambda r: r.created_at):
            dispatch = await self.lifecycle.recover(rec, lost_because="the server stopped")
            if dispatch is not None:
                self._queue.put(Waiting(dispatch, rec.tenant, rec.agent, rec.created_at))

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel a run executing here; False if it is not running in this process."""
        handle = self._running.get(run_id)
        if handle is None or not handle.cancel(reason):
            return False
        assert handle.task is not None
        await asyncio.gather(handle.task, return_exceptions=True)
        return True

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            started = time.monotonic()
            if self.on_dispatch is not None:
                self.on_dispatch(item.tenant, max(0.0, time.time() - item.since))
            try:
                await self._execute(item.dispatch)
            finally:
                # Every ending gives the slot back: success, failure, cancel, timeout, interrupt.
                self._queue.release(item.dispatch.run_id, time.monotonic() - started)

    async def _execute(self, dispatch: Dispatch) -> None:
        rec = await self.store.get(dispatch.run_id)
        if rec is None or rec.status != dispatch.from_status:
            return  # cancelled or answered while it waited, or forgotten
        handle = RunHandle(rec.run_id)
        handle.start(self.executor.run(rec, handle, answer=dispatch.answer,
                                       recover=dispatch.recover))
        assert handle.task is not None
        self._running[rec.run_id] = handle
        try:
            await asyncio.shield(handle.task)
        except asyncio.CancelledError:
            if not handle.task.done():  # the worker itself is being stopped
                raise
        except Exception:
            log.exception("run %s crashed the executor", rec.run_id)
        finally:
            self._running.pop(rec.run_id, None)
        await self._release_checkpoints(rec.run_id)

    async def _release_checkpoints(self, run_id: str) -> None:
        """An in-memory checkpointer keeps every step of every run it saw: once a run has
        ended nothing can resume it (memory does not outlive the process), so its thread
        goes. Durable checkpointers keep theirs on disk (and recovery reads them)."""
        from langgraph.checkpoint.memory import InMemorySaver

        saver = self.executor.checkpointer
        if not isinstance(saver, InMemorySaver):
            return
        rec = await self.store.get(run_id)
        if rec is None or rec.terminal:
            await saver.adelete_thread(run_id)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop taking runs, cancel those in flight (they end, or stay for recovery), then stop."""
        running = [h.task for h in self._running.values() if h.cancel(SHUTDOWN_REASON)]
        if running:
            await asyncio.wait([t for t in running if t is not None], timeout=grace_s)
        for w in list(self._workers):
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
