"""THOUGHTSTREAM_REDIS_WAIT_REPLICAS on one redis-server with a replica (the cluster's case
is in test_redis_cluster_failover.py): an append is acknowledged once the replica holds it,
and never while no replica does."""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid

import pytest
import redis as redis_sync

from server import redis_keys
from server.backends import redis_connection
from server.bus.base import BackendUnavailable
from server.bus.redis import RedisBus, log_meta_key
from tests.support import RedisServer, free_port, redis_binary, wait_port


async def test_an_append_is_acknowledged_once_a_replica_holds_it() -> None:
    master = RedisServer().start()
    port = free_port()
    replica = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tempfile.mkdtemp(prefix="ts-replica-"), "--replicaof", "127.0.0.1", str(master.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix, run = f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    try:
        wait_port(port)
        r = redis_sync.Redis(port=port)
        deadline = time.monotonic() + 15
        while r.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
        async with redis_connection(master.url, outage_s=1.5) as ops, RedisBus(
                ops, prefix=prefix, max_events=1000, ttl_s=60, subscriber_buffer=64, open_logs=False,
                wait_replicas=1, wait_timeout_s=0.2) as bus:
            await ops.client.hset(log_meta_key(prefix, run), "seq", 0)
            for i in range(5):
                event = await bus.append(run, "THOUGHT", "a", {"i": i})
                assert r.xlen(redis_keys.run_log(prefix, run)) == event.seq  # on the replica now
            replica.kill()
            replica.wait(5)
            with pytest.raises(BackendUnavailable, match="replicas"):
                await bus.append(run, "THOUGHT", "a", {"i": 5})
    finally:
        if replica.poll() is None:
            replica.kill()
        master.stop()
