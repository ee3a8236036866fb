"""The contract suite runs once per backend: ``make_bus`` is parametrized over them."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Callable

import pytest

# "journaled" is the embedded default: the memory bus behind its on-disk journal.
# "redis-cluster": a local Redis Cluster of three masters and three replicas.
BACKENDS = ["memory", "journaled", "redis", "redis-cluster"]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_bus(backend_name: str, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """make_bus(max_events=..., ttl_s=..., subscriber_buffer=...) -> async context manager."""

    @contextlib.asynccontextmanager
    async def factory(max_events: int = 10_000, ttl_s: float = 3600.0,
                      subscriber_buffer: int = 1024) -> AsyncIterator[Any]:
        if backend_name == "memory":
            from server.bus.memory import MemoryBus

            async with MemoryBus(max_events=max_events, ttl_s=ttl_s,
                                 subscriber_buffer=subscriber_buffer) as bus:
                yield bus
        elif backend_name == "journaled":
            from server.bus.memory import MemoryBus
            from server.journal import Journal

            path = request.getfixturevalue("tmp_path") / "journal.sqlite"
            async with Journal(path) as journal, MemoryBus(
                    max_events=max_events, ttl_s=ttl_s, subscriber_buffer=subscriber_buffer,
                    journal=journal) as bus:
                yield bus
        else:
            import uuid

            from server.backends import redis_connection
            from server.bus.redis import RedisBus

            server = request.getfixturevalue(
                "redis_cluster" if backend_name == "redis-cluster" else "redis_server")
            # A fresh key prefix per test: tests never see each other's keys.
            async with redis_connection(server.url, outage_s=10.0) as ops, RedisBus(
                    ops, prefix=f"t{uuid.uuid4().hex[:8]}", max_events=max_events,
                    ttl_s=ttl_s, subscriber_buffer=subscriber_buffer) as bus:
                await bus._connected.wait()
                yield bus

    return factory


@pytest.fixture
def make_runs(backend_name: str, make_bus: Callable[..., Any], request: pytest.FixtureRequest) -> Callable[..., Any]:
    """make_runs() -> async context manager of (bus, store) of one backend, sharing its keys."""

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[tuple[Any, Any]]:
        async with make_bus() as bus:
            if backend_name in ("redis", "redis-cluster"):
                from server.backends import redis_connection
                from server.runs.redis_store import RedisRunStore

                url = request.getfixturevalue("redis_cluster" if backend_name == "redis-cluster"
                                              else "redis_server").url
                async with redis_connection(url, outage_s=10.0) as ops:
                    yield bus, RedisRunStore(ops, prefix=bus.prefix)
            else:
                from server.runs.store import MemoryRunStore

                yield bus, MemoryRunStore(journal=bus.journal)

    return factory
