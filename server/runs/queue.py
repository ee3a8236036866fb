"""Dispatch: the embedded queue. Runs beyond the concurrency limit wait as ``queued``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .executor import Executor
from .lifecycle import SHUTDOWN_REASON, Dispatch, Lifecycle, RunHandle
from .store import NO_ANSWER, RunRecord, RunStore

log = logging.getLogger(__name__)


class LocalRunner:
    """An asyncio queue drained by ``concurrency`` worker tasks, all owned here.

    Each run executes in its own task (so cancel hits exactly that run); the worker
    that started it awaits it, so every task has an owner and shutdown is orderly.
    """

    def __init__(self, *, executor: Executor, store: RunStore, concurrency: int,
                 lifecycle: Lifecycle | None = None) -> None:
        self.executor = executor
        self.store = store
        self.lifecycle = lifecycle or executor.lifecycle
        self.concurrency = concurrency
        self._queue: asyncio.Queue[Dispatch] = asyncio.Queue()
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
        return self._queue.qsize()

    def active(self) -> int:
        return len(self._running)

    def stats(self) -> dict[str, int]:
        return {"running": len(self._running), "queued": self._queue.qsize(), "workers": len(self._workers)}

    async def enqueue(self, run_id: str, answer: Any = NO_ANSWER) -> None:
        """Queue a run to start, or (with ``answer``) an interrupted run to continue."""
        self._queue.put_nowait(Dispatch(run_id, answer=answer))

    async def recover(self, records: list[RunRecord]) -> None:
        """At start-up, for every run the last process left behind: what the lifecycle
        decides (queued runs start again, running ones resume, interrupted ones wait)."""
        for rec in sorted(records, key=lambda r: r.created_at):
            dispatch = await self.lifecycle.recover(rec, lost_because="the server stopped")
            if dispatch is not None:
                self._queue.put_nowait(dispatch)

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
            dispatch = await self._queue.get()
            try:
                await self._execute(dispatch)
            finally:
                self._queue.task_done()

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
