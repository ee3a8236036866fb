"""How a run ends, and what a run whose executor vanished becomes: decided here, once.

Contract item 4 says every run ends with exactly one terminal STATUS. Every path that
ends a run — the executor (success, failure, timeout, cancel), the service cancelling a
run nothing executes, a worker giving up on a run that lost its worker too often —
calls ``Lifecycle.end``. The record's transition decides who ends it: the first caller
wins and writes the events; any later ending is a no-op. The log refuses a second
terminal event anyway (``LogClosed``), so even a repair racing a live ending cannot
write two.

Recovery has one policy for both backends (the embedded process at restart, a Redis
worker taking over an expired lease): ``decide`` says what an orphaned run becomes and
``Lifecycle.recover`` carries it out.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, TypeVar

from ..bus.base import Bus, LogClosed
from ..events import ERROR, RESULT, STATUS
from .store import (CANCELLED, FAILED, INTERRUPTED, NO_ANSWER, QUEUED, RUNNING, SUCCEEDED,
                    InvalidTransition, RunRecord, RunStore)

log = logging.getLogger(__name__)

# The wire word for "continued after its worker died" (clients fold at its rewind_to).
RESUMED = "resumed"
SHUTDOWN_REASON = "server shutting down"
# A run cancelled because Redis lost its log: it ends with no ending written (there is no
# log to write it to, and a new one would reuse seqs), see Executor._cancelled.
LOG_LOST_REASON = "redis lost its data"
T = TypeVar("T")


class RunHandle:
    """One run executing in its own task, and why it is being cancelled.

    The reason travels with the run instead of through a dict shared by every run: the
    executor reads it from the handle it was started with. ``task.cancel(reason)``
    carries it too, for whoever inspects the task.
    """

    __slots__ = ("run_id", "reason", "task")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.reason: str | None = None
        self.task: asyncio.Task[Any] | None = None

    def start(self, coro: Awaitable[Any]) -> RunHandle:
        self.task = asyncio.ensure_future(coro)
        self.task.set_name(f"run-{self.run_id}")
        return self

    def cancel(self, reason: str) -> bool:
        """Cancel the run for ``reason``; the first reason given is the one that counts."""
        if self.task is None or self.task.done():
            return False
        if self.reason is None:
            self.reason = reason
        self.task.cancel(reason)
        return True

    def cancel_reason(self, exc: BaseException | None = None) -> str:
        if self.reason is not None:
            return self.reason
        if exc is not None and exc.args and isinstance(exc.args[0], str):
            return exc.args[0]
        return "cancelled"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What a runner is asked to execute: a fresh run, an answer to its interrupt, or
    (``recover``) a run whose worker died, continued from its last checkpoint."""

    run_id: str
    answer: Any = NO_ANSWER
    recover: bool = False

    @property
    def from_status(self) -> str:
        """The status the record must still have when execution starts, else it is skipped
        (cancelled or answered while it waited)."""
        if self.recover:
            return RUNNING
        return QUEUED if self.answer is NO_ANSWER else INTERRUPTED


class Recovery(enum.Enum):
    """What an orphaned run (its executor is gone) becomes."""

    START = "start"  # queued: nobody started it; start it
    ANSWER = "answer"  # interrupted, and an answer was waiting for it: continue with it
    RESUME = "resume"  # running: continue from the last checkpoint, attempts permitting
    LOST = "lost"  # running, out of attempts: it fails
    WAIT = "wait"  # interrupted: it keeps waiting for its human
    ENDED = "ended"  # already over (or unknown): only make sure its log says so


def decide(rec: RunRecord | None, max_attempts: int, answer: Any = NO_ANSWER) -> Recovery:
    if rec is None or rec.terminal:
        return Recovery.ENDED
    if rec.status == QUEUED:
        return Recovery.START
    if rec.status == INTERRUPTED:
        return Recovery.WAIT if answer is NO_ANSWER else Recovery.ANSWER
    return Recovery.RESUME if rec.attempt < max_attempts else Recovery.LOST


@dataclass(frozen=True, slots=True)
class Ending:
    record: RunRecord | None  # the record after the call (None: unknown run)
    ended: bool  # True only for the call that ended the run


