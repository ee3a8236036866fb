"""The Redis checkpointer (server/runs/redis_checkpoints.py) against LangGraph's own
checkpointer conformance suite (langgraph-checkpoint-conformance), on a real redis-server,
a real graph that resumes from it in a second saver (another process's view), and a real
worker that checkpoints into it by default."""

from __future__ import annotations

import asyncio
import operator
import time
import uuid
from pathlib import Path
from typing import Annotated, TypedDict

import httpx

import pytest
from langgraph.graph import END, START, StateGraph
import redis as redis_sync
from redis.asyncio import Redis

from server.runs.redis_checkpoints import RedisSaver
from tests.checkpoint_conformance import assert_conformant
from tests.integration.test_redis_topology import QUESTION, read_sse, start_run
from tests.support import redis_topology


@pytest.fixture
async def client(redis_server):
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_conformance_suite_passes(client):
    prefix = f"conf-{uuid.uuid4().hex[:6]}"

    async def saver():
        yield RedisSaver(client, prefix=f"{prefix}-{uuid.uuid4().hex[:6]}", ttl_s=600)

    await assert_conformant("RedisSaver", saver)


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


async def test_a_graph_resumes_from_another_savers_view(client):
    """What a takeover needs: a graph interrupted on one saver continues on another saver
    over the same Redis (no shared memory), and the thread's keys expire."""
    prefix = f"resume-{uuid.uuid4().hex[:6]}"

    def build(saver: RedisSaver):
        g = StateGraph(State)
        g.add_node("a", lambda s: {"steps": ["a"]})
        g.add_node("b", lambda s: {"steps": ["b"]})
        g.add_edge(START, "a")
        g.add_edge("a", "b")
        g.add_edge("b", END)
        return g.compile(checkpointer=saver, interrupt_before=["b"])

    config = {"configurable": {"thread_id": "t-1"}}
    first = build(RedisSaver(client, prefix=prefix, ttl_s=600))
    await first.ainvoke({"steps": []}, config, durability="sync")
    second = build(RedisSaver(client, prefix=prefix, ttl_s=600))
    state = await second.aget_state(config)
    assert state.values == {"steps": ["a"]} and state.next == ("b",)
    out = await second.ainvoke(None, config, durability="sync")
    assert out == {"steps": ["a", "b"]}
    history = [s async for s in second.aget_state_history(config)]
    assert len(history) >= 3
    keys = [k async for k in client.scan_iter(match=f"{prefix}:cp:{{t-1}}:*")]
    assert keys and all([0 < await client.ttl(k) <= 600 for k in keys])
    await second.checkpointer.adelete_thread("t-1")
    assert [k async for k in client.scan_iter(match=f"{prefix}:cp:{{t-1}}:*")] == []
    assert await second.aget_state(config) is not None  # an empty state, not an error


async def test_a_runs_checkpoints_live_in_redis_while_it_runs_and_leave_when_it_ends():
    """With --redis-url and no --checkpoint-url, a worker checkpoints into Redis (not a file
    in its data dir); a run of no thread drops them when it ends (RAM, not disk)."""
    with redis_topology(["api1"], ["w1"], {"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "100"}) as (redis, procs):
        api = procs["api1"]
        sync = redis_sync.Redis(port=redis.port)
        run_id = start_run(api, QUESTION)
        deadline = time.monotonic() + 20
        while not list(sync.scan_iter(match=f"*cp*{run_id}*")):
            assert time.monotonic() < deadline, "no checkpoint of the run in Redis"
            await asyncio.sleep(0.05)
        assert httpx.get(f"{api.url}/runs/{run_id}").json()["status"] == "running"
        events, done = await read_sse(f"{api.url}/runs/{run_id}/events", timeout=60)
        assert done and events[-1]["data"]["state"] == "succeeded"
        deadline = time.monotonic() + 5
        while list(sync.scan_iter(match=f"*cp*{run_id}*")):
            assert time.monotonic() < deadline, "the ended run's checkpoints stayed"
            await asyncio.sleep(0.05)
        assert not list(Path(procs["w1"].env["THOUGHTSTREAM_DATA_DIR"]).glob("checkpoints.sqlite*"))
