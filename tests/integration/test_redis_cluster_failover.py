"""A Redis Cluster shard fails over to a replica that missed writes, a run's slot moves
mid-stream, and WAIT-acknowledged appends (issue 14, section 2).

"When Redis forgets" holds per shard: the replica that takes over lacks the last events a
writer was acknowledged and a watcher was shown; the writer's next batch finds the log
behind what it saw and declares it lost, the watcher is told (LogLost), and no seq names a
second event. The replica is made to fall behind for real: its replication user is
switched off on the master (so it cannot resync), the master takes more writes, then the
master is SIGKILLed and the replica is elected.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from server import redis_keys
from server.backends import redis_connection
from server.bus.base import BackendUnavailable, LogLost
from server.bus.subscription import subscribe
from server.bus.redis import RedisBus, log_meta_key
from server.observability.logs import run_context
from tests.support import RedisCluster


def replica_of(cluster: RedisCluster, master: int) -> int:
    lines = cluster.client(master).execute_command("CLUSTER", "NODES").decode().splitlines()
    master_id = next(ln.split()[0] for ln in lines if "myself" in ln.split()[2])
    return next(int(ln.split()[1].split("@")[0].rsplit(":", 1)[1]) for ln in lines
                if "slave" in ln.split()[2] and ln.split()[3] == master_id)


def replication_user(cluster: RedisCluster, master: int, replica: int) -> None:
    """The replica syncs as user 'repl' (so that switching the user off cuts it off)."""
    m, r = cluster.client(master), cluster.client(replica)
    m.execute_command("ACL", "SETUSER", "repl", "on", ">pw", "~*", "&*", "+@all")
    r.config_set("masteruser", "repl")
    r.config_set("masterauth", "pw")
    m.execute_command("CLIENT", "KILL", "TYPE", "replica")  # it reconnects, now as repl
    deadline = time.monotonic() + 15
    while m.info("replication").get("slave0", {}).get("state") != "online":
        assert time.monotonic() < deadline, "the replica did not sync again"
        time.sleep(0.05)


def caught_up(cluster: RedisCluster, master: int, replica: int) -> bool:
    return cluster.client(replica).info("replication").get("master_repl_offset") == \
        cluster.client(master).info("replication").get("master_repl_offset")


async def test_failover_to_a_replica_that_missed_writes_is_detected_never_reused() -> None:
    cluster = RedisCluster().start()
    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        master = cluster.master_of(log_meta_key(prefix, run))
        replica = replica_of(cluster, master)
        replication_user(cluster, master, replica)
        async with redis_connection(cluster.url, outage_s=20.0) as ops, RedisBus(
                ops, prefix=prefix, max_events=1000, ttl_s=60, subscriber_buffer=64, open_logs=False) as bus:
            await bus._connected.wait()
            await ops.client.hset(log_meta_key(prefix, run), "seq", 0)
            seen: list[int] = []

            async def watch() -> None:
                async with await subscribe(bus, run, 0) as sub:
                    async for batch in sub:
                        seen.extend(e.seq for e in batch)

            watcher = asyncio.create_task(watch())
            for i in range(5):
                await bus.append(run, "THOUGHT", "a", {"i": i})
            while not caught_up(cluster, master, replica):  # the replica holds seqs 1-5
                await asyncio.sleep(0.02)
            # Cut the replica off, then write 6-10 on the master alone.
            cluster.client(master).execute_command("ACL", "SETUSER", "repl", "off")
            cluster.client(master).execute_command("CLIENT", "KILL", "TYPE", "replica")
            for i in range(5, 10):
                await bus.append(run, "THOUGHT", "a", {"i": i})
            while len(seen) < 10:
                await asyncio.sleep(0.01)
            cluster.kill(master)  # SIGKILL: the replica, behind at seq 5, is elected
            while True:
                try:
                    if cluster.master_of(log_meta_key(prefix, run)) == replica:
                        break
                except Exception:  # noqa: BLE001 - still voting
                    pass
                await asyncio.sleep(0.05)
            # The writer's next batch finds the log behind seq 10: lost, not rewritten.
            with pytest.raises(LogLost) as lost, run_context(run, "default", "a"):
                await bus.emit(run, "THOUGHT", "a", {"i": 10})
                await bus.flush()
            assert "forgot" in lost.value.why
            # The watcher (its shard connection dropped, subscribed again on the replica,
            # resynced) is told, never shown a second seq 6.
            with pytest.raises(LogLost):
                await asyncio.wait_for(watcher, 20)
            assert seen == list(range(1, 11))
            assert bus._shards is not None and bus._shards.moves >= 1
            with pytest.raises(LogLost):
                await bus.append(run, "THOUGHT", "a", {"i": 11})
            rows = await ops.client.xrange(redis_keys.run_log(prefix, run))
            assert [int(r[0].split(b"-")[0]) for r in rows] == [1, 2, 3, 4, 5]
    finally:
        cluster.stop()


async def test_wait_replicas_acknowledges_an_append_only_once_a_replica_holds_it() -> None:
    """redis_wait_replicas=1: an append returns once the shard's replica holds it; with the
    replica cut off it is never acknowledged (BackendUnavailable after the outage allowance)."""
    cluster = RedisCluster().start()
    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        master = cluster.master_of(log_meta_key(prefix, run))
        replica = replica_of(cluster, master)
        replication_user(cluster, master, replica)
        from_replica = cluster.client(replica)
        from_replica.execute_command("READONLY")
        async with redis_connection(cluster.url, outage_s=2.0) as ops, RedisBus(
                ops, prefix=prefix, max_events=1000, ttl_s=60, subscriber_buffer=64, open_logs=False,
                wait_replicas=1, wait_timeout_s=0.2) as bus:
            await ops.client.hset(log_meta_key(prefix, run), "seq", 0)
            for i in range(5):
                event = await bus.append(run, "THOUGHT", "a", {"i": i})
                # Acknowledged: the replica holds it now, not eventually.
                assert from_replica.xlen(redis_keys.run_log(prefix, run)) == event.seq
            cluster.client(master).execute_command("ACL", "SETUSER", "repl", "off")
            cluster.client(master).execute_command("CLIENT", "KILL", "TYPE", "replica")
            with pytest.raises(BackendUnavailable, match="replicas"):
                await bus.append(run, "THOUGHT", "a", {"i": 5})
            assert bus.unreplicated >= 2  # asked again until the allowance ran out
    finally:
        cluster.stop()


async def test_a_run_whose_slot_moves_mid_stream_keeps_its_watchers_exact() -> None:
    """The run's slot is migrated to another master while it streams: appends follow it
    (MOVED/ASK/TRYAGAIN), the old master drops the shard channel (SUNSUBSCRIBE), the bus
    subscribes it on the new one and resyncs: the watcher sees every seq once, in order."""
    cluster = RedisCluster().start()
    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        meta = log_meta_key(prefix, run)
        source = cluster.master_of(meta)
        target = next(p for p in cluster.masters_from(source) if p != source)
        slot = int(cluster.client(source).execute_command("CLUSTER", "KEYSLOT", meta))
        async with redis_connection(cluster.url, outage_s=20.0) as ops, RedisBus(
                ops, prefix=prefix, max_events=10_000, ttl_s=60, subscriber_buffer=4096, open_logs=False) as bus:
            await bus._connected.wait()
            await ops.client.hset(meta, "seq", 0)
            seen: list[int] = []
            total = 600

            async def watch() -> None:
                async with await subscribe(bus, run, 0) as sub:
                    async for batch in sub:
                        seen.extend(e.seq for e in batch)
                        if seen and seen[-1] >= total:
                            return

            async def write() -> None:
                with run_context(run, "default", "a"):
                    for i in range(total):
                        await bus.emit(run, "THOUGHT", "a", {"i": i})
                        await asyncio.sleep(0.005)
                    await bus.flush()

            watcher = asyncio.create_task(watch())
            writer = asyncio.create_task(write())
            while len(seen) < 100:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cluster.move_slot, slot, source, target)
            assert cluster.master_of(meta) == target
            await asyncio.wait_for(writer, 60)
            await asyncio.wait_for(watcher, 30)
            assert seen == list(range(1, total + 1))
            assert bus._shards is not None and bus._shards.moves >= 1
            assert [e.seq for e in await bus.read(run, 0)] == list(range(1, total + 1))
    finally:
        cluster.stop()
