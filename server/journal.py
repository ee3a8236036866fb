"""The embedded default's memory on disk: run records and event logs in a SQLite file.

Write-behind with group commit: appends stay in-memory fast, and a writer task commits
whatever has gathered while the previous commit ran, in a thread of its own. On start-up the process reloads what
it kept and resumes the runs a restart interrupted. A crash loses at most the last
batch; a resumed run rewinds to a checkpoint whose step is in the kept log, so the
folded stream stays whole (see Executor.rewind_point).

A finished run's log lives here, not in memory: the commit that keeps a terminal event
also records the log's bounds and end time (table ``logs``), and the bus reads finished
logs back on demand through a second connection in a reader thread of its own, so a
replay never waits behind a commit and never blocks the event loop. The disk keeps what
the contract says a log keeps: the last ``max_events`` events, until ``ttl`` after the end.
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
CREATE TABLE IF NOT EXISTS logs (run_id TEXT PRIMARY KEY, first_seq INTEGER NOT NULL,
                                 last_seq INTEGER NOT NULL, ended_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS logs_by_end ON logs (ended_at);
CREATE TABLE IF NOT EXISTS threads (thread_id TEXT PRIMARY KEY, body BLOB NOT NULL);
"""


class Journal:
    def __init__(self, path: Path, max_events: int | None = None) -> None:
        self.path = Path(path)
        # Events kept per run (the newest); None keeps all. The bus sets its own bound.
        self.max_events = max_events
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-reader")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._events: list[Event] = []
        # Called with each committed batch of events: the bus shows events only once kept,
        # so no client ever sees an event a crash could take back.
        self.on_commit: Any = None
        self._runs: dict[str, bytes] = {}
        self._drops: set[str] = set()
        self._expiry: tuple[float, set[str]] | None = None
        self._wake = asyncio.Event()
        # Things handed over so far, and how many of them are committed: a flush waits
        # only for the commit that holds what was handed over before it (often the one
        # already running), and returns at once when everything is in.
        self._handed = 0
        self._kept = 0
        self._flushed: list[tuple[int, asyncio.Future[None]]] = []
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
        # Reads of finished logs: their own connection (WAL lets it read while the writer
        # commits) and their own thread. It sees only committed rows, and the bus shows an
        # event only once committed, so whatever a reader was shown is there to read.
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)

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
        if self._reader is not None:
            await self._in_reader(self._reader.close)
        self._pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    async def _in_reader(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, *args)

    # -- what the bus and the store hand over (never blocks) ------------------
    def put_event(self, event: Event) -> None:
        event.encode()  # cached on the event: the transports need the same bytes
        self._events.append(event)
        self._handed += 1
        self._wake.set()

    def put_run(self, run_id: str, record: Any) -> None:
        """Keep a run's record: a dict, or a dataclass (orjson writes both)."""
        self._runs[run_id] = orjson.dumps(record)
        self._handed += 1
        self._wake.set()

    def drop_logs(self, run_ids: list[str]) -> None:
        self._drops.update(run_ids)
        self._handed += 1
        self._wake.set()

    def expire_logs(self, ended_before: float, keep: set[str]) -> None:
        """Delete the logs of runs that ended (wall time) before ``ended_before``, except
        ``keep`` (logs someone is reading, or still in memory); done by the next commit."""
        self._expiry = (ended_before, keep)
        self._handed += 1
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything handed over so far is committed."""
        if self._writer is None or self._writer.done() or self._kept >= self._handed:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushed.append((self._handed, fut))
        self._wake.set()
        await fut

    # -- writer ---------------------------------------------------------------
    def _commit(self, events: list[Event], runs: dict[str, bytes], drops: set[str],
                expiry: tuple[float, set[str]] | None = None) -> None:
        assert self._conn is not None
        with self._conn:
            if events:
                self._conn.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)",
                                       [(e.run_id, e.seq, e.encode()) for e in events])
                self._keep_bounds(events)
            if runs:
                self._conn.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?)", runs.items())
            if drops:
                self._delete_logs(drops)
            if expiry is not None:
                ended_before, keep = expiry
                old = {r for (r,) in self._conn.execute(
                    "SELECT run_id FROM logs WHERE ended_at < ?", (ended_before,))} - keep
                if old:
                    self._delete_logs(old)

    def _delete_logs(self, run_ids: set[str]) -> None:
        assert self._conn is not None
        rows = [(r,) for r in run_ids]
        self._conn.executemany("DELETE FROM events WHERE run_id = ?", rows)
        self._conn.executemany("DELETE FROM logs WHERE run_id = ?", rows)

    def _keep_bounds(self, events: list[Event]) -> None:
        """Trim each run's log to its newest ``max_events`` (what memory keeps), and record
        the bounds and end of every log whose terminal event is in this batch."""
        assert self._conn is not None
        last: dict[str, int] = {}
        ended: dict[str, float] = {}
        for e in events:
            last[e.run_id] = max(e.seq, last.get(e.run_id, 0))
            if e.is_terminal:
                ended[e.run_id] = e.ts
        if self.max_events is not None:
            trims = [(r, seq - self.max_events) for r, seq in last.items() if seq > self.max_events]
            if trims:
                self._conn.executemany("DELETE FROM events WHERE run_id = ? AND seq <= ?", trims)
        self._end_logs(ended)

    def _end_logs(self, ended: dict[str, float]) -> None:
        if ended:
            assert self._conn is not None
            self._conn.executemany(
                "INSERT OR REPLACE INTO logs SELECT run_id, MIN(seq), MAX(seq), ? FROM events "
                "WHERE run_id = ? GROUP BY run_id", [(ts, r) for r, ts in ended.items()])

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            events, self._events = self._events, []
            runs, self._runs = self._runs, {}
            drops, self._drops = self._drops, set()
            expiry, self._expiry = self._expiry, None
            handed = self._handed  # everything handed over up to here is in this group
            if events or runs or drops or expiry is not None:
                try:
                    await self._in_thread(self._commit, events, runs, drops, expiry)
                except Exception:
                    log.exception("journal commit failed; %d events not kept", len(events))
                if events and self.on_commit is not None:
                    self.on_commit(events)
            self._kept = handed
            waiting = []
            for target, fut in self._flushed:
                if target > handed:
                    waiting.append((target, fut))  # handed over during this commit: the next
                elif not fut.done():
                    fut.set_result(None)
            self._flushed = waiting

    # -- finished logs, read on demand (the reader thread) ---------------------------
    def _bounds(self, run_id: str) -> tuple[int, int, float] | None:
        assert self._reader is not None
        return self._reader.execute("SELECT first_seq, last_seq, ended_at FROM logs WHERE run_id = ?",
                                    (run_id,)).fetchone()

    async def log_bounds(self, run_id: str) -> tuple[int, int, float] | None:
        """(first seq, last seq, end wall time) of a finished log kept here, else None."""
        return await self._in_reader(self._bounds, run_id)

    def _read(self, run_id: str, after: int, limit: int | None) -> tuple[int, int, list[Event]] | None:
        assert self._reader is not None
        conn = self._reader
        conn.execute("BEGIN")  # bounds and events from one snapshot, whatever expiry does
        try:
            bounds = conn.execute("SELECT first_seq, last_seq FROM logs WHERE run_id = ?",
                                  (run_id,)).fetchone()
            if bounds is None:
                return None
            first, last = bounds
            if after < first - 1:
                return first, last, []  # the caller says cursor_expired
            rows = conn.execute("SELECT body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                (run_id, after, -1 if limit is None else limit)).fetchall()
        finally:
            conn.execute("COMMIT")
        return first, last, [Event.decode(body) for (body,) in rows]

    async def read_log(self, run_id: str, after: int,
                       limit: int | None = None) -> tuple[int, int, list[Event]] | None:
        """A finished log's (first seq, last seq, events with seq > after, oldest first, at
        most ``limit``); None when no finished log of that run is kept."""
        return await self._in_reader(self._read, run_id, after, limit)

    # -- start-up --------------------------------------------------------------
    def _load(self) -> tuple[list[dict[str, Any]], dict[str, list[Event]]]:
        """Run records, and the logs of runs that had not ended: finished logs stay on disk.

        A journal written before the ``logs`` table existed has finished logs without a
        row there; they get one now (trimmed), once."""
        assert self._conn is not None
        records = [orjson.loads(body) for (body,) in self._conn.execute("SELECT body FROM runs")]
        logs: dict[str, list[Event]] = {}
        for run_id, body in self._conn.execute(
                "SELECT run_id, body FROM events WHERE run_id NOT IN (SELECT run_id FROM logs) "
                "ORDER BY run_id, seq"):
            logs.setdefault(run_id, []).append(Event.decode(body))
        ended = {r: events[-1].ts for r, events in logs.items() if events[-1].is_terminal}
        if ended:
            with self._conn:
                if self.max_events is not None:
                    self._conn.executemany("DELETE FROM events WHERE run_id = ? AND seq <= ?",
                                           [(r, logs[r][-1].seq - self.max_events) for r in ended])
                self._end_logs(ended)
        return records, {r: events for r, events in logs.items() if r not in ended}

    async def load(self) -> tuple[list[dict[str, Any]], dict[str, list[Event]]]:
        return await self._in_thread(self._load)

    def _forget_runs(self, run_ids: list[str]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in run_ids])

    # -- LangGraph threads' records (rare writes: each one its own commit) -------------
    def _put_thread(self, thread_id: str, body: bytes | None) -> None:
        assert self._conn is not None
        with self._conn:
            if body is None:
                self._conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
            else:
                self._conn.execute("INSERT OR REPLACE INTO threads VALUES (?, ?)", (thread_id, body))

    async def put_thread(self, thread_id: str, record: dict[str, Any] | None) -> None:
        """Keep (or with None, forget) a thread's record."""
        await self._in_thread(self._put_thread, thread_id,
                              None if record is None else orjson.dumps(record))

    def _threads(self) -> list[dict[str, Any]]:
        assert self._conn is not None
        return [orjson.loads(body) for (body,) in self._conn.execute("SELECT body FROM threads")]

    async def load_threads(self) -> list[dict[str, Any]]:
        return await self._in_thread(self._threads)

    async def forget_runs(self, run_ids: list[str]) -> None:
        if run_ids:
            await self._in_thread(self._forget_runs, run_ids)
