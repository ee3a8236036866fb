"""Pick the backend once, at the edge: the only place that knows which one runs.

The backend decides where logs, run records and the queue live; everything else
talks to the interfaces (Bus, RunStore, Runner). With Redis, this module also owns the
connections: it creates the one pooled client and the one retry policy (``RedisOps``)
and hands them to the bus, the store and the queue. No other module creates a Redis
client, and memory mode never imports redis.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from .bus.base import Bus
from .config import Settings
from .runs.checkpoints import log_barrier, open_checkpointer
from .runs.executor import Executor
from .runs.lifecycle import Lifecycle
from .runs.service import RunService, Runner
from .runs.store import RunStore

if TYPE_CHECKING:
    from .redis_ops import RedisOps


class RunHost(Protocol):
    """Something executing runs in this process (a Redis worker)."""

    def active(self) -> int: ...


@dataclass
class Backend:
    name: str
    bus: Bus
    store: RunStore
    runner: Runner
    service: RunService
    lifecycle: Lifecycle
    worker: RunHost | None = None  # the Redis worker, when this process hosts one


@asynccontextmanager
async def open_backend(settings: Settings, registry: Any, *, worker: bool = False) -> AsyncIterator[Backend]:
    """Open the backend. ``worker=True`` (Redis only) also runs a queue worker here."""
    async with AsyncExitStack() as stack:
        if settings.redis_url:
            backend = await stack.enter_async_context(_open_redis(settings, registry, worker))
        else:
            backend = await stack.enter_async_context(_open_memory(settings, registry))
        yield backend


def _executor(settings: Settings, bus: Bus, store: RunStore, lifecycle: Lifecycle, registry: Any,
              checkpointer: Any, durable_records: bool) -> Executor:
    from langgraph.checkpoint.memory import InMemorySaver

    durable_checkpoints = checkpointer is not None and not isinstance(checkpointer, InMemorySaver)
    return Executor(bus=bus, store=store, lifecycle=lifecycle, registry=registry,
                    run_timeout_s=settings.run_timeout_s, checkpointer=checkpointer,
                    recoverable=durable_records and durable_checkpoints)


@asynccontextmanager
async def _open_memory(settings: Settings, registry: Any) -> AsyncIterator[Backend]:
    from .bus.memory import MemoryBus
    from .journal import Journal
    from .runs.queue import LocalRunner
    from .runs.store import MemoryRunStore
    from .stats import stats_logger

    async with AsyncExitStack() as stack:
        journal = None
        if settings.journal:
            journal = await stack.enter_async_context(Journal(
                Path(settings.data_dir) / "journal.sqlite", max_events=settings.log_max_events))
        bus = await stack.enter_async_context(MemoryBus(
            max_events=settings.log_max_events, ttl_s=settings.log_ttl_s,
            subscriber_buffer=settings.subscriber_buffer, journal=journal,
            finished_max_events=settings.finished_logs_max_events,
            finished_max_bytes=settings.finished_logs_max_bytes))
        checkpointer = await stack.enter_async_context(open_checkpointer(settings))
        store = MemoryRunStore(journal=journal)
        if journal is not None:
            log_barrier(checkpointer, bus.flush)
            records, logs = await journal.load()
            bus.restore(logs)
            store.restore(records)
        lifecycle = Lifecycle(store=store, bus=bus, max_attempts=settings.max_attempts)
        executor = _executor(settings, bus, store, lifecycle, registry, checkpointer,
                             durable_records=journal is not None)
        async with LocalRunner(executor=executor, store=store, lifecycle=lifecycle,
                               concurrency=settings.max_concurrent_runs) as runner:
            await runner.recover(store.all())
            service = RunService(store=store, bus=bus, runner=runner, registry=registry,
                                 max_queued=settings.max_queued_runs, lifecycle=lifecycle)
            async with stats_logger(settings.stats_log_s,
                                    {"bus": bus.stats, "store": store.stats, "runner": runner.stats}):
                yield Backend("memory", bus, store, runner, service, lifecycle)


@asynccontextmanager
async def redis_connection(url: str, *, outage_s: float, max_connections: int = 64,
                           epoch_key: str | None = None) -> AsyncIterator[RedisOps]:
    """The process's Redis connections and retry policy, closed on the way out.
    ``epoch_key``: where the epoch lives that tells this process Redis lost its data."""
    from redis.asyncio import BlockingConnectionPool, Redis  # lazy: no Redis import unless asked
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .redis_ops import RedisOps

    # A bounded pool: a burst of subscribers reading history waits for a connection
    # instead of opening one each (and keeping them all open afterwards).
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=outage_s,
                                           socket_connect_timeout=2, socket_timeout=5)
    client = Redis(connection_pool=pool)
    # Pub/sub gets its own client that never retries by itself (see RedisOps).
    pubsub_client = Redis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    ops = RedisOps(client, pubsub_client=pubsub_client, outage_s=outage_s, epoch_key=epoch_key)
    try:
        yield ops
    finally:
        await ops.aclose()


@asynccontextmanager
async def _open_redis(settings: Settings, registry: Any, with_worker: bool) -> AsyncIterator[Backend]:
    from .bus.redis import RedisBus
    from .runs.redis_store import RedisRunStore
    from .runs.worker import RedisQueue, Worker

    assert settings.redis_url is not None
    async with AsyncExitStack() as stack:
        ops = await stack.enter_async_context(
            redis_connection(settings.redis_url, outage_s=settings.redis_outage_s,
                             epoch_key=f"{settings.key_prefix}:epoch"))
        # open_logs=False: the store starts each log with its record, so an append never
        # re-creates a log Redis lost (DESIGN.md, "When Redis forgets").
        bus = await stack.enter_async_context(RedisBus(
            ops, prefix=settings.key_prefix, max_events=settings.log_max_events,
            ttl_s=settings.log_ttl_s, subscriber_buffer=settings.subscriber_buffer,
            live_ttl_s=settings.run_timeout_s + settings.log_ttl_s, open_logs=False))
        store = RedisRunStore(ops, prefix=settings.key_prefix)
        queue = RedisQueue(ops, bus, prefix=settings.key_prefix)
        lifecycle = Lifecycle(store=store, bus=bus, max_attempts=settings.max_attempts)
        service = RunService(store=store, bus=bus, runner=queue, registry=registry,
                             max_queued=settings.max_queued_runs, lifecycle=lifecycle)
        worker = None
        if with_worker:
            checkpointer = await stack.enter_async_context(open_checkpointer(settings))
            worker = await stack.enter_async_context(Worker(
                queue=queue, bus=bus, store=store, lifecycle=lifecycle,
                executor=_executor(settings, bus, store, lifecycle, registry, checkpointer,
                                   durable_records=True),
                concurrency=settings.max_concurrent_runs, lease_s=settings.worker_lease_s))
        yield Backend("redis", bus, store, queue, service, lifecycle, worker)
