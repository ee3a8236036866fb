"""The recovery policy as a table: what an orphaned run becomes, by status and attempts."""

from __future__ import annotations

import asyncio

import pytest

from server.runs.lifecycle import Recovery, RunHandle, decide, to_the_end
from server.runs.store import (CANCELLED, FAILED, INTERRUPTED, NO_ANSWER, QUEUED, RUNNING,
                               SUCCEEDED, RunRecord)


def record(status: str, attempt: int = 0) -> RunRecord:
    return RunRecord(run_id="r", agent="a", input={}, status=status, attempt=attempt)


@pytest.mark.parametrize("status,attempt,answer,want", [
    (QUEUED, 0, NO_ANSWER, Recovery.START),
    (RUNNING, 1, NO_ANSWER, Recovery.RESUME),
    (RUNNING, 2, NO_ANSWER, Recovery.RESUME),
    (RUNNING, 3, NO_ANSWER, Recovery.LOST),
    (RUNNING, 4, NO_ANSWER, Recovery.LOST),
    (INTERRUPTED, 1, NO_ANSWER, Recovery.WAIT),
    (INTERRUPTED, 1, None, Recovery.ANSWER),  # None is a real answer
    (INTERRUPTED, 3, {"ok": True}, Recovery.ANSWER),  # answering is not a new attempt
    (SUCCEEDED, 1, NO_ANSWER, Recovery.ENDED),
    (FAILED, 3, NO_ANSWER, Recovery.ENDED),
    (CANCELLED, 0, NO_ANSWER, Recovery.ENDED),
])
def test_decide(status: str, attempt: int, answer: object, want: Recovery) -> None:
    assert decide(record(status, attempt), 3, answer) is want


def test_decide_unknown_run() -> None:
    assert decide(None, 3) is Recovery.ENDED


async def test_to_the_end_finishes_before_the_cancel_goes_through() -> None:
    """A cancel during an ending waits for the ending, then still cancels the caller."""
    done = []

    async def ending() -> None:
        await asyncio.sleep(0.05)
        done.append(True)

    task = asyncio.create_task(to_the_end(ending()))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # twice: still waits
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == [True]


async def test_run_handle_keeps_the_first_reason() -> None:
    handle = RunHandle("r").start(asyncio.sleep(10))
    assert handle.cancel("cancelled by client")
    assert handle.cancel("server shutting down")
    with pytest.raises(asyncio.CancelledError):
        await handle.task
    assert handle.cancel_reason() == "cancelled by client"
    assert not handle.cancel("again")  # a finished task has nothing to cancel
