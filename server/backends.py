"""Pick the backend once, at the edge: the only place that knows which one runs.

The backend decides where logs, run records and the queue live; everything else
talks to the interfaces (Bus, RunStore, Runner).
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .config import Settings
from .runs.executor import Executor
from .runs.service import RunService


@dataclass
class Backend:
    name: str
    bus: Any
    store: Any
    runner: Any
    service: RunService


@asynccontextmanager
async def open_backend(settings: Settings, registry: Any) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        if settings.redis_url:
            from .bus.redis import open_redis_backend  # lazy: no Redis import unless asked

            parts = await stack.enter_async_context(open_redis_backend(settings, registry))
            bus, store, runner, name = parts.bus, parts.store, parts.runner, "redis"
        else:
            from .bus.memory import MemoryBus
            from .runs.queue import LocalRunner
            from .runs.store import MemoryRunStore

            bus = await stack.enter_async_context(MemoryBus(
                max_events=settings.log_max_events, ttl_s=settings.log_ttl_s,
                subscriber_buffer=settings.subscriber_buffer))
            store = MemoryRunStore()
            executor = Executor(bus=bus, store=store, registry=registry,
                                run_timeout_s=settings.run_timeout_s)
            runner = await stack.enter_async_context(LocalRunner(
                executor=executor, store=store, concurrency=settings.max_concurrent_runs))
            name = "memory"
        service = RunService(store=store, bus=bus, runner=runner, registry=registry,
                             max_queued=settings.max_queued_runs)
        yield Backend(name, bus, store, runner, service)
