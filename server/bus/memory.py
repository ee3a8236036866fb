"""The embedded bus: live logs in process memory, fan-out to in-process sinks.

Memory holds what live runs and their watchers need: the log of every run still going,
and the logs of runs that ended recently, up to a bound of events and bytes (oldest
end first out). A finished log pushed out of memory is still whole on disk when the
journal is on: reads and bounds of it go to the journal (in its reader thread), with the
same cursor rules. Without the journal, a log pushed out is gone, exactly as if its TTL
had passed (``finished_logs_max_*`` in config.py say so).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from itertools import islice
from typing import TYPE_CHECKING, Any

from ..events import Event
from .base import CursorExpired, LogBounds, LogClosed, Sink

if TYPE_CHECKING:
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)

# What an event costs in memory besides its JSON: the Event, its data dict and strings.
# Counted so the byte bound means roughly what the process pays, not a third of it.
EVENT_OVERHEAD_BYTES = 400


class _Log:
    __slots__ = ("events", "last_seq", "visible_seq", "ended_at", "sinks", "size")

    def __init__(self, max_events: int) -> None:
        self.events: deque[Event] = deque(maxlen=max_events)
        self.last_seq = 0
        self.visible_seq = 0  # with a journal: the last seq kept on disk, all readers see
        self.ended_at: float | None = None
        self.sinks: set[Sink] = set()
        self.size = 0  # bytes counted against the finished-log bound, once finished

    @property
    def first_seq(self) -> int:
        return self.last_seq - len(self.events) + 1


class MemoryBus:
    """One process, no Redis: the default. Logs expire ``ttl`` seconds after their run ends.

    ``finished_max_events`` / ``finished_max_bytes`` bound the finished logs kept in
    memory; a finished log that someone is reading stays until they are done.
    """

    def __init__(self, *, max_events: int, ttl_s: float, subscriber_buffer: int,
                 journal: Any = None, finished_max_events: int = 20_000,
                 finished_max_bytes: int = 16 * 1024 * 1024, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.journal = journal  # optional: keeps logs on disk across restarts
        if journal is not None:
            journal.on_commit = self._show
            journal.max_events = max_events  # the disk keeps what memory would, no more
        self.max_events = max_events
        self.ttl_s = ttl_s
        self.subscriber_buffer = subscriber_buffer
        self.finished_max_events = finished_max_events
        self.finished_max_bytes = finished_max_bytes
        self._logs: dict[str, _Log] = {}  # live and recently finished
        # Finished logs still in memory, oldest end first, and what they hold.
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.finished_events = 0
        self.finished_bytes = 0
        # Watchers of finished logs read from the journal: their runs do not expire under them.
        self._readers: dict[str, set[Sink]] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemoryBus:
        self._reaper = asyncio.create_task(self._reap_forever(), name="memory-bus-reaper")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None

    def stats(self) -> dict[str, int]:
        """What the bus holds in memory (the stats log line reports it)."""
        return {"logs_live": len(self._logs) - len(self._finished), "logs_finished": len(self._finished),
                "finished_events": self.finished_events, "finished_bytes": self.finished_bytes,
                "journal_readers": len(self._readers)}

    async def open_log(self, run_id: str) -> None:
        """Start an empty log that is not a run's (a delivery context's)."""
        if run_id not in self._logs:
            self._logs[run_id] = _Log(self.max_events)

    async def append(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> Event:
        lg = self._logs.get(run_id)
        if lg is None:
            # Not in memory: a new run, or one that ended and left for the journal. The
            # latter takes no more events (a seq is never reused for another event).
            if self.journal is not None and await self.journal.log_bounds(run_id) is not None:
                raise LogClosed(f"run {run_id!r} has ended; its log takes no more events")
            lg = self._logs.get(run_id)  # another append may have opened it meanwhile
            if lg is None:
                lg = self._logs[run_id] = _Log(self.max_events)
        if lg.ended_at is not None:
            raise LogClosed(f"run {run_id!r} has ended; its log takes no more events")
        lg.last_seq += 1
        event = Event(run_id, lg.last_seq, ns, agent, data, time.time())
        lg.events.append(event)
        if event.is_terminal:
            lg.ended_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.published(ns)
        if self.journal is not None:
            self.journal.put_event(event)  # shown to readers once kept (_show)
        else:
            self._show([event])
        return event

    async def emit(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> None:
        # An append here never waits for I/O already (the journal keeps it behind).
        await self.append(run_id, ns, agent, data)

    def _show(self, events: list[Event]) -> None:
        for event in events:
            lg = self._logs.get(event.run_id)
            if lg is None or event.seq <= lg.visible_seq:
                continue
            lg.visible_seq = event.seq
            for sink in lg.sinks:
                sink.push(event)
            if event.is_terminal:
                self._finish(event.run_id, lg)

    # -- finished logs in memory --------------------------------------------------
    def _finish(self, run_id: str, lg: _Log) -> None:
        """The run's terminal event is visible (and, with a journal, on disk): from now on
        its log counts against the finished-log bound."""
        lg.size = sum(len(e.encode()) + EVENT_OVERHEAD_BYTES for e in lg.events)
        self._finished[run_id] = None
        self.finished_events += len(lg.events)
        self.finished_bytes += lg.size
        self._trim_finished()

    def _forget(self, run_id: str) -> None:
        lg = self._logs.pop(run_id, None)
        if lg is not None and self._finished.pop(run_id, 0) is None:
            self.finished_events -= len(lg.events)
            self.finished_bytes -= lg.size

    def _trim_finished(self) -> None:
        """Oldest end first, push finished logs out of memory while over the bound. A log
        with watchers stays (it goes once the last one detaches): dropping it under them
        would cut a replay that is under way."""
        if self.finished_events <= self.finished_max_events and self.finished_bytes <= self.finished_max_bytes:
            return
        for run_id in list(self._finished):
            if self.finished_events <= self.finished_max_events and self.finished_bytes <= self.finished_max_bytes:
                return
            if not self._logs[run_id].sinks:
                self._forget(run_id)

    # -- reading ------------------------------------------------------------------
    async def read(self, run_id: str, after: int, limit: int | None = None) -> list[Event]:
        lg = self._logs.get(run_id)
        if lg is None:
            if self.journal is None:
                return []
            kept = await self.journal.read_log(run_id, after, limit)
            if kept is None:
                return []
            first, _last, events = kept
            if after < first - 1:
                raise CursorExpired(run_id, after, first)
            return events
        first = lg.first_seq
        if after < first - 1:
            raise CursorExpired(run_id, after, first)
        start = after - first + 1  # index of seq after+1
        visible = lg.visible_seq - first + 1
        end = visible if limit is None else min(visible, start + limit)
        if start >= end:
            return []
        return list(islice(lg.events, start, end))

    async def bounds(self, run_id: str) -> LogBounds | None:
        lg = self._logs.get(run_id)
        if lg is None:
            if self.journal is None:
                return None
            kept = await self.journal.log_bounds(run_id)
            return None if kept is None else LogBounds(kept[0], kept[1], True)
        return LogBounds(lg.first_seq, lg.visible_seq,
                         lg.ended_at is not None and lg.visible_seq == lg.last_seq)

    async def attach(self, run_id: str, sink: Sink) -> None:
        lg = self._logs.get(run_id)
        if lg is None and self.journal is not None and await self.journal.log_bounds(run_id) is not None:
            # A finished log on disk: nothing will be pushed, but while this watcher reads
            # it the log must not expire.
            self._readers.setdefault(run_id, set()).add(sink)
            return
        lg = self._logs.get(run_id)
        if lg is None:
            # Watching before the first append (the log starts empty and live).
            lg = self._logs[run_id] = _Log(self.max_events)
        lg.sinks.add(sink)

    async def detach(self, run_id: str, sink: Sink) -> None:
        readers = self._readers.get(run_id)
        if readers is not None and sink in readers:
            readers.discard(sink)
            if not readers:
                del self._readers[run_id]
            return
        lg = self._logs.get(run_id)
        if lg is None:
            return
        lg.sinks.discard(sink)
        if lg.sinks:
            return
        if lg.last_seq == 0:
            del self._logs[run_id]  # watched, never written: leave nothing behind
        elif run_id in self._finished:
            self._trim_finished()  # it may have stayed over the bound for this watcher

    async def ping(self) -> bool:
        return True

    async def flush(self) -> None:
        if self.journal is not None:
            await self.journal.flush()

    # -- expiry ---------------------------------------------------------------------
    def reap(self, now: float | None = None) -> int:
        """Drop logs whose run ended more than ttl ago (in memory, and on disk); returns how
        many left memory."""
        now = time.monotonic() if now is None else now
        expired = [
            rid for rid in self._finished
            if now - self._logs[rid].ended_at >= self.ttl_s and not self._logs[rid].sinks  # type: ignore[operator]
        ]
        for rid in expired:
            self._forget(rid)
        if self.journal is not None:
            # The journal's own clock is the terminal event's wall time.
            self.journal.expire_logs(time.time() + (now - time.monotonic()) - self.ttl_s,
                                     keep=set(self._readers) | set(self._logs))
        return len(expired)

    def restore(self, logs: dict[str, list[Event]]) -> None:
        """Load the logs of runs a restart interrupted (the journal keeps finished ones on
        disk and serves them from there)."""
        for run_id, events in logs.items():
            if not events or events[-1].is_terminal:
                continue
            lg = self._logs[run_id] = _Log(self.max_events)
            lg.events.extend(events[-self.max_events:])
            lg.last_seq = lg.visible_seq = events[-1].seq

    async def _reap_forever(self) -> None:
        interval = max(0.05, min(30.0, self.ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            n = self.reap()
            if n:
                log.debug("expired %d run logs", n)
