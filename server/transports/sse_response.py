"""sse-starlette's EventSourceResponse served by the request's own task: a lean idle stream.

The library runs every response as an anyio task group of four tasks (the sender, a pinger,
a disconnect listener and a shutdown listener), with their cancel scopes, events and locks:
~25 KiB of the ~47 KiB an idle stream of ours held (bench/README.md, "idle"). Here:

* the request's task (uvicorn's, there anyway) writes, with the library's own sender
  (``_stream_response``: per-send timeout, the body closed on a failed send);
* one small task waits on ``receive`` for the client leaving (a wait, nothing else, and
  its owner, the response, cancels it when the stream ends);
* keep-alives, the per-send timeout and the server's shutdown come from a ``PingWheel``:
  one timer and one task per process and ping period, whatever the number of streams (a
  send records its deadline; the library armed a timer per send, ~10 us each).

Both the wheel and the disconnect reach the body the same way: through ``interrupt`` and
``ping``, which the body's subscription turns into a step of the body (``Subscription.stop``
raises in it, ``Subscription.poke`` wakes it with an empty batch). Nothing is cancelled
from outside, so the body's ``finally`` (detach, presence, session) runs in order.

Depends on sse-starlette's ``_stream_response``, ``_send_with_timeout`` and
``_listen_for_exit_signal`` (3.x); tests/integration/test_heartbeat.py and the SSE
suites cover them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable, Protocol

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# One writer per stream here (no pinger task to race with), so the library's per-response
# send lock serializes nothing: a shared no-op context instead of an anyio.Lock each.
_NO_LOCK = contextlib.nullcontext()

DISCONNECT, SHUTDOWN = "disconnect", "shutdown"


class Interrupted(Exception):
    """The stream must end now: the client left (``DISCONNECT``) or the server stops (``SHUTDOWN``)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Member(Protocol):
    _slot: int

    def ping(self) -> None: ...

    def send_timed_out(self) -> None: ...

    def interrupt(self, exc: BaseException) -> None: ...


