"""The cluster URL: which nodes to start from, and the credentials every node connection uses."""

from __future__ import annotations

import pytest

from server import redis_keys
from server.backends import cluster_nodes, is_cluster_url


def test_cluster_urls_name_their_startup_nodes() -> None:
    assert is_cluster_url("redis+cluster://a:7000") and is_cluster_url("REDISS+CLUSTER://a:7000")
    assert not is_cluster_url("redis://localhost:6379/0")
    nodes, opts = cluster_nodes("redis+cluster://10.0.0.1:7000, 10.0.0.2:7001,[::1]:7002")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert opts == {"ssl": False}


def test_credentials_and_tls_apply_to_every_node() -> None:
    nodes, opts = cluster_nodes("rediss+cluster://app:s%40cret@h1:7000,h2:7000/")
    assert nodes == [("h1", 7000), ("h2", 7000)]
    assert opts == {"ssl": True, "username": "app", "password": "s@cret"}
    _, opts = cluster_nodes("redis+cluster://:pw@h1:7000")
    assert opts == {"ssl": False, "username": None, "password": "pw"}


def test_a_node_without_a_port_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        cluster_nodes("redis+cluster://h1:7000,h2")


def test_a_run_keeps_to_one_slot_and_the_control_plane_to_another() -> None:
    from redis.crc import key_slot

    run = "0123456789abcdef0123456789abcdef"
    keys = [redis_keys.run("ts", run), redis_keys.run_log("ts", run), redis_keys.run_meta("ts", run),
            redis_keys.run_channel("ts", run)]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    control = [redis_keys.queue("ts"), redis_keys.workers("ts"), redis_keys.scheduler("ts") + ":entry",
               redis_keys.epoch("ts")]
    assert len({key_slot(k.encode()) for k in control}) == 1
