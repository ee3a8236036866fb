"""Executor.rewind_point for an attempt that stopped before writing any checkpoint (e.g. a
worker that lost Redis right after marking the run running): the recovery starts the run
over after its first STATUS running. LangGraph answers ``aget_state`` for a thread with no
checkpoint with a snapshot whose metadata is None; that once failed the recovered run."""

from __future__ import annotations

import asyncio

from langgraph.checkpoint.memory import InMemorySaver

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict
from server.bus.memory import MemoryBus
from server.events import STATUS
from server.runs.executor import Executor
from server.runs.store import RUNNING, RunRecord


class State(TypedDict, total=False):
    n: int


def graph(saver: InMemorySaver):
    builder = StateGraph(State)
    builder.add_node("step", lambda state: {"n": state.get("n", 0) + 1})
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    return builder.compile(checkpointer=saver)


def test_recovery_with_no_checkpoint_starts_over_after_the_first_running() -> None:
    async def main() -> None:
        saver = InMemorySaver()
        ex = Executor.__new__(Executor)  # rewind_point needs the bus and the checkpointer only
        ex.bus = MemoryBus(max_events=1000, ttl_s=60, subscriber_buffer=100)
        ex.checkpointer = saver
        rec = RunRecord("r1", "a", {"n": 1}, status=RUNNING, attempt=1)
        await ex.bus.append("r1", STATUS, "server", {"state": "queued"})
        running = await ex.bus.append("r1", STATUS, "server", {"state": RUNNING, "attempt": 1})
        assert await ex.rewind_point(rec, graph(saver)) == (rec.input, running.seq, -2)

    asyncio.run(main())
