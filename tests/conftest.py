"""Shared fixtures. Backends are real: the memory bus in-process, Redis on a free port."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import RedisCluster, RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session on a free port; tests use their own key prefix."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One local Redis Cluster (3 masters, 3 replicas) for the session; tests use their own
    key prefix. A test that kills a node starts a cluster of its own."""
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
