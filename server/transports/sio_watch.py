"""Socket.IO delivery: one task per (socket, run), reading that run's bus ``Subscription``.

The subscription is the one history-to-live algorithm (gapless handoff, dedup, hole fill,
resync after its Sink overflows); this module only turns its batches into packets and
paces them to the socket. It keeps no cursor logic of its own: ``last`` is remembered
only to reopen a subscription after a bus failure, and ``subscribe()`` judges it.

Flow control
------------
python-engineio queues outgoing packets per socket without bound. Before queueing, a
watch looks at its socket's queue depth; at ``socketio_queue_limit`` it stops iterating
its subscription (the socket is "cut from live") and waits for the queue to drain below
half the limit. Meanwhile the run and every other socket carry on: the stalled
subscription's Sink overflows and, once iterated again, it resyncs from the log by itself
(contract item 5). A socket that does not drain within ``socketio_send_timeout_s`` is
closed; its client reconnects and resubscribes with ``after``. A batch is queued in
slices that keep the queue within the limit, so a long catch-up cannot flood it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from ..backoff import Backoff
from ..bus.base import Bus, CursorAhead, CursorExpired, LogLost, UnknownLog
from ..bus.subscription import Subscription, subscribe
from ..config import Settings
from ..auth import Session
from .common import Caller
from .engine import EngineSockets, SocketGone
from .sio_protocol import PacketCache, reset_packet, run_end_packet, trimmed_packet

if TYPE_CHECKING:
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.02
# The log no longer holds what the socket needs (or no longer has the run): ``reset``.
LOG_GONE = (CursorExpired, UnknownLog, CursorAhead)


@dataclass(eq=False)
class Client:
    """One connected socket."""

    sid: str
    eio_sid: str
    caller: Caller
    environ: Any = None  # the connect request's, for a ``refresh`` to be judged like the connect
    session: Session | None = None  # ends the socket at its credential's exp or revocation
    watches: dict[str, Watch] = field(default_factory=dict)
    # socket.io runs each incoming event in its own task; this keeps one socket's
    # subscribe/unsubscribe taking effect in the order the client sent them.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gone: bool = False


@dataclass(eq=False)
class Watch:
    """One socket watching one run."""

    client: Client
    run_id: str
    sub: Subscription | None
    batch: bool  # ``events`` lists instead of one ``event`` per event
    last: int  # the last seq queued to the socket
    task: asyncio.Task[None] | None = None
    done: bool = False
    since: float = field(default_factory=time.time)  # events older than this are history to it


class Delivery:
    """Owns every watch task of one Socket.IO server."""

    def __init__(self, settings: Settings, engine: EngineSockets, bus: Callable[[], Bus],
                 metrics: Metrics | None = None) -> None:
        self.metrics = metrics.transport("socketio") if metrics is not None else None
        self.queue_limit = settings.socketio_queue_limit
        self.send_timeout_s = settings.socketio_send_timeout_s
        self.engine = engine
        self._bus = bus  # read lazily: the lifespan opens the bus after the app is built
        self.cache = PacketCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"cut_from_live": 0, "disconnected_slow": 0, "resets": 0}

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this Delivery owns (``aclose`` waits for it)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self, watch: Watch) -> None:
        """Begin delivering. Called from a request handler: the task first runs after the
        handler returns, and socket.io queues the ack before that, so the ack comes first."""
        watch.client.watches[watch.run_id] = watch
        if self.metrics is not None:
            self.metrics.subscribers.inc()
        watch.task = self.spawn(self._run(watch), name=f"sio-watch-{watch.run_id}")

    def drop(self, watch: Watch) -> None:
        """Stop delivering a run to a socket (unsubscribe, run end, reset, disconnect).

        Synchronous on purpose: once it returns nothing more of this watch is queued,
        which is what makes the unsubscribe ack a boundary.
        """
        if watch.done:
            return
        watch.done = True
        if self.metrics is not None and watch.task is not None:  # start()ed, so counted
            self.metrics.subscribers.dec()
        client = watch.client
        if client.watches.get(watch.run_id) is watch:
            del client.watches[watch.run_id]
        task = watch.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        # A task cancelled before it ever ran has no ``finally``: detach here, always.
        self.spawn(self._release(watch, task), name=f"sio-release-{watch.run_id}")

    async def _release(self, watch: Watch, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        sub, watch.sub = watch.sub, None
        if sub is not None:
            await _quietly(sub.aclose())

    async def aclose(self) -> None:
        """Stop every watch and detach its subscription (before the bus closes)."""
        for task in list(self._tasks):
            if task.get_name().startswith("sio-watch-"):
                task.cancel()
        # Cancelled watches spawn their releases as they stop: wait for those too.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=deadline - loop.time())
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ----------------------------------------------------------------- one watch

    async def _run(self, watch: Watch) -> None:
        run_id = watch.run_id
        backoff = Backoff(first=0.2, cap=5.0)
        ended = False
        try:
            if watch.sub is not None and watch.sub.trimmed_from is not None:
                await self._send(watch, [trimmed_packet(run_id, watch.sub.trimmed_from)])
            while True:
                try:
                    if watch.sub is None:
                        watch.sub = await subscribe(self._bus(), run_id, watch.last)
                    async for batch in watch.sub:
                        await self._send(watch, self.cache.packets(batch, watch.batch))
                        if self.metrics is not None:
                            self.metrics.batch(batch, len(batch), watch.since)
                        watch.last = batch[-1].seq
                        ended = batch[-1].is_terminal  # its packets carry ``run_end``
                        backoff.reset()
                    break
                except LOG_GONE as exc:
                    self.stats["resets"] += 1
                    log.info("socket %s reset on run %s after seq %d: %s",
                             watch.client.sid, run_id, watch.last, exc)
                    await self._send(watch, [reset_packet(run_id, exc)])
                    if isinstance(exc, LogLost):  # the run is over for good: its end, as for any run
                        await self._send(watch, [run_end_packet(run_id, None)])
                    return
                except SocketGone:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bus hiccup: reopen at ``last``
                    delay = backoff.step()
                    log.warning("socket.io delivery of run %s to %s: %s: %s; retrying in %.1f s",
                                run_id, watch.client.sid, type(exc).__name__, exc, delay)
                    sub, watch.sub = watch.sub, None
                    if sub is not None:
                        await _quietly(sub.aclose())
                    await asyncio.sleep(delay)
            if not ended:  # the socket's cursor already covered the terminal event
                status = await self._end_status(run_id, watch.last)
                await self._send(watch, [run_end_packet(run_id, status)])
        except SocketGone:
            pass
        finally:
            self.drop(watch)

    async def _end_status(self, run_id: str, last: int) -> str | None:
        """The terminal state, from the terminal event itself (the last one in the log)."""
        try:
            events = await self._bus().read(run_id, last - 1, 1)
        except Exception:  # noqa: BLE001 - the end is certain; only its label is unknown
            return None
        return events[-1].data.get("state") if events and events[-1].is_terminal else None

    async def _send(self, watch: Watch, packets: list[Any]) -> None:
        """Queue packets without letting the socket's queue grow past the limit."""
        eio_sid = watch.client.eio_sid
        limit = self.queue_limit
        i, n = 0, len(packets)
        while i < n:
            depth = self.engine.depth(eio_sid)
            if depth >= limit:
                await self._stall(watch, depth)
                continue
            j = min(n, i + limit - depth)
            try:
                await self.engine.send(eio_sid, packets if i == 0 and j == n else packets[i:j])
            except SocketGone:
                raise
            except Exception:
                # What the socket got of these is unknown, so no resend can be exact: close
                # it, and its client resubscribes from the last seq it holds.
                log.exception("socket.io send to %s failed", watch.client.sid)
                await _quietly(self.engine.kick(eio_sid))
                raise SocketGone from None
            i = j

    async def _stall(self, watch: Watch, depth: int) -> None:
        """Stop feeding this socket until its queue is below half the limit; kick it if
        that takes longer than the send timeout."""
        client = watch.client
        low = self.queue_limit // 2
        self.stats["cut_from_live"] += 1
        if self.metrics is not None:
            self.metrics.drops.inc()
        log.info("socket %s cut from live run %s at seq %d (%d packets queued); it resyncs "
                 "from the log once below %d", client.sid, watch.run_id, watch.last, depth, low)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_timeout_s
        while self.engine.depth(client.eio_sid) > low:
            if client.gone or watch.done:
                raise SocketGone
            if loop.time() >= deadline:
                self.stats["disconnected_slow"] += 1
                if self.metrics is not None:
                    self.metrics.drops.inc()
                log.warning("socket %s disconnected: its queue stayed above %d packets for %g s",
                            client.sid, low, self.send_timeout_s)
                await self.engine.kick(client.eio_sid)
                raise SocketGone
            await asyncio.sleep(DRAIN_POLL_S)


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - best effort (closing, or a backend already gone)
        log.debug("ignored", exc_info=True)
