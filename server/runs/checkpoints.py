"""LangGraph's own checkpointers, chosen by URL: where a run's steps are kept durable.

``sqlite:///path`` (default: a file in the data directory, shared by the workers of one
machine), ``postgresql://...`` for many machines, ``memory://`` for tests.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from ..config import Settings

log = logging.getLogger(__name__)


def checkpoint_url(settings: Settings) -> str:
    if settings.checkpoint_url:
        return settings.checkpoint_url
    return f"sqlite:///{Path(settings.data_dir).resolve() / 'checkpoints.sqlite'}"


@asynccontextmanager
async def open_checkpointer(settings: Settings) -> AsyncIterator[Any]:
    url = checkpoint_url(settings)
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif scheme == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        async with AsyncSqliteSaver.from_conn_string(path) as saver:
            await saver.setup()
            # Several workers of one machine share the file: wait for locks, don't fail.
            await saver.conn.execute("PRAGMA busy_timeout = 10000")
            await saver.conn.execute("PRAGMA journal_mode = WAL")
            yield saver
    elif scheme in ("postgres", "postgresql"):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(url) as saver:
            await saver.setup()
            yield saver
    else:
        raise ValueError(f"checkpoint URL {url!r}: scheme must be sqlite, postgresql or memory")


def log_barrier(saver: Any, flush: Any) -> Any:
    """Make ``saver`` wait for ``flush()`` (the event log) before it writes a checkpoint.

    With durability="sync" LangGraph awaits each checkpoint before the next step, so
    after this, a checkpoint on disk implies every event its step emitted is on disk
    too: a resumed run never skips events a crash took away.
    """
    inner = saver.aput

    async def aput(config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        await flush()
        return await inner(config, checkpoint, metadata, new_versions)

    saver.aput = aput
    return saver
