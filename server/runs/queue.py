"""Dispatch: the embedded queue. Runs beyond the concurrency limit wait as ``queued``."""

from __future__ import annotations

import asyncio
import logging

from .executor import SHUTDOWN_REASON, Executor
from typing import Any

from .store import INTERRUPTED, NO_ANSWER, QUEUED, RUNNING, RunRecord, RunStore

log = logging.getLogger(__name__)


class LocalRunner:
    """An asyncio queue drained by ``concurrency`` worker tasks, all owned here.

    Each run executes in its own task (so cancel hits exactly that run); the worker
    that started it awaits it, so every task has an owner and shutdown is orderly.
    """

    def __init__(self, *, executor: Executor, store: RunStore, concurrency: int) -> None:
        self.executor = executor
        self.store = store
        self.concurrency = concurrency
        self._queue: asyncio.Queue[tuple[str, Any, bool]] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[object]] = {}
        self._cancel_reason: dict[str, str] = {}

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

    async def enqueue(self, run_id: str, answer: Any = NO_ANSWER) -> None:
        """Queue a run to start, or (with ``answer``) an interrupted run to continue."""
        self._queue.put_nowait((run_id, answer, False))

    async def recover(self, records: list[RunRecord], max_attempts: int) -> None:
        """At start-up: queue again what a restart interrupted; resume what was running."""
        for rec in sorted(records, key=lambda r: r.created_at):
            if rec.status == QUEUED:
                self._queue.put_nowait((rec.run_id, NO_ANSWER, False))
            elif rec.status == RUNNING and rec.attempt < max_attempts:
                log.warning("run %s was running when the process stopped; resuming it", rec.run_id)
                self._queue.put_nowait((rec.run_id, NO_ANSWER, True))
            elif rec.status == RUNNING:
                await self.executor.give_up(rec, "attempts_exhausted",
                                            f"the process stopped during each of its {max_attempts} attempts")

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel a run executing here; False if it is not running in this process."""
        task = self._running.get(run_id)
        if task is None:
            return False
        self._cancel_reason[run_id] = reason
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def _work(self) -> None:
        while True:
            run_id, answer, resume = await self._queue.get()
            try:
                rec = await self.store.get(run_id)
                wanted = RUNNING if resume else QUEUED if answer is NO_ANSWER else INTERRUPTED
                if rec is None or rec.status != wanted:
                    continue  # cancelled or answered while it waited, or forgotten
                task = asyncio.create_task(
                    self.executor.run(rec, self._cancel_reason, answer=answer, resume=resume),
                    name=f"run-{run_id}")
                self._running[run_id] = task
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    if not task.done():  # the worker itself is being stopped
                        raise
                except Exception:
                    log.exception("run %s crashed the executor", run_id)
                finally:
                    self._running.pop(run_id, None)
            finally:
                self._queue.task_done()

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop taking runs, cancel those in flight (they end failed/cancelled), then stop."""
        running = list(self._running.items())
        for run_id, task in running:
            self._cancel_reason[run_id] = SHUTDOWN_REASON
            task.cancel()
        if running:
            await asyncio.wait([t for _, t in running], timeout=grace_s)
        for w in list(self._workers):
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
