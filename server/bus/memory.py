"""The embedded bus: logs in process memory, fan-out to in-process sinks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import islice
from typing import Any

from ..events import Event
from .base import CursorExpired, LogBounds, LogClosed, Sink

log = logging.getLogger(__name__)


class _Log:
    __slots__ = ("events", "last_seq", "visible_seq", "ended_at", "sinks")

    def __init__(self, max_events: int) -> None:
        self.events: deque[Event] = deque(maxlen=max_events)
        self.last_seq = 0
        self.visible_seq = 0  # with a journal: the last seq kept on disk, all readers see
        self.ended_at: float | None = None
        self.sinks: set[Sink] = set()

    @property
    def first_seq(self) -> int:
        return self.last_seq - len(self.events) + 1


class MemoryBus:
    """One process, no Redis: the default. Logs expire ``ttl`` seconds after their run ends."""

    def __init__(self, *, max_events: int, ttl_s: float, subscriber_buffer: int,
                 journal: Any = None) -> None:
        self.journal = journal  # optional: keeps logs on disk across restarts
        if journal is not None:
            journal.on_commit = self._show
        self.max_events = max_events
        self.ttl_s = ttl_s
        self.subscriber_buffer = subscriber_buffer
        self._logs: dict[str, _Log] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemoryBus:
        self._reaper = asyncio.create_task(self._reap_forever(), name="memory-bus-reaper")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None

    async def append(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> Event:
        lg = self._logs.get(run_id)
        if lg is None:
            lg = self._logs[run_id] = _Log(self.max_events)
        if lg.ended_at is not None:
            raise LogClosed(f"run {run_id!r} has ended; its log takes no more events")
        lg.last_seq += 1
        event = Event(run_id, lg.last_seq, ns, agent, data, time.time())
        lg.events.append(event)
        if event.is_terminal:
            lg.ended_at = time.monotonic()
        if self.journal is not None:
            self.journal.put_event(event)  # shown to readers once kept (_show)
        else:
            self._show([event])
        return event

    def _show(self, events: list[Event]) -> None:
        for event in events:
            lg = self._logs.get(event.run_id)
            if lg is None or event.seq <= lg.visible_seq:
                continue
            lg.visible_seq = event.seq
            for sink in lg.sinks:
                sink.push(event)

    async def read(self, run_id: str, after: int, limit: int | None = None) -> list[Event]:
        lg = self._logs.get(run_id)
        if lg is None:
            return []
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
            return None
        return LogBounds(lg.first_seq, lg.visible_seq,
                         lg.ended_at is not None and lg.visible_seq == lg.last_seq)

    async def attach(self, run_id: str, sink: Sink) -> None:
        lg = self._logs.get(run_id)
        if lg is None:
            lg = self._logs[run_id] = _Log(self.max_events)
        lg.sinks.add(sink)

    async def detach(self, run_id: str, sink: Sink) -> None:
        lg = self._logs.get(run_id)
        if lg is not None:
            lg.sinks.discard(sink)

    async def ping(self) -> bool:
        return True

    async def flush(self) -> None:
        if self.journal is not None:
            await self.journal.flush()

    def reap(self, now: float | None = None) -> int:
        """Drop logs whose run ended more than ttl ago; returns how many."""
        now = time.monotonic() if now is None else now
        expired = [
            rid for rid, lg in self._logs.items()
            if lg.ended_at is not None and now - lg.ended_at >= self.ttl_s and not lg.sinks
        ]
        for rid in expired:
            del self._logs[rid]
        if expired and self.journal is not None:
            self.journal.drop_logs(expired)
        return len(expired)

    def restore(self, logs: dict[str, list[Event]]) -> None:
        """Load logs kept by the journal; an ended log's ttl still counts from its end."""
        now_wall, now_mono = time.time(), time.monotonic()
        for run_id, events in logs.items():
            lg = self._logs[run_id] = _Log(self.max_events)
            lg.events.extend(events[-self.max_events:])
            lg.last_seq = lg.visible_seq = events[-1].seq if events else 0
            if events and events[-1].is_terminal:
                lg.ended_at = now_mono - max(0.0, now_wall - events[-1].ts)

    async def _reap_forever(self) -> None:
        interval = max(0.05, min(30.0, self.ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            n = self.reap()
            if n:
                log.debug("expired %d run logs", n)
