"""LangGraph's own checkpointers, chosen by URL: where a run's steps are kept durable.

``sqlite:///path`` (the default without Redis: a file in the data directory),
``redis://`` / ``rediss://`` (the default with ``--redis-url``: checkpoints in the same Redis,
so a worker on another machine that takes over a dead worker's run finds them),
``postgresql://...`` for long-lived threads, ``memory://`` for tests.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from ..config import Settings

log = logging.getLogger(__name__)


# How long a thread's checkpoints stay in Redis after its last write: as long as a run's
# record (RedisRunStore's TTL). Threads that must outlive it belong in PostgreSQL.
REDIS_CHECKPOINT_TTL_S = 7 * 24 * 3600


def checkpoint_url(settings: Settings) -> str:
    if settings.checkpoint_url:
        return settings.checkpoint_url
    if settings.redis_url:
        # A SQLite file in one worker's data dir is invisible to a worker on another
        # machine: with Redis, checkpoints go where the runs' logs and records are.
        return settings.redis_url
    return f"sqlite:///{Path(settings.data_dir).resolve() / 'checkpoints.sqlite'}"


@asynccontextmanager
async def open_checkpointer(settings: Settings, ops: Any = None) -> AsyncIterator[Any]:
    """``ops``: the backend's ``RedisOps``; a ``redis://`` checkpoint URL equal to
    ``--redis-url`` uses its pooled client and retry policy instead of a client of its own."""
    url = checkpoint_url(settings)
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif scheme == "sqlite":
        # LangGraph's SQLite saver and file format, with writes committed in groups and
        # reads on connections of their own (not every run behind one aiosqlite connection).
        from .sqlite_checkpoints import GroupCommitSqliteSaver

        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        async with GroupCommitSqliteSaver.open(path) as saver:
            yield saver
    elif scheme in ("postgres", "postgresql"):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            yield saver
    elif scheme in ("redis", "rediss", "unix"):  # unix: serve --workers N's private Redis
        from .redis_checkpoints import RedisSaver

        if ops is not None and url == settings.redis_url:
            yield RedisSaver(ops.client, prefix=settings.key_prefix, ttl_s=REDIS_CHECKPOINT_TTL_S,
                             call=ops.call)
        else:  # another Redis than the backend's (or no Redis backend): a client of its own
            from redis.asyncio import Redis

            client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
            try:
                yield RedisSaver(client, prefix=settings.key_prefix, ttl_s=REDIS_CHECKPOINT_TTL_S)
            finally:
                await client.aclose()
    else:
        raise ValueError(f"checkpoint URL {url!r}: scheme must be sqlite, redis, postgresql or memory")


def log_barrier(saver: Any, flush: Any) -> Any:
    """Make ``saver`` wait for ``flush()`` (the event log) before it writes a checkpoint.

    With durability="sync" LangGraph awaits each checkpoint before the next step, so
    after this, a checkpoint on disk implies every event its step emitted is on disk
    too: a resumed run never skips events a crash took away.

    A saver that writes in groups (``set_barrier``) waits once per group instead, before
    it writes the group (its checkpoints and tasks' pending writes alike).
    """
    if hasattr(saver, "set_barrier"):
        saver.set_barrier(flush)
        return saver
    inner = saver.aput

    async def aput(config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        await flush()
        return await inner(config, checkpoint, metadata, new_versions)

    saver.aput = aput
    return saver
