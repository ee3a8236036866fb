"""The one subscription algorithm every backend shares: ``bus.subscribe(run, after)``.

The gapless, duplicate-free handoff from a log's history to its live events lives here,
once, in ``Subscription``; every transport (SSE, Socket.IO, the LangGraph protocol, the
context streams) is a thin adapter over it and never orders, dedups or checks cursors.
"""

from __future__ import annotations

import asyncio
import logging
import random
from operator import attrgetter
from typing import AsyncIterator

from ..events import STATUS, Event
from .base import Bus, CursorAhead, CursorExpired, LogBounds, LogLost, Sink, UnknownLog

log = logging.getLogger(__name__)

READ_PAGE = 500
# A subscription's history is read and handed on page by page: a small first page, so a
# long replay's first events are written while the rest is still being read, then bigger
# ones (fewer reads: a bus read of a page may cost a round trip or a walk to its start).
FIRST_READ = 100
HISTORY_PAGE = 2000
_seq = attrgetter("seq")
_ns = attrgetter("ns")
# A quiet subscriber checks the log this often: the doorbell may have missed the
# last event (e.g. it rang before the subscription was active), and nothing follows it.
IDLE_CHECK_S = 5.0


async def subscribe(bus: Bus, run_id: str, after: int | None, *, attach: bool = True) -> Subscription:
    """Validate the cursor and open a subscription (before any response is sent).

    ``attach=False`` leaves attaching to the reader's first step (``sub.open()``): a
    streaming response whose body never starts (the client left first) then holds nothing.
    """
    bounds = await bus.bounds(run_id)
    if bounds is None:
        raise UnknownLog(run_id)
    trimmed_from: int | None = None
    if after is None:
        after = bounds.first_seq - 1
        if bounds.first_seq > 1:
            trimmed_from = bounds.first_seq
    elif after > bounds.last_seq:
        raise CursorAhead(run_id, after, bounds.last_seq)
    elif after < bounds.first_seq - 1:
        raise CursorExpired(run_id, after, bounds.first_seq)
    sub = Subscription(bus, run_id, after, trimmed_from)
    if attach:
        await sub.open()
    return sub


