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
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from ..bus.base import Bus, LogClosed
from ..events import ERROR, RESULT, STATUS
from .store import (CANCELLED, FAILED, INTERRUPTED, NO_ANSWER, QUEUED, RUNNING, SUCCEEDED,
                    InvalidTransition, RunRecord, RunStore)

if TYPE_CHECKING:
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)

# The wire word for "continued after its worker died" (clients fold at its rewind_to).
RESUMED = "resumed"
SHUTDOWN_REASON = "server shutting down"
# A run cancelled because Redis lost its log: it ends with no ending written (there is no
# log to write it to, and a new one would reuse seqs), see Executor._cancelled.
LOG_LOST_REASON = "redis lost its data"
T = TypeVar("T")


RECANCEL_S = 1.0


class RunHandle:
    """One run executing in its own task, and why it is being cancelled.

    The reason travels with the run instead of through a dict shared by every run: the
    executor reads it from the handle it was started with. ``task.cancel(reason)``
    carries it too, for whoever inspects the task.
    """

    __slots__ = ("run_id", "reason", "task", "fence")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.reason: str | None = None
        self.task: asyncio.Task[Any] | None = None
        # This execution's fencing token (a Redis worker's, see runs/lease.py): what its
        # writes carry so that, once another worker took the run over, they are refused.
        self.fence: int | None = None

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
        # A cancel can be swallowed: on Python 3.11 ``asyncio.wait_for`` (redis-py wraps every
        # send in one) returns the result and drops the CancelledError when the inner call
        # had just finished. Ask again until the task is gone; the executor also checks
        # ``reason`` after every chunk the graph yields.
        asyncio.get_running_loop().call_later(RECANCEL_S, self._again)
        return True

    def _again(self) -> None:
        if self.task is not None and not self.task.done() and self.reason is not None:
            self.task.cancel(self.reason)
            asyncio.get_running_loop().call_later(RECANCEL_S, self._again)

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
    WAIT = "wait"  # interrupted (or parked behind its thread's runs): it keeps waiting
    ENDED = "ended"  # already over (or unknown): only make sure its log says so


def decide(rec: RunRecord | None, max_attempts: int, answer: Any = NO_ANSWER) -> Recovery:
    if rec is None or rec.terminal:
        return Recovery.ENDED
    if rec.status == QUEUED:
        # Parked: a thread run waiting for its thread's earlier runs; its thread starts it.
        return Recovery.WAIT if rec.progress.get("parked") else Recovery.START
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

    def __init__(self, *, store: RunStore, bus: Bus, max_attempts: int = 3,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.bus = bus
        self.max_attempts = max_attempts
        self.metrics = metrics
        # Called with the record after a run ended (its terminal event written), by the one
        # caller that ended it: a LangGraph thread starts its next waiting run there.
        self.on_end: list[Callable[[RunRecord], Awaitable[None]]] = []
        # Called after the record ended and before its terminal event is written: whoever
        # sees the end then also sees these effects (a LangGraph thread's head moved).
        self.on_ending: list[Callable[[RunRecord], Awaitable[None]]] = []
        self.gate: Any = None  # the delivery gate (gate/gate.py): decides a verdict at each ending

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
        # A run with a context gets its one verdict in that same transition.
        gated: dict[str, Any] = {}
        held = False
        if self.gate is not None:
            before = await self.store.get(run_id)
            if before is not None and before.context and not before.terminal:
                verdict = await self.gate.decide(before)
                held = self.gate.held(before, state, verdict)
                gated = {"verdict": verdict,
                         "delivery": {"held": True, "delivered_at": None} if held else None}
        try:
            rec = await self.store.transition(run_id, state, ended_at=time.time(), error=error,
                                              result=result, **gated)
        except InvalidTransition as exc:
            log.debug("run %s: not ending it %s, it is %s", run_id, state, exc.current)
            return Ending(await self.store.get(run_id), False)
        if self.metrics is not None:  # counted by the one caller that ended it
            self.metrics.run_ended(rec)
        # Who watches, asked before the terminal event: a reader leaves right after it.
        watched = await self.gate.watched(rec) if self.gate is not None and rec.context else True
        for hook in self.on_ending:  # what must be true once the ending is visible
            try:
                await hook(rec)
            except Exception:  # noqa: BLE001 - the run ends whatever a follower does
                log.exception("run %s: a step of its ending failed", run_id)
        if state == FAILED and error is not None:
            await self._append(run_id, ERROR, error)
        elif state == SUCCEEDED and held:
            # Not the answer any more (on_stale: hold): POST /runs/{id}/deliver releases it.
            await self._append(run_id, "RESULT_HELD", {"verdict": rec.verdict}, agent="gate")
        elif state == SUCCEEDED:
            body: dict[str, Any] = {"output": result}
            if rec.verdict is not None:
                body["verdict"] = rec.verdict
            await self._append(run_id, RESULT, body, agent="graph")
        await self._terminal_status(rec, duration_s)
        if self.gate is not None and rec.context:
            try:
                await self.gate.ended(rec, watched=watched)
            except Exception:  # noqa: BLE001 - the run has ended; its announcement is the gate's
                log.exception("run %s ended; the delivery gate could not record it", run_id)
        for hook in self.on_end:
            try:
                await hook(rec)
            except Exception:  # noqa: BLE001 - the run has ended whatever a follower does
                log.exception("run %s ended; a follow-up of its ending failed", run_id)
        return Ending(rec, True)

    async def _terminal_status(self, rec: RunRecord, duration_s: float | None = None) -> None:
        data: dict[str, Any] = {"state": rec.status}
        if rec.error is not None:
            data["error"] = rec.error
        if duration_s is not None:
            data["duration_s"] = duration_s
        if rec.verdict is not None:
            data["verdict"] = rec.verdict
        if (rec.delivery or {}).get("held"):
            data["held"] = True
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
