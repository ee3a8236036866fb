"""The embedded default's memory on disk: run records and event logs in a SQLite file.

Write-behind with group commit: appends stay in-memory fast, and a writer task commits
whatever has gathered while the previous commit ran, in a thread of its own. On start-up the process reloads what
it kept and resumes the runs a restart interrupted. A crash loses at most the last
batch; a resumed run rewinds to a checkpoint whose step is in the kept log, so the
folded stream stays whole (see Executor.rewind_point).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from .events import Event

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
                                   PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, body BLOB NOT NULL);
"""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._events: list[Event] = []
        # Called with each committed batch of events: the bus shows events only once kept,
        # so no client ever sees an event a crash could take back.
        self.on_commit: Any = None
        self._runs: dict[str, bytes] = {}
        self._drops: set[str] = set()
        self._wake = asyncio.Event()
        self._flushed: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def __aenter__(self) -> Journal:
        await self._in_thread(self._open)
        self._writer = asyncio.create_task(self._write_forever(), name="journal-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._conn is not None:
            await self._in_thread(self._conn.close)
        self._pool.shutdown(wait=True)

    # -- what the bus and the store hand over (never blocks) ------------------
    def put_event(self, event: Event) -> None:
        event.encode()  # cached on the event: the transports need the same bytes
        self._events.append(event)
        self._wake.set()

    def put_run(self, run_id: str, record: dict[str, Any]) -> None:
        self._runs[run_id] = orjson.dumps(record)
        self._wake.set()

    def drop_logs(self, run_ids: list[str]) -> None:
        self._drops.update(run_ids)
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything handed over so far is committed."""
        if self._writer is None or self._writer.done():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushed.append(fut)
        self._wake.set()
        await fut

    # -- writer ---------------------------------------------------------------
    def _commit(self, events: list[Event], runs: dict[str, bytes], drops: set[str]) -> None:
        assert self._conn is not None
        with self._conn:
            if events:
                self._conn.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)",
                                       [(e.run_id, e.seq, e.encode()) for e in events])
            if runs:
                self._conn.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)", runs.items())
            if drops:
                self._conn.executemany("DELETE FROM events WHERE run_id = ?", [(r,) for r in drops])

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            events, self._events = self._events, []
            runs, self._runs = self._runs, {}
            drops, self._drops = self._drops, set()
            waiters, self._flushed = self._flushed, []
            try:
                await self._in_thread(self._commit, events, runs, drops)
            except Exception:
                log.exception("journal commit failed; %d events not kept", len(events))
            if events and self.on_commit is not None:
                self.on_commit(events)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    # -- start-up --------------------------------------------------------------
    def _load(self) -> tuple[list[dict[str, Any]], dict[str, list[Event]]]:
        assert self._conn is not None
        records = [orjson.loads(body) for (body,) in self._conn.execute("SELECT body FROM runs")]
        logs: dict[str, list[Event]] = {}
        for run_id, body in self._conn.execute("SELECT run_id, body FROM events ORDER BY run_id, seq"):
            logs.setdefault(run_id, []).append(Event.decode(body))
        return records, logs

    async def load(self) -> tuple[list[dict[str, Any]], dict[str, list[Event]]]:
        return await self._in_thread(self._load)

    def _forget_runs(self, run_ids: list[str]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in run_ids])

    async def forget_runs(self, run_ids: list[str]) -> None:
        if run_ids:
            await self._in_thread(self._forget_runs, run_ids)
