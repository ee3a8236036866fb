"""The bus interface, and the one subscription algorithm every backend shares.

A backend stores logs and rings a doorbell when an event is appended; the gapless,
duplicate-free history-to-live handoff lives here, once, in ``Subscription``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, AsyncIterator, Callable, Protocol

from ..events import STATUS, Event

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


class BusError(Exception):
    """Base of the errors a subscriber can meet; ``code`` maps onto HTTP."""

    code = "bus_error"


class UnknownLog(BusError):
    code = "not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} has no event log (unknown run, or its log expired)")


class LogLost(UnknownLog):
    """The run's log (or its record) vanished while the run was live: the backend lost its
    data (Redis restarted without persistence, a failover to a replica that was behind).

    Nothing more is appended to such a run (a seq is never reused for another event), its
    watchers get ``reset {reason: "log_lost"}`` and an end, and every endpoint answers 404.
    A subclass of UnknownLog: whoever handles "this run has no log" handles this too.
    """

    code = "log_lost"

    def __init__(self, run_id: str, why: str = "its event log vanished (the backend lost its data)") -> None:
        self.run_id = run_id
        self.why = why
        BusError.__init__(self, f"run {run_id!r} is lost: {why}; it cannot continue or be replayed")


class CursorExpired(BusError):
    """Contract item 6: a cursor older than the retained log is an explicit signal."""

    code = "cursor_expired"

    def __init__(self, run_id: str, after: int, first_seq: int) -> None:
        self.first_seq = first_seq
        super().__init__(
            f"cursor {after} is older than the retained log of run {run_id!r}, "
            f"which starts at seq {first_seq}; restart without a cursor to read what is kept"
        )


class CursorAhead(BusError):
    code = "cursor_ahead"

    def __init__(self, run_id: str, after: int, last_seq: int) -> None:
        super().__init__(f"cursor {after} is past the end of run {run_id!r}'s log (last seq {last_seq})")


class LogClosed(BusError):
    code = "log_closed"


class Fenced(BusError):
    """This process's execution of a run was superseded (another worker took the run over
    after this one's lease ran out): it must stop without writing anything for the run."""

    code = "fenced"

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} was taken over by another worker; this execution stops")


class BackendUnavailable(BusError):
    """The backend stayed unreachable past its outage allowance (HTTP 503, never a 500)."""

    code = "backend_unavailable"


@dataclass(frozen=True, slots=True)
class LogBounds:
    first_seq: int  # oldest retained seq (last_seq + 1 when the log is empty)
    last_seq: int
    ended: bool


class Sink:
    """A subscriber's bounded live buffer. The backend pushes; it never waits.

    When it overflows, the buffer is emptied and flagged: the subscriber is cut from
    the live stream and resyncs from the log (contract item 5), so a slow reader
    costs the publisher nothing.
    """

    __slots__ = ("_items", "_limit", "_wake", "overflowed", "idle_check", "active", "drops", "poked")

    def __init__(self, limit: int) -> None:
        self._items: deque[Event] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self.overflowed = False
        self.idle_check = False  # set by the subscription's idle timer
        self.active = False  # anything pushed since the idle timer last fired
        self.drops = 0  # overflows: times this subscriber was cut from live for being slow
        self.poked = False  # set by ``poke``: the reader wants a turn even with nothing new

    def push(self, event: Event) -> None:
        if len(self._items) >= self._limit:
            self._items.clear()
            if not self.overflowed:  # one cut per episode, however far it falls behind
                self.drops += 1
            self.overflowed = True
        self._items.append(event)
        self.active = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def resync_needed(self) -> None:
        """The backend lost track (e.g. pub/sub reconnected): read the log again."""
        self.overflowed = True
        self._wake.set()

    def on_idle_timer(self) -> None:
        """Every IDLE_CHECK_S: if nothing arrived meanwhile, have the reader check the log."""
        if not self.active:
            self.idle_check = True
            self._wake.set()
        self.active = False

    def poke(self) -> None:
        """Wake the reader for a batch even if nothing arrived (an empty one): its transport
        has something of its own to write, e.g. SSE's keep-alive, which a shared timer
        schedules instead of a task per stream."""
        self.poked = True
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()

    def take(self) -> list[Event]:
        items = list(self._items)
        self._items.clear()
        self._wake.clear()
        self.poked = False  # whatever is taken now is the reader's turn
        return items


class Bus(Protocol):
    """Appends events to run logs, reads them back, and fans them out live."""

    subscriber_buffer: int

    async def append(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> Event: ...

    async def emit(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> None:
        """Append without waiting for the backend (a run's stream of chunks): the backend may
        write what is ready in batches. Order per run is kept with ``append``; a failure is
        raised by the run's next emit, append or ``flush``."""
        ...

    async def read(self, run_id: str, after: int, limit: int | None = None) -> list[Event]:
        """Events with seq > after, oldest first; CursorExpired if after is trimmed."""
        ...

    async def bounds(self, run_id: str) -> LogBounds | None: ...

    async def attach(self, run_id: str, sink: Sink) -> None: ...

    async def detach(self, run_id: str, sink: Sink) -> None: ...

    async def ping(self) -> bool: ...

    async def flush(self) -> None:
        """Wait until every event appended so far is visible to readers.

        A backend may show an event only once it is durable (the journaled memory bus
        does, so no client ever sees an event a crash could take back).
        """
        ...


class ControlBus(Bus, Protocol):
    """A bus that spans processes also carries control messages (a cancel for the worker
    that owns a run) over the connection it already holds for fan-out."""

    async def on_control(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None: ...

    async def publish_control(self, name: str, message: dict[str, Any]) -> int:
        """Send ``message`` to every process listening on ``name``; returns how many got it."""
        ...


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
