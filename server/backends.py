"""Pick the backend once, at the edge: the only place that knows which one runs.

The backend decides where logs, run records and the queue live; everything else
talks to the interfaces (Bus, RunStore, Runner).
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from .config import Settings
from .runs.checkpoints import log_barrier, open_checkpointer
from .runs.executor import Executor
from .runs.service import RunService


@dataclass
class Backend:
    name: str
    bus: Any
    store: Any
    runner: Any
    service: RunService
    worker: Any = None  # the Redis worker, when this process hosts one


@asynccontextmanager
async def open_backend(settings: Settings, registry: Any, *, worker: bool = False) -> AsyncIterator[Backend]:
    """Open the backend. ``worker=True`` (Redis only) also runs a queue worker here."""
    async with AsyncExitStack() as stack:
        if settings.redis_url:
            backend = await stack.enter_async_context(_open_redis(settings, registry, worker))
        else:
            backend = await stack.enter_async_context(_open_memory(settings, registry))
        yield backend


def _executor(settings: Settings, bus: Any, store: Any, registry: Any, checkpointer: Any,
              durable_records: bool) -> Executor:
    from langgraph.checkpoint.memory import InMemorySaver

    durable_checkpoints = checkpointer is not None and not isinstance(checkpointer, InMemorySaver)
    return Executor(bus=bus, store=store, registry=registry, run_timeout_s=settings.run_timeout_s,
                    checkpointer=checkpointer, resumable=durable_records and durable_checkpoints)


@asynccontextmanager
async def _open_memory(settings: Settings, registry: Any) -> AsyncIterator[Backend]:
    from .bus.memory import MemoryBus
    from .runs.queue import LocalRunner
    from .runs.store import MemoryRunStore

    from .journal import Journal

    async with AsyncExitStack() as stack:
        journal = None
        if settings.journal:
            journal = await stack.enter_async_context(Journal(Path(settings.data_dir) / "journal.sqlite"))
        bus = await stack.enter_async_context(MemoryBus(
            max_events=settings.log_max_events, ttl_s=settings.log_ttl_s,
            subscriber_buffer=settings.subscriber_buffer, journal=journal))
        checkpointer = await stack.enter_async_context(open_checkpointer(settings))
        store = MemoryRunStore(journal=journal)
        if journal is not None:
            log_barrier(checkpointer, bus.flush)
            records, logs = await journal.load()
            bus.restore(logs)
            store.restore(records)
        executor = _executor(settings, bus, store, registry, checkpointer,
                             durable_records=journal is not None)
        async with LocalRunner(executor=executor, store=store,
                               concurrency=settings.max_concurrent_runs) as runner:
            await runner.recover(store.all(), settings.max_attempts)
            service = RunService(store=store, bus=bus, runner=runner, registry=registry,
                                 max_queued=settings.max_queued_runs)
            yield Backend("memory", bus, store, runner, service)


@asynccontextmanager
async def _open_redis(settings: Settings, registry: Any, with_worker: bool) -> AsyncIterator[Backend]:
    from .bus.redis import RedisBus  # lazy: no Redis import unless asked
    from .runs.redis_store import RedisRunStore
    from .runs.worker import RedisQueue, Worker

    assert settings.redis_url is not None
    async with RedisBus(settings.redis_url, prefix=settings.key_prefix,
                        max_events=settings.log_max_events, ttl_s=settings.log_ttl_s,
                        subscriber_buffer=settings.subscriber_buffer,
                        outage_s=settings.redis_outage_s,
                        live_ttl_s=settings.run_timeout_s + settings.log_ttl_s) as bus:
        store = RedisRunStore(bus.redis, prefix=settings.key_prefix, retry=bus.with_retry)
        queue = RedisQueue(bus.redis, bus, prefix=settings.key_prefix)
        service = RunService(store=store, bus=bus, runner=queue, registry=registry,
                             max_queued=settings.max_queued_runs)
        worker = None
        async with AsyncExitStack() as stack:
            if with_worker:
                checkpointer = await stack.enter_async_context(open_checkpointer(settings))
                worker = await stack.enter_async_context(Worker(
                    queue=queue, bus=bus, store=store,
                    executor=_executor(settings, bus, store, registry, checkpointer,
                                       durable_records=True),
                    concurrency=settings.max_concurrent_runs, lease_s=settings.worker_lease_s,
                    max_attempts=settings.max_attempts))
            yield Backend("redis", bus, store, queue, service, worker)