class PingWheel:
    """Every open stream's keep-alive on one timer, and the shutdown signal on one task.

    The period is cut into ``SLOTS`` slots; a tick every period / SLOTS pings the streams of
    one slot. A stream joins the slot just visited, so its first ping comes between
    period - period / SLOTS and period after it opened, then one every period. The timer
    and the task exist only while the wheel has streams (the last one to leave stops them,
    so nothing outlives the streams, and a test's loop closes clean).
    """

    SLOTS = 16

    def __init__(self, period: float, registry: dict[Any, PingWheel], key: Any) -> None:
        self.period = period
        self._step = period / self.SLOTS
        self._slots: list[set[Member]] = [set() for _ in range(self.SLOTS)]
        self._cursor = 0  # the slot the next tick visits
        self._size = 0
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._exit: asyncio.Task[None] | None = None
        self._registry, self._key = registry, key
        # Members with a send under way -> (deadline): checked at every tick, so a send
        # that never returns ends its stream within one tick of its timeout.
        self.sending: dict[Member, float] = {}

    def join(self, member: Member) -> None:
        if self._size == 0:
            self._next = self._loop.time() + self._step
            self._timer = self._loop.call_at(self._next, self._tick)
            # sse-starlette's own shutdown detection (uvicorn's exit flag, its AppStatus),
            # awaited once here instead of once per stream.
            self._exit = self._loop.create_task(EventSourceResponse._listen_for_exit_signal(),
                                                name="sse-shutdown-listener")
            self._exit.add_done_callback(self._exiting)
        member._slot = (self._cursor - 1) % self.SLOTS
        self._slots[member._slot].add(member)
        self._size += 1

    def leave(self, member: Member) -> None:
        self.sending.pop(member, None)
        slot = self._slots[member._slot]
        if member not in slot:
            return
        slot.discard(member)
        self._size -= 1
        if self._size == 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._exit is not None:
                self._exit.cancel()
                self._exit = None
            if self._registry.get(self._key) is self:
                del self._registry[self._key]

    def _tick(self) -> None:
        # An absolute schedule: a late tick is not carried forward as drift (but a loop that
        # stalled for more than a period starts afresh, not with a burst of catch-up ticks).
        self._next += self._step
        if self._next < self._loop.time() - self.period:
            self._next = self._loop.time() + self._step
        self._timer = self._loop.call_at(self._next, self._tick)
        slot = self._slots[self._cursor]
        self._cursor = (self._cursor + 1) % self.SLOTS
        for member in slot:
            member.ping()  # sets a flag and wakes the body: never leaves the wheel from here
        if self.sending:
            now = self._loop.time()
            for member in [m for m, deadline in self.sending.items() if deadline <= now]:
                del self.sending[member]
                member.send_timed_out()

    def _exiting(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.warning("sse-starlette's shutdown listener failed: %r", task.exception())
            return
        for slot in self._slots:
            for member in list(slot):
                member.interrupt(Interrupted(SHUTDOWN))


_WHEELS: dict[tuple[asyncio.AbstractEventLoop, float], PingWheel] = {}


def wheel(period: float) -> PingWheel:
    """The running loop's wheel for ``period`` (made on first use, dropped when empty)."""
    key = (asyncio.get_running_loop(), period)
    found = _WHEELS.get(key)
    if found is None:
        found = _WHEELS[key] = PingWheel(period, _WHEELS, key)
    return found


class _DisconnectWatch:
    """Waits on ``receive`` until ``http.disconnect``, then calls ``on_gone``: one task at a
    time, ``receive()`` itself (no wrapper coroutine), re-armed after a request message."""

    __slots__ = ("_receive", "_on_gone", "_task")

    def __init__(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self._receive = receive
        self._on_gone = on_gone
        self._task: asyncio.Future[Message] | None = None
        self._arm()

    def _arm(self) -> None:
        self._task = asyncio.ensure_future(self._receive())
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Message]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None or task.result()["type"] == "http.disconnect":
            self._task = None
            self._on_gone()
        else:
            self._arm()  # the request's (empty) body: the next message is the disconnect

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class LeanEventSourceResponse(EventSourceResponse):
    """EventSourceResponse without its task group (see the module's docstring).

    ``ping_period``: seconds between keep-alives; at each, ``on_ping`` is called (it marks a
    ping due and wakes the body, which writes it). ``interrupt(exc)`` makes the body raise
    ``exc`` at its next step; the body lets ``Interrupted`` through.
    """

    def __init__(self, content: Any, *, ping_period: float, on_ping: Callable[[], None],
                 interrupt: Callable[[BaseException], None], **kwargs: Any) -> None:
        # ping=0: the library's pinger is never started (the wheel pings instead).
        super().__init__(content, ping=0, **kwargs)
        self._send_lock = _NO_LOCK  # type: ignore[assignment]
        self._ping_period = ping_period
        self._on_ping = on_ping
        self._interrupt = interrupt
        self._slot = 0
        self._wheel: PingWheel | None = None  # set while streaming
        self._task: asyncio.Task[Any] | None = None
        self._timed_out = False

    def ping(self) -> None:
        self._on_ping()

    def interrupt(self, exc: BaseException) -> None:
        self._interrupt(exc)

    def send_timed_out(self) -> None:
        """A send outlived ``send_timeout`` (the wheel's check): cancel the stream's task where
        it waits in that send; ``__call__`` turns it into the library's SendTimeoutError."""
        if self._task is not None and not self._timed_out:
            self._timed_out = True
            self._task.cancel()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # The library arms a timer per send (anyio.move_on_after, ~10 us: a quarter of what a
        # live event costs a stream at 10,000 watchers); here a send only records its
        # deadline and the wheel's tick enforces it (up to one tick late).
        pings = self._wheel
        if pings is None or self.send_timeout is None:  # HEAD, or no timeout asked
            await super()._send_with_timeout(send, message)
            return
        pings.sending[self] = pings._loop.time() + self.send_timeout
        try:
            await send(message)
        except BaseException:
            self._send_interrupted = True
            raise
        finally:
            pings.sending.pop(self, None)

    def _gone(self) -> None:
        self._interrupt(Interrupted(DISCONNECT))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() == "HEAD":
            # HEAD (headers, no stream) and the websocket denial: the library's own answers.
            await super().__call__(scope, receive, send)
            return
        pings = self._wheel = wheel(self._ping_period)
        self._task = asyncio.current_task()
        pings.join(self)
        watch = _DisconnectWatch(receive, self._gone)
        try:
            await self._stream_response(send)
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self._task.uncancel()  # our own cancel, not the server's: the library's error instead
            raise SendTimeoutError() from None
        except Interrupted as exc:
            if exc.why == SHUTDOWN and self._response_started and not self._send_interrupted:
                # As the library ends a stream cut by the exit signal: a clean end of the
                # chunked body, not a truncated one.
                try:
                    await self._send_with_timeout(send, {"type": "http.response.body", "body": b"",
                                                         "more_body": False})
                except OSError:
                    pass
        finally:
            watch.cancel()
            pings.leave(self)
            self._wheel = self._task = None
        if self.background is not None:
            await self.background()
