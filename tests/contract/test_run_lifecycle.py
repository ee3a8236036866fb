"""Contract item 4 on every backend: one terminal STATUS per run, whoever ends it and
however the enders race; and what an orphaned run becomes (run it, resume it, fail it,
leave it waiting), decided by the one lifecycle module."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from server.events import STATUS, TERMINAL_STATES
from server.runs.executor import Executor
from server.runs.lifecycle import SHUTDOWN_REASON, Dispatch, Lifecycle, RunHandle
from server.runs.store import (CANCELLED, FAILED, INTERRUPTED, NO_ANSWER, QUEUED, RUNNING,
                               SUCCEEDED, RunRecord, new_run_id)


async def new_run(bus: Any, store: Any, status: str = QUEUED, attempt: int = 0) -> RunRecord:
    rec = RunRecord(run_id=new_run_id(), agent="quick", input={"n": 1}, attempt=attempt)
    await store.create(rec)
    await bus.append(rec.run_id, STATUS, "server", {"state": QUEUED})
    if status in (RUNNING, INTERRUPTED):
        rec = await store.transition(rec.run_id, RUNNING)
        await bus.append(rec.run_id, STATUS, "server", {"state": RUNNING})
    if status == INTERRUPTED:
        rec = await store.transition(rec.run_id, INTERRUPTED)
    return rec


async def log_of(bus: Any, run_id: str) -> list[Any]:
    await bus.flush()
    return await bus.read(run_id, 0)


def terminals(events: list[Any]) -> list[Any]:
    return [e for e in events if e.is_terminal]


async def test_a_second_ending_is_a_no_op(make_runs: Any) -> None:
    """Ending an ended run changes nothing: no second ERROR, no second STATUS."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        rec = await new_run(bus, store, RUNNING)
        first = await lc.fail(rec.run_id, "boom", "it broke")
        second = await lc.cancel(rec.run_id, "cancelled by client")
        third = await lc.succeed(rec.run_id, {"late": True})
        assert first.ended and not second.ended and not third.ended
        assert third.record is not None and third.record.status == FAILED
        events = await log_of(bus, rec.run_id)
        assert [e.ns for e in events[-2:]] == ["ERROR", STATUS]
        assert len(terminals(events)) == 1 and events[-1].data["state"] == FAILED
        assert sum(e.ns == "ERROR" for e in events) == 1


async def test_success_writes_result_then_the_terminal_status(make_runs: Any) -> None:
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        rec = await new_run(bus, store, RUNNING)
        ending = await lc.succeed(rec.run_id, {"answer": 42}, duration_s=1.5)
        assert ending.ended and ending.record.result == {"answer": 42}
        events = await log_of(bus, rec.run_id)
        assert events[-2].ns == "RESULT" and events[-2].data == {"output": {"answer": 42}}
        assert events[-1].data == {"state": SUCCEEDED, "duration_s": 1.5}


async def test_racing_enders_write_exactly_one_terminal_status(make_runs: Any) -> None:
    """Success, failure and cancel of one run at once: one wins, the log and the record agree."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        for _ in range(15):
            rec = await new_run(bus, store, RUNNING)
            enders = [lc.succeed(rec.run_id, {"ok": 1}), lc.cancel(rec.run_id, "cancelled by client"),
                      lc.fail(rec.run_id, "timeout", "too slow")]
            random.shuffle(enders)
            endings = await asyncio.gather(*enders)
            assert sum(e.ended for e in endings) == 1
            events = await log_of(bus, rec.run_id)
            ends = terminals(events)
            assert len(ends) == 1, events
            final = await store.get(rec.run_id)
            assert final.status == ends[0].data["state"]
            assert [e.seq for e in events] == list(range(1, len(events) + 1))


class _QuickGraphs:
    """A registry of one graph that finishes a moment after it starts."""

    def __init__(self) -> None:
        from typing import TypedDict

        from langgraph.graph import END, START, StateGraph

        class State(TypedDict):
            n: int

        async def step(state: State) -> State:
            await asyncio.sleep(0.002)
            return {"n": state["n"] + 1}

        g = StateGraph(State)
        g.add_node("step", step)
        g.add_edge(START, "step")
        g.add_edge("step", END)
        # A checkpointer as in production (LangGraph's durability="sync" expects one).
        self.graph = g.compile(checkpointer=InMemorySaver())

    def get(self, name: str) -> Any:
        return SimpleNamespace(graph=self.graph)


async def test_cancel_racing_completion_in_the_executor(make_runs: Any) -> None:
    """A client cancel landing anywhere in a run, up to its last write, ends it once."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        executor = Executor(bus=bus, store=store, lifecycle=lc, registry=_QuickGraphs(),
                            run_timeout_s=10)
        outcomes = set()
        for i in range(20):
            rec = await new_run(bus, store)
            handle = RunHandle(rec.run_id)
            handle.start(executor.run(rec, handle))
            await asyncio.sleep(i * 0.0015)
            handle.cancel("cancelled by client")
            await asyncio.gather(handle.task, return_exceptions=True)
            events = await log_of(bus, rec.run_id)
            ends = terminals(events)
            assert len(ends) == 1, [(e.ns, e.data) for e in events]
            final = await store.get(rec.run_id)
            assert final.status == ends[0].data["state"] in TERMINAL_STATES
            if final.status == CANCELLED:
                assert ends[0].data["error"]["message"] == "cancelled by client"
            outcomes.add(final.status)
        assert CANCELLED in outcomes  # the early cancels did land


