"""A revocation announced while an API process's pub/sub connection was down still cuts its
open streams once it reconnects: revocations keep a log the process re-reads (pub/sub keeps
nothing for a disconnected subscriber)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Iterator

import pytest
import redis as redis_sync

from server import redis_keys
from tests.auth_support import Minter
from tests.integration.test_auth_redis import SseReader, post_run, read_sse, until
from tests.support import RedisServer, ServerProcess, redis_topology


@pytest.fixture(scope="module")
def minter() -> Minter:
    return Minter.hs256()


@pytest.fixture(scope="module")
def topology(minter: Minter) -> Iterator[tuple[RedisServer, ServerProcess]]:
    env = {"THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": minter.secret,
           "THOUGHTSTREAM_AGENTS": json.dumps(["ticker=tests/integration/graphs.py:ticker"])}
    with redis_topology(["api"], ["w1"], env, durable=False) as (redis, procs):
        yield redis, procs["api"]


async def test_revocation_missed_by_pubsub_is_applied_after_the_reconnect(
        topology: tuple[RedisServer, ServerProcess], minter: Minter) -> None:
    """Kill the API's pub/sub connection and record a revocation in the same step (its
    announcement reaches nobody): the stream still ends with auth_revoked after the reconnect."""
    redis, api = topology
    token = minter.token(tenant="acme", sub="mallory", roles=["member"])
    run_id = await post_run(api, token, {"count": 400, "interval_s": 0.05})
    reader = SseReader()
    task = asyncio.create_task(read_sse(api, run_id, reader, token=token, timeout=40))
    await until(lambda: len(reader.events) >= 3, 15, "the stream did not start")
    at = time.time()
    r = redis_sync.Redis(port=redis.port)
    message = json.dumps({"kind": "sub", "value": "mallory", "at": at})
    with r.pipeline(transaction=True) as p:  # what RedisAuthStore.revoke writes, minus the announcement
        p.client_kill_filter(_type="pubsub")
        p.set(f"{redis_keys.control('ts')}:auth:revoked:sub:mallory", repr(at), px=600_000)
        p.xadd(f"{redis_keys.control('ts')}:auth:revocations", {"m": message})
        p.execute()
    await asyncio.wait_for(task, 20)
    assert reader.names() == ["auth_revoked"], reader.frames
    assert reader.ended_at is not None and reader.ended_at - at < 10
    assert reader.events[-1]["ns"] != "STATUS" or reader.events[-1]["data"]["state"] not in {"succeeded"}
