"""The embedded default's checkpointer: LangGraph's SQLite saver, written in groups.

``AsyncSqliteSaver`` puts every run's checkpoints through one aiosqlite connection behind
one lock, and commits (with an fsync, SQLite's default ``synchronous = FULL``) once per
write: a hundred runs starting together wait for each other's commits one by one. Here
the same tables and the same SQL (LangGraph's own ``SqliteSaver`` methods and serde) are
written the way the journal writes events:

* writes (``aput``, ``aput_writes``, ``adelete_thread``) are handed to one writer task;
  whatever gathers while a commit runs goes into the next transaction, one commit per
  group, in a thread of its own. Each write returns once its group is committed.
* with a barrier (``set_barrier``: the event log's flush), the writer waits once per
  group for the log to keep what was handed to it before the group's writes; so a
  checkpoint (or a task's pending writes) on disk implies every event its step emitted
  is on disk too. One wait per group, not one per checkpoint.
* reads run on a few connections of their own in reader threads (WAL lets them read
  while the writer commits): they never queue behind a commit, and runs' reads do not
  queue behind each other.

``synchronous = NORMAL``, as the journal: a commit survives the process being killed
(``kill -9``), and the journal and the checkpoints lose the same thing to a power cut
(their last groups), not one more than the other.

The synchronous ``SqliteSaver`` API still works (its own connection, a commit per call),
for code that calls a checkpointer from a thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite import SqliteSaver

log = logging.getLogger(__name__)

# Reader threads (each with its own connection): runs read their thread's head once at
# start, and the LangGraph protocol reads states and histories; a few cover a burst.
DEFAULT_READERS = 2


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    # Several workers of one machine may share the file: wait for its lock, don't fail.
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _nothing() -> None:
    return None


class _InGroup(SqliteSaver):
    """LangGraph's SQL on the writer's connection, without its commit per call: the writer
    commits once for the whole group (the transaction is the writer's, see ``_commit``)."""

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        cur = self.conn.cursor()
        try:
            yield cur
        finally:
            cur.close()


class GroupCommitSqliteSaver(SqliteSaver):
    """LangGraph's SQLite checkpointer (same file format), with group-committed writes and
    a pool of readers. Open with ``GroupCommitSqliteSaver.open(path)``."""

    def __init__(self, path: str, *, serde: SerializerProtocol | None = None,
                 readers: int = DEFAULT_READERS, synchronous: str = "NORMAL") -> None:
        # The synchronous API's connection (SqliteSaver's own methods, a commit per call).
        super().__init__(_connect(path, synchronous), serde=serde)
        self.path = path
        self.synchronous = synchronous
        self._group = _InGroup(_connect(path, synchronous), serde=self.serde)
        self._group.conn.isolation_level = None  # BEGIN and COMMIT are the writer's
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._read_pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="checkpoint-reader")
        self._local = threading.local()
        self._reader_savers: list[SqliteSaver] = []
        self._readers_lock = threading.Lock()
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._barrier: Callable[[], Awaitable[None]] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str | Path, **kwargs: Any) -> AsyncIterator[GroupCommitSqliteSaver]:
        loop = asyncio.get_running_loop()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        saver: GroupCommitSqliteSaver = await loop.run_in_executor(None, lambda: cls(str(path), **kwargs))
        try:
            await loop.run_in_executor(saver._write_pool, saver._setup)
            saver._wake = asyncio.Event()
            saver._writer = asyncio.create_task(saver._write_forever(), name="checkpoint-writer")
            yield saver
        finally:
            await saver._close()

    def _setup(self) -> None:
        self.setup()  # tables, WAL, the task_path migration: SqliteSaver's own
        self._group.is_setup = True
        self._group._has_task_path = self._has_task_path

    async def _close(self) -> None:
        if self._writer is not None:
            if not self._writer.done():
                # Groups commit in order: once this no-op's group is in, so is everything
                # handed over before it.
                await self._submit(_nothing)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_pool.shutdown, True)
        await loop.run_in_executor(None, self._read_pool.shutdown, True)
        self._wake = None  # a write after this fails at once instead of waiting forever
        # The last connection to close checkpoints the WAL into the file: in a thread too.
        await loop.run_in_executor(None, self._close_connections)

    def _close_connections(self) -> None:
        for saver in [self, self._group, *self._reader_savers]:
            saver.conn.close()

    def set_barrier(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Before each group is written, ``await flush()``: what the event log was handed
        before the group's writes is kept first (``runs.checkpoints.log_barrier``)."""
        self._barrier = flush

    # -- writes: one transaction per group -------------------------------------------
    async def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._wake is None:
            raise RuntimeError("GroupCommitSqliteSaver is not open (use GroupCommitSqliteSaver.open)")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, fut))
        self._wake.set()
        return await fut

    async def _write_forever(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            group, self._pending = self._pending, []
            if not group:
                continue
            try:
                if self._barrier is not None:
                    await self._barrier()
                outcomes = await loop.run_in_executor(self._write_pool, self._commit, group)
            except asyncio.CancelledError:
                for _, _, fut in group:
                    if not fut.done():
                        fut.cancel()
                raise
            except Exception as exc:  # the commit itself failed: nothing of the group is kept
                log.exception("checkpoint commit failed; %d writes not kept", len(group))
                outcomes = [(False, exc)] * len(group)
            for (_, _, fut), (ok, value) in zip(group, outcomes):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _commit(self, group: list[tuple[Callable[..., Any], tuple[Any, ...], Any]]) -> list[tuple[bool, Any]]:
        """In the writer thread: every write of the group in one transaction. A write that
        fails on its own (its value does not serialize) fails alone; the others are kept."""
        conn = self._group.conn
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")  # the write lock now, waiting out other processes
        try:
            for fn, args, _ in group:
                try:
                    outcomes.append((True, fn(*args)))
                except Exception as exc:
                    if conn.in_transaction:
                        outcomes.append((False, exc))
                    else:
                        raise  # SQLite rolled the transaction back: the group is lost
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        # Serialized in the writer thread (SqliteSaver.put): the caller awaits the commit,
        # and the executor runs with durability="sync", so nothing changes it meanwhile.
        return await self._submit(self._group.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        await self._submit(self._group.put_writes, config, list(writes), task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._submit(self._group.delete_thread, thread_id)

    # -- reads: a connection per reader thread ----------------------------------------
    def _reader(self) -> SqliteSaver:
        saver = getattr(self._local, "saver", None)
        if saver is None:
            saver = SqliteSaver(_connect(self.path, self.synchronous), serde=self.serde)
            saver.is_setup = True
            saver._has_task_path = self._has_task_path
            self._local.saver = saver
            with self._readers_lock:
                self._reader_savers.append(saver)
        return saver

    async def _read(self, fn: Callable[[SqliteSaver], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, lambda: fn(self._reader()))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._read(lambda s: s.get_tuple(config))

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None,
                    ) -> AsyncIterator[CheckpointTuple]:
        # Read whole (one hop to a reader thread), as SqliteSaver.list reads its rows.
        for item in await self._read(lambda s: list(s.list(config, filter=filter, before=before, limit=limit))):
            yield item

    async def aget_delta_channel_history(self, *, config: RunnableConfig,
                                         channels: Sequence[str]) -> Mapping[str, Any]:
        return await self._read(lambda s: s.get_delta_channel_history(config=config, channels=channels))
