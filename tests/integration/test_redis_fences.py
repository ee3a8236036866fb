"""The append script's fences, on a real redis-server (issue 14, sections 2 and 7).

A worker whose run was taken over never appends to it again (the fencing token), and a log
that Redis "forgot" part of (restarted from an older snapshot: what a failover to a replica
that was behind looks like to a writer) is declared lost, never written with reused seqs.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis as redis_sync

from server.backends import redis_connection
from server.bus.base import Fenced, LogLost, UnknownLog
from server.bus.subscription import subscribe
from server.bus.redis import RedisBus, log_meta_key
from server.events import STATUS
from server.observability.logs import run_context
from server.runs.lease import FENCE
from tests.support import RedisServer


def bus_on(ops, prefix: str) -> RedisBus:
    # open_logs=False: as behind a run store, an append never starts a log that vanished
    return RedisBus(ops, prefix=prefix, max_events=1000, ttl_s=60, subscriber_buffer=64, open_logs=False)


async def start_log(ops, prefix: str, run: str) -> None:
    await ops.client.hset(log_meta_key(prefix, run), "seq", 0)


async def test_a_worker_whose_run_was_taken_over_cannot_append_again(redis_server) -> None:
    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with redis_connection(redis_server.url, outage_s=5.0) as ops, \
            bus_on(ops, prefix) as old, bus_on(ops, prefix) as new:
        await start_log(ops, prefix, run)
        fence = ops.register_script(FENCE)
        old.fence(run, int(await fence(keys=[log_meta_key(prefix, run)])))
        with run_context(run, "default", "a"):
            await old.emit(run, "THOUGHT", "a", {"i": 1})
            await old.flush()
        # The lease ran out; another worker takes the run over and bumps the fence.
        new.fence(run, int(await fence(keys=[log_meta_key(prefix, run)])))
        await new.append(run, STATUS, "server", {"state": "resumed"})
        with pytest.raises(Fenced), run_context(run, "default", "a"):
            await old.emit(run, "THOUGHT", "a", {"i": 2})
            await old.flush()
        with pytest.raises(Fenced):
            await old.append(run, "THOUGHT", "a", {"i": 3})
        await new.emit(run, "THOUGHT", "b", {"i": 2})
        await new.append(run, STATUS, "server", {"state": "succeeded"})
        events = await new.read(run, 0)
        assert [(e.seq, e.agent, e.data) for e in events] == [
            (1, "a", {"i": 1}), (2, "server", {"state": "resumed"}), (3, "b", {"i": 2}),
            (4, "server", {"state": "succeeded"})]
        # Appends without a fence (an API process ending a run) are not the fence's business.
        other = uuid.uuid4().hex
        await start_log(ops, prefix, other)
        await old.append(other, "THOUGHT", "api", {})


async def test_a_log_that_went_back_is_declared_lost_never_reused() -> None:
    """Redis restarts from a snapshot older than what the worker wrote: the worker's next
    batch finds the log behind the seq it saw, and the log is lost (watchers are told);
    seq 6 never names a second event."""
    server = RedisServer().start()
    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        async with redis_connection(server.url, outage_s=10.0) as ops, bus_on(ops, prefix) as bus:
            await bus._connected.wait()
            await start_log(ops, prefix, run)
            seen: list[int] = []

            async def watch() -> None:
                async with await subscribe(bus, run, 0) as sub:
                    async for batch in sub:
                        seen.extend(e.seq for e in batch)

            for i in range(5):
                await bus.append(run, "THOUGHT", "a", {"i": i})
            watcher = asyncio.create_task(watch())
            redis_sync.Redis.from_url(server.url).save()  # the snapshot a replica would be at
            for i in range(5, 10):
                await bus.append(run, "THOUGHT", "a", {"i": i})
            while len(seen) < 10:
                await asyncio.sleep(0.01)
            server.restart()  # kill -9, then start from the old snapshot: seq 5, not 10
            with pytest.raises(LogLost) as lost, run_context(run, "default", "a"):
                await bus.emit(run, "THOUGHT", "a", {"i": 10})
                await bus.flush()
            assert "forgot" in lost.value.why
            # The watcher is told (log_lost), never shown a second seq 6.
            with pytest.raises(LogLost):
                await asyncio.wait_for(watcher, 15)
            assert seen == list(range(1, 11))
            with pytest.raises(UnknownLog):  # a new reader: no log (behind a store: run_lost)
                await subscribe(bus, run, 3)
            with pytest.raises(LogLost):
                await bus.append(run, "THOUGHT", "a", {"i": 11})
            rows = await ops.client.xrange(bus.log_key(run))
            assert [int(r[0].split(b"-")[0]) for r in rows] == [1, 2, 3, 4, 5]
    finally:
        server.stop()


async def test_a_taken_over_workers_ending_does_not_win_the_record(redis_server) -> None:
    """The record's transitions and updates carry the fence too: a stale worker that reaches
    its run's end after another worker took the run over changes nothing; the new owner's
    ending and an API process's (no fence) go through."""
    from server.runs.redis_store import RedisRunStore
    from server.runs.store import RUNNING, SUCCEEDED, RunRecord

    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with redis_connection(redis_server.url, outage_s=5.0) as ops, \
            bus_on(ops, prefix) as old, bus_on(ops, prefix) as new:
        api_store = RedisRunStore(ops, prefix=prefix)
        old_store = RedisRunStore(ops, prefix=prefix, fence_of=old.fence_of)
        new_store = RedisRunStore(ops, prefix=prefix, fence_of=new.fence_of)
        await api_store.create(RunRecord(run_id=run, agent="a", input={}))
        fence = ops.register_script(FENCE)
        old.fence(run, int(await fence(keys=[log_meta_key(prefix, run)])))
        await old_store.transition(run, RUNNING, worker="old")
        new.fence(run, int(await fence(keys=[log_meta_key(prefix, run)])))  # the takeover
        await new_store.update(run, worker="new", attempt=2)
        with pytest.raises(Fenced):
            await old_store.transition(run, SUCCEEDED, result={"from": "old"})
        with pytest.raises(Fenced):
            await old_store.update(run, progress={"step": 9})
        rec = await api_store.get(run)
        assert (rec.status, rec.worker, rec.result, rec.progress) == (RUNNING, "new", None, {})
        done = await new_store.transition(run, SUCCEEDED, result={"from": "new"})
        assert (done.status, done.result) == (SUCCEEDED, {"from": "new"})
