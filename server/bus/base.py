"""The bus interface: what a backend does, its errors, and the Sink a subscriber reads from.

A backend stores logs and rings a doorbell when an event is appended; the gapless,
duplicate-free history-to-live handoff every backend shares is ``subscription.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..events import Event

log = logging.getLogger(__name__)



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

    One reader waits on it. Its buffer is a list and its wake-up one future, made while
    the reader waits: an idle watcher holds ~0.2 KiB here, not an asyncio.Event's deque
    and dict plus a deque of its own (~1.5 KiB; at 10,000 watchers, 13 MiB).
    """

    __slots__ = ("_items", "_limit", "_rung", "_waiter", "overflowed", "idle_check", "active", "drops",
                 "poked")

    def __init__(self, limit: int) -> None:
        self._items: list[Event] = []
        self._limit = limit
        self._rung = False  # something for the reader since its last ``take``
        self._waiter: asyncio.Future[None] | None = None  # the reader's, while it waits
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
        self.wake()

    def wake(self) -> None:
        self._rung = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def resync_needed(self) -> None:
        """The backend lost track (e.g. pub/sub reconnected): read the log again."""
        self.overflowed = True
        self.wake()

    def on_idle_timer(self) -> None:
        """Every IDLE_CHECK_S: if nothing arrived meanwhile, have the reader check the log."""
        if not self.active:
            self.idle_check = True
            self.wake()
        self.active = False

    def poke(self) -> None:
        """Wake the reader for a batch even if nothing arrived (an empty one): its transport
        has something of its own to write, e.g. SSE's keep-alive, which a shared timer
        schedules instead of a task per stream."""
        self.poked = True
        self.wake()

    async def wait(self) -> None:
        """Until woken since the last ``take`` (at once if it was already)."""
        if self._rung:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def take(self) -> list[Event]:
        items, self._items = self._items, []  # the reader keeps this list; pushes go to a new one
        self._rung = False
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