class Subscription:
    """Every event with seq > after, in order, once, then live until the terminal event.

    Iterating yields batches (all events ready at that moment; the history as it is
    read, a page of at most HISTORY_PAGE events at a time), so transports can write
    several frames at once. Attaching to the live stream happens before the
    history is read; live events already covered by history are skipped by seq, and
    a hole in live seqs is filled from the log (contract items 2 and 3).
    """

    def __init__(self, bus: Bus, run_id: str, after: int, trimmed_from: int | None) -> None:
        self.bus = bus
        self.run_id = run_id
        self.last = after
        self.trimmed_from = trimmed_from
        self.done = False
        self.resyncs = 0
        self._sink = Sink(bus.subscriber_buffer)
        self._attached = False
        self._stopped: BaseException | None = None
        self._presence: object = None

    @property
    def drops(self) -> int:
        """Times the live buffer overflowed (a slow reader); each one was a resync."""
        return self._sink.drops

    def poke(self) -> None:
        """Have the reader's iteration yield soon, an empty batch if nothing is new (only
        readers that poke ever see an empty batch)."""
        self._sink.poke()

    def stop(self, reason: BaseException) -> None:
        """End this subscription from outside (its reader's credential expired, say): the
        reader's next step raises ``reason`` instead of waiting for more events."""
        self._stopped = reason
        self._sink.wake()

    async def open(self) -> None:
        if not self._attached:
            await self.bus.attach(self.run_id, self._sink)
            self._attached = True
            # Someone watches this log now, on whichever process (the delivery gate asks).
            presence = getattr(self.bus, "presence", None)
            if presence is not None:
                self._presence = await presence.enter(self.run_id)

    async def aclose(self) -> None:
        if self._attached:
            self._attached = False
            token, self._presence = self._presence, None
            if token is not None:
                # First, and not awaited: a reader being cancelled (a client gone mid-stream,
                # whose clean-up is cancelled again at every await, as sse-starlette's task
                # group does) must stop counting as a watcher now, whatever happens to the
                # awaits after this one (the detach below may await an unsubscribe).
                self.bus.presence.leave_soon(token)
            await self.bus.detach(self.run_id, self._sink)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._batches()

    async def _history(self, upto: int | None = None) -> list[Event]:
        """Read the log after self.last (up to ``upto`` inclusive if given)."""
        out: list[Event] = []
        cursor = self.last
        while True:
            page = await self.bus.read(self.run_id, cursor, READ_PAGE)
            if upto is not None:
                page = [e for e in page if e.seq <= upto]
            out.extend(page)
            if len(page) < READ_PAGE:
                return out
            cursor = page[-1].seq

    def _accept(self, events: list[Event]) -> list[Event]:
        """Keep only the next seqs in order; stop after the terminal event."""
        out: list[Event] = []
        for e in events:
            if self.done:
                break
            if e.seq != self.last + 1:
                continue
            out.append(e)
            self.last = e.seq
            self.done = e.is_terminal
        return out

    def _accept_page(self, page: list[Event]) -> list[Event]:
        """``_accept`` of a page read from the log, with the same result: a page of exactly
        the next seqs and no STATUS event (so none of them can end the stream) is taken
        whole, with no Python step per event (a replay reads tens of thousands)."""
        first, n = self.last + 1, len(page)
        if (n and page[-1].seq == first + n - 1 and STATUS not in map(_ns, page)
                and list(map(_seq, page)) == list(range(first, first + n))):
            self.last = page[-1].seq
            return page
        return self._accept(page)

    async def _batches(self) -> AsyncIterator[list[Event]]:
        # The history, one read page at a time: a long replay reaches its reader as it is
        # read, never built whole before the first write.
        cursor, limit = self.last, FIRST_READ
        while not self.done:
            if self._stopped is not None:
                raise self._stopped
            page = await self.bus.read(self.run_id, cursor, limit)
            batch = self._accept_page(page)
            if batch:
                yield batch
            if len(page) < limit:
                break
            cursor, limit = page[-1].seq, HISTORY_PAGE
        if not self.done:
            # A client already holding the terminal event gets an immediate, clean end.
            bounds = await self.bus.bounds(self.run_id)
            if bounds is not None and bounds.ended and self.last >= bounds.last_seq:
                self.done = True
        # One timer per subscription, re-armed when it fires: a timeout around every
        # wait would cost a task and a timer handle per wake-up on the hot path.
        loop = asyncio.get_running_loop()
        period = IDLE_CHECK_S * (0.8 + random.random() / 2.5)
        timer: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal timer
            self._sink.on_idle_timer()
            timer = loop.call_later(period, tick)

        timer = loop.call_later(period, tick)
        try:
            async for batch in self._live():
                yield batch
        finally:
            if timer is not None:
                timer.cancel()

    def _present(self, bounds: LogBounds | None) -> LogBounds:
        """The log's bounds, or LogLost if the log vanished under this live subscriber (or
        went backwards: its seqs would name other events). Without this a watcher of a lost
        run would wait forever, fed pings and no end."""
        if bounds is None or bounds.last_seq < self.last:
            raise LogLost(self.run_id)
        return bounds

    async def _live(self) -> AsyncIterator[list[Event]]:
        while not self.done:
            await self._sink.wait()
            if self._stopped is not None:
                raise self._stopped
            if self._sink.idle_check:
                self._sink.idle_check = False
                bounds = self._present(await self.bus.bounds(self.run_id))
                if bounds.last_seq > self.last:
                    self._sink.resync_needed()
            if self._sink.overflowed:
                self._sink.overflowed = False
                self.resyncs += 1
                log.info("subscriber of run %s resyncs from seq %d (dropped from live: %s)",
                         self.run_id, self.last, "buffer full or backend reconnect")
                poked = self._sink.poked  # read next to ``take``, which clears it: no poke lost
                self._sink.take()
                batch = self._accept(await self._history())
                if not batch:
                    # Nothing new: is the log still there? A resync is what a backend asks
                    # for after it reconnected, and an emptied Redis reads as "nothing new".
                    self._present(await self.bus.bounds(self.run_id))
            else:
                poked = self._sink.poked
                live = self._sink.take()
                if not live:
                    if poked:
                        yield live  # a poke's turn, with nothing new
                    continue  # an idle check that found nothing
                first = self.last + 1
                if [e.seq for e in live] == list(range(first, first + len(live))):
                    # The common case, taken whole: exactly the next seqs. Per event this
                    # costs a comparison, not a call (fan-out to N subscribers pays it N
                    # times). A log takes nothing after its terminal event, so only the
                    # last one can end the stream.
                    self.last = live[-1].seq
                    self.done = live[-1].is_terminal
                    yield live
                    continue
                batch = []
                for e in live:
                    if e.seq <= self.last:
                        continue  # already delivered from history
                    if e.seq > self.last + 1:
                        # A hole: the doorbell missed some; the log is the truth.
                        batch.extend(self._accept(await self._history(upto=e.seq - 1)))
                    batch.extend(self._accept([e]))
            if batch or poked:
                yield batch