async def to_the_end(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile, then let the
    cancel through. An ending cut in half (the record ended, no terminal event) would
    leave every watcher waiting; a shield alone would leave the rest running unowned."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


class Lifecycle:
    """The one writer of run endings and of recovery decisions."""

    def __init__(self, *, store: RunStore, bus: Bus, max_attempts: int = 3) -> None:
        self.store = store
        self.bus = bus
        self.max_attempts = max_attempts

    # -- endings --------------------------------------------------------------
    async def end(self, run_id: str, state: str, *, error: dict[str, Any] | None = None,
                  result: Any = None, duration_s: float | None = None) -> Ending:
        """End the run ``state``: the record, then ERROR (failed) or RESULT (succeeded),
        then the terminal STATUS. A run already ended is left as it is."""
        return await to_the_end(self._end(run_id, state, error, result, duration_s))

    async def succeed(self, run_id: str, result: Any, *, duration_s: float | None = None) -> Ending:
        return await self.end(run_id, SUCCEEDED, result=result, duration_s=duration_s)

    async def fail(self, run_id: str, code: str, message: str) -> Ending:
        return await self.end(run_id, FAILED, error={"code": code, "message": message})

    async def cancel(self, run_id: str, reason: str) -> Ending:
        return await self.end(run_id, CANCELLED, error={"code": "cancelled", "message": reason})

    async def _end(self, run_id: str, state: str, error: dict[str, Any] | None, result: Any,
                   duration_s: float | None) -> Ending:
        # The record first: its transition is atomic in every store, so exactly one
        # caller wins, and a client that saw the terminal event finds the record ended.
        try:
            rec = await self.store.transition(run_id, state, ended_at=time.time(), error=error,
                                              result=result)
        except InvalidTransition as exc:
            log.debug("run %s: not ending it %s, it is %s", run_id, state, exc.current)
            return Ending(await self.store.get(run_id), False)
        if state == FAILED and error is not None:
            await self._append(run_id, ERROR, error)
        elif state == SUCCEEDED:
            await self._append(run_id, RESULT, {"output": result}, agent="graph")
        await self._terminal_status(rec, duration_s)
        return Ending(rec, True)

    async def _terminal_status(self, rec: RunRecord, duration_s: float | None = None) -> None:
        data: dict[str, Any] = {"state": rec.status}
        if rec.error is not None:
            data["error"] = rec.error
        if duration_s is not None:
            data["duration_s"] = duration_s
        await self._append(rec.run_id, STATUS, data)

    async def _append(self, run_id: str, ns: str, data: dict[str, Any], agent: str = "server") -> None:
        try:
            await self.bus.append(run_id, ns, agent, data)
        except LogClosed:
            # Only a repair (``recover`` of an ended record) can close the log between our
            # transition and this append; its terminal STATUS carries the same state.
            log.info("run %s: its log was already closed; %s not appended", run_id, ns)

    # -- a crashed attempt, continued ------------------------------------------
    async def resumed(self, rec: RunRecord, *, attempt: int, rewind_to: int,
                      worker: str | None) -> RunRecord:
        """Start attempt ``attempt`` of a run whose worker died: the record, then
        ``STATUS resumed`` (contract item 7; clients drop what followed ``rewind_to``)."""
        rec = await self.store.update(rec.run_id, attempt=attempt, worker=worker)
        await self.bus.append(rec.run_id, STATUS, "server",
                              {"state": RESUMED, "attempt": attempt, "rewind_to": rewind_to})
        return rec

    # -- recovery ---------------------------------------------------------------
    async def recover(self, rec: RunRecord | None, *, lost_because: str,
                      answer: Any = NO_ANSWER) -> Dispatch | None:
        """Carry out ``decide`` for a run whose executor is gone; returns what to execute.

        ``lost_because`` says what happened to its executor ("worker w1 stopped
        heartbeating for more than 2s"), for the error of a run that is out of attempts.
        """
        decision = decide(rec, self.max_attempts, answer)
        if rec is None:
            return None
        if decision is Recovery.START:
            return Dispatch(rec.run_id)
        if decision is Recovery.ANSWER:
            return Dispatch(rec.run_id, answer=answer)
        if decision is Recovery.RESUME:
            log.warning("run %s: %s; resuming it (attempt %d of %d)", rec.run_id, lost_because,
                        rec.attempt + 1, self.max_attempts)
            return Dispatch(rec.run_id, recover=True)
        if decision is Recovery.LOST:
            message = (f"{lost_because} while executing this run, and the run has used all "
                       f"{self.max_attempts} attempts; giving up")
            log.warning("run %s: %s", rec.run_id, message)
            await self.fail(rec.run_id, "worker_lost", message)
        elif decision is Recovery.ENDED:
            await to_the_end(self._finish_log(rec))
        return None

    async def _finish_log(self, rec: RunRecord) -> None:
        """An ended record whose log has no terminal event: its ender died between the two
        writes. Write the event, or its watchers would wait forever."""
        bounds = await self.bus.bounds(rec.run_id)
        if bounds is None or bounds.ended:
            return  # a log that expired or vanished is never re-created
        log.warning("run %s ended %s but its log did not say so; ending the log", rec.run_id,
                    rec.status)
        await self._terminal_status(rec)