async def test_shutdown_reason_travels_with_the_task(make_runs: Any) -> None:
    """A run cut by shutdown fails 'shutdown' (not recoverable) or stays running (recoverable)."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        for recoverable, want in ((False, FAILED), (True, RUNNING)):
            executor = Executor(bus=bus, store=store, lifecycle=lc, registry=_SlowGraphs(),
                                run_timeout_s=10, recoverable=recoverable)
            rec = await new_run(bus, store)
            handle = RunHandle(rec.run_id)
            handle.start(executor.run(rec, handle))
            while (await store.get(rec.run_id)).status != RUNNING:
                await asyncio.sleep(0.005)
            handle.cancel(SHUTDOWN_REASON)
            handle.cancel("cancelled by client")  # too late: the first reason counts
            await asyncio.gather(handle.task, return_exceptions=True)
            final = await store.get(rec.run_id)
            assert final.status == want
            if want == FAILED:
                assert final.error["code"] == "shutdown"


class _SlowGraphs(_QuickGraphs):
    def __init__(self) -> None:
        from typing import TypedDict

        from langgraph.graph import END, START, StateGraph

        class State(TypedDict):
            n: int

        async def step(state: State) -> State:
            await asyncio.sleep(30)
            return state

        g = StateGraph(State)
        g.add_node("step", step)
        g.add_edge(START, "step")
        g.add_edge("step", END)
        # A checkpointer as in production (LangGraph's durability="sync" expects one).
        self.graph = g.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("attempt,max_attempts,want", [(1, 3, "resume"), (2, 3, "resume"),
                                                       (3, 3, "lost"), (1, 1, "lost")])
async def test_recovering_a_running_run(make_runs: Any, attempt: int, max_attempts: int,
                                        want: str) -> None:
    """Running when its executor died: resumed while attempts remain, else failed as lost."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus, max_attempts=max_attempts)
        rec = await new_run(bus, store, RUNNING)
        rec = await store.update(rec.run_id, attempt=attempt)
        dispatch = await lc.recover(rec, lost_because="worker w1 stopped heartbeating")
        events = await log_of(bus, rec.run_id)
        if want == "resume":
            assert dispatch == Dispatch(rec.run_id, recover=True)
            assert dispatch.from_status == RUNNING
            assert not terminals(events) and (await store.get(rec.run_id)).status == RUNNING
        else:
            assert dispatch is None
            assert events[-2].ns == "ERROR" and events[-2].data["code"] == "worker_lost"
            assert f"{max_attempts} attempts" in events[-2].data["message"]
            assert "worker w1 stopped heartbeating" in events[-2].data["message"]
            assert len(terminals(events)) == 1 and events[-1].data["state"] == FAILED
            assert (await store.get(rec.run_id)).status == FAILED


async def test_recovering_queued_and_interrupted_runs(make_runs: Any) -> None:
    """Queued: start it. Interrupted: it keeps waiting, unless an answer was waiting for it."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        queued = await new_run(bus, store, QUEUED)
        assert await lc.recover(queued, lost_because="x") == Dispatch(queued.run_id)
        waiting = await new_run(bus, store, INTERRUPTED)
        before = await log_of(bus, waiting.run_id)
        assert await lc.recover(waiting, lost_because="x") is None
        assert (await store.get(waiting.run_id)).status == INTERRUPTED
        assert await log_of(bus, waiting.run_id) == before
        answered = await lc.recover(waiting, lost_because="x", answer={"approve": True})
        assert answered == Dispatch(waiting.run_id, answer={"approve": True})
        assert answered.from_status == INTERRUPTED
        assert await lc.recover(None, lost_because="x") is None


async def test_recovering_an_ended_run_finishes_its_log_once(make_runs: Any) -> None:
    """An ender that died between the record and the terminal event: recovery writes the
    event (watchers would wait forever otherwise), and never a second one."""
    async with make_runs() as (bus, store):
        lc = Lifecycle(store=store, bus=bus)
        rec = await new_run(bus, store, RUNNING)
        rec = await store.transition(rec.run_id, CANCELLED,
                                     error={"code": "cancelled", "message": "cancelled by client"})
        assert await lc.recover(rec, lost_because="x") is None
        assert await lc.recover(rec, lost_because="x") is None
        events = await log_of(bus, rec.run_id)
        assert len(terminals(events)) == 1
        assert events[-1].data == {"state": CANCELLED, "error": rec.error}


def test_dispatch_names_the_status_it_starts_from() -> None:
    assert Dispatch("r").from_status == QUEUED
    assert Dispatch("r", answer=None).from_status == INTERRUPTED
    assert Dispatch("r", recover=True).from_status == RUNNING
    assert Dispatch("r").answer is NO_ANSWER
