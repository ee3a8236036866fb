"""The embedded default's checkpointer (server/runs/sqlite_checkpoints.py) against LangGraph's
own checkpointer conformance suite, on a real SQLite file; its log barrier; and a graph that
resumes from it in a second saver over the same file (a restarted process's view)."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import uuid
from typing import Annotated, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from server.runs.checkpoints import log_barrier
from server.runs.sqlite_checkpoints import GroupCommitSqliteSaver
from tests.checkpoint_conformance import assert_conformant


async def test_conformance_suite_passes(tmp_path):
    async def saver():
        async with GroupCommitSqliteSaver.open(tmp_path / f"{uuid.uuid4().hex[:8]}.sqlite") as s:
            yield s

    await assert_conformant("GroupCommitSqliteSaver", saver)


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def build(saver):
    g = StateGraph(State)
    g.add_node("a", lambda s: {"steps": ["a"]})
    g.add_node("b", lambda s: {"steps": ["b"]})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    return g.compile(checkpointer=saver, interrupt_before=["b"])


async def test_a_graph_resumes_from_another_saver_and_upstream_reads_the_file(tmp_path):
    path = tmp_path / "cp.sqlite"
    config = {"configurable": {"thread_id": "t-1"}}
    async with GroupCommitSqliteSaver.open(path) as first:
        await build(first).ainvoke({"steps": []}, config, durability="sync")
    async with GroupCommitSqliteSaver.open(path) as second:
        graph = build(second)
        state = await graph.aget_state(config)
        assert state.values == {"steps": ["a"]} and state.next == ("b",)
        assert await graph.ainvoke(None, config, durability="sync") == {"steps": ["a", "b"]}
    # Same file format as LangGraph's own saver.
    with SqliteSaver.from_conn_string(str(path)) as upstream:
        assert build(upstream).get_state(config).values == {"steps": ["a", "b"]}


async def test_many_runs_share_a_few_commits_and_each_waits_for_the_log(tmp_path):
    """Concurrent steps of many threads land in a few transactions, and none is written
    before the event log's flush that the barrier asked for has finished."""
    log_kept = asyncio.Event()
    flushes = 0

    async def flush():
        nonlocal flushes
        flushes += 1
        await log_kept.wait()

    path = tmp_path / "cp.sqlite"
    async with GroupCommitSqliteSaver.open(path) as saver:
        log_barrier(saver, flush)
        graph = build(saver)
        runs = [asyncio.create_task(graph.ainvoke(
            {"steps": []}, {"configurable": {"thread_id": f"t-{i}"}}, durability="sync")) for i in range(50)]
        await asyncio.sleep(0.2)
        # Nothing is on disk while the log has not kept its events.
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)
        assert not any(r.done() for r in runs)
        log_kept.set()
        await asyncio.gather(*runs)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(DISTINCT thread_id) FROM checkpoints").fetchone() == (50,)
        # 50 threads x (input, step a, interrupt) checkpoints plus their writes: in groups.
        assert flushes < 50, flushes
