"""Socket.IO: rooms per run, fed from the bus once per process, with gapless resync.

Protocol (DESIGN.md, "Socket.IO protocol"), default namespace, path ``/socket.io/``:

    client -> server   subscribe   {run_id, after?, batch?}
                                   ack {ok: true, run: snapshot, first_seq?} | {ok: false, error}
                       unsubscribe {run_id}              ack {ok: true, run_id, was_subscribed}
                       start_run   {agent, input, metadata?, idempotency_key?}
                                   ack {ok: true, run_id, status, agent, events_url, room, created}
                       cancel_run  {run_id}              ack {ok: true, run: record}
                       resume_run  {run_id, value}       ack {ok: true, run: record} (interrupted runs)
    server -> client   event       one event, exactly the JSON of an SSE ``data:`` line
                       events      [event, ...]          instead of ``event`` when subscribed with
                                                         batch: true (up to 128 events, in order)
                       run_end     {run_id, status}      once, after the run's terminal event
                       reset       {run_id, reason, first_seq?, message?}   the log no longer holds
                                                         what this subscriber needs (contract item 6)

Errors are ``{ok: false, error: {code, message, ...}}`` with the HTTP API's codes. The ack
of a request is sent before anything that request causes; after an ``unsubscribe`` ack no
event of that run arrives. ``batch`` exists because over WebSocket every Socket.IO
message is one frame and one write: per-event messages cost about 3x SSE's CPU per
delivered event, lists of events cost less than SSE (bench/README_socketio.md).

How a socket gets every event once, in order (the room handoff)
---------------------------------------------------------------
Each run watched by at least one socket of this process has one ``Feed``: one bus
``Subscription`` (the shared gapless algorithm) read by one task that sends each batch to
the sockets in the room ``run:<id>``. ``feed.last`` is the last seq handed to the room.
A subscribing socket first catches up on its own from the log: it reads and sends
``(after, feed.last]``, re-reads ``feed.last`` after every await, and joins the room in
the same synchronous step in which it finds its cursor equal to ``feed.last``. The feed
task, in one synchronous step, advances ``feed.last`` and takes the room's member list
for a batch. So every batch goes either to a member (which joined before that step) or
into a joiner's history read (which saw the advanced ``feed.last``) — never both, never
neither. The event loop is the lock; no await sits between a check and its action.

Slow sockets
------------
python-engineio queues outgoing packets per socket without bound. Before handing a batch
to a member the feed checks that socket's queue depth; at ``socketio_queue_limit`` the
member is cut from the room (the run and the other members carry on) and goes back to
catching up from the log at its last seq, sending a page at a time and waiting for its
queue to drain below half the limit before the next. A socket that does not drain
within ``socketio_send_timeout_s`` is closed; its client reconnects and resubscribes
with ``after``. Memory per socket stays bounded by the limit (plus one page).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

import socketio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from pydantic import ValidationError

from ..bus.base import READ_PAGE, BusError, CursorExpired, UnknownLog, subscribe
from ..config import Settings
from ..events import Event, dumps
from ..runs.service import ServiceError
from ..runs.store import DEFAULT_TENANT
from .http import SubmitRequest, field_of
from .sio_protocol import (
    OriginPolicy,
    ProtocolError,
    batch_of,
    cursor_of,
    error,
    event_packet,
    event_packets,
    ok,
    one_object,
    reset_packet,
    run_end_packet,
    run_id_of,
)

log = logging.getLogger(__name__)

NAMESPACE = "/"
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
DRAIN_POLL_S = 0.02


# --------------------------------------------------------------------------- state


class Feed:
    """This process's one bus subscription to a run, and the boundary of its room."""

    def __init__(self, run_id: str, last: int, ended: bool) -> None:
        self.run_id = run_id
        self.room = f"run:{run_id}"
        self.last = last  # the last seq handed to the room (or the end of an ended log)
        self.ended = ended
        self.status: str | None = None  # terminal state, once ended
        self.failure: BusError | None = None  # the log lost what the feed needed
        self.refs = 0  # watches (live or catching up) that use this feed
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._moved = asyncio.Event()

    def moved(self) -> None:
        """Wake catch-ups waiting for ``last`` to reach their cursor."""
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait_moved(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._moved.wait(), timeout)
        except TimeoutError:
            pass


@dataclass(eq=False)
class Watch:
    """One socket watching one run."""

    sid: str
    run_id: str
    feed: Feed
    cursor: int  # the last seq handed to this socket while not live
    batch: bool = False  # ``events`` messages (lists) instead of one ``event`` per event
    live: bool = False  # a member of the room
    done: bool = False
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class Client:
    sid: str
    eio_sid: str
    tenant: str
    watches: dict[str, Watch] = field(default_factory=dict)
    # socket.io runs each incoming event in its own task; this keeps one socket's
    # subscribe/unsubscribe taking effect in the order the client sent them.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SocketGone(Exception):
    pass


# --------------------------------------------------------------------------- transport


class SocketIOTransport:
    """The Socket.IO server, its handlers, and this process's feeds.

    ``state`` is the Starlette ``app.state``; ``runs`` and ``bus`` are read from it lazily
    because the lifespan sets them after the app is built.
    """

    def __init__(self, settings: Settings, state: Any = None) -> None:
        self.settings = settings
        self.state = state
        self.queue_limit = settings.socketio_queue_limit
        self.page = max(1, min(READ_PAGE, self.queue_limit // 2))
        # engine.io refuses a long-polling POST of more than 16 packets (a guard of the
        # Python implementation, not of the protocol): a browser that resubscribes to many
        # runs at once over polling sends more. The body stays bounded by
        # max_http_buffer_size. This is process-wide, as python-engineio's docs suggest.
        eio_payload.Payload.max_decode_packets = max(eio_payload.Payload.max_decode_packets,
                                                     2 * settings.socketio_max_runs_per_socket + 16)
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            cors_allowed_origins=OriginPolicy(settings.allowed_origins),
            transports=["polling", "websocket"] if settings.socketio_polling else ["websocket"],
            ping_interval=settings.socketio_ping_interval_s,
            ping_timeout=settings.socketio_ping_timeout_s,
            max_http_buffer_size=settings.max_body_bytes + 1024,
            logger=False,
            engineio_logger=False,
        )
        # socketio_path=None: every request reaching this app is Socket.IO's; the
        # Starlette Mount at /socket.io does the routing (see app.py).
        self.asgi = socketio.ASGIApp(self.sio, socketio_path=None)
        self.clients: dict[str, Client] = {}
        self.feeds: dict[str, Feed] = {}
        self._opening: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"cut_from_live": 0, "disconnected_slow": 0, "resets": 0}
        self._register()

    @property
    def runs(self) -> Any:
        return self.state.runs

    @property
    def bus(self) -> Any:
        return self.state.bus

    # ----------------------------------------------------------------- plumbing

    def _register(self) -> None:
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        for name, handler in (("subscribe", self._subscribe), ("unsubscribe", self._unsubscribe),
                              ("start_run", self._start_run), ("cancel_run", self._cancel_run),
                              ("resume_run", self._resume_run)):
            self.sio.on(name, self._guarded(name, handler))
        self.sio.on("*", self._unknown_event)

    def _guarded(self, name: str, handler: Callable[..., Coroutine[Any, Any, dict[str, Any]]]
                 ) -> Callable[..., Coroutine[Any, Any, dict[str, Any]]]:
        """Whatever the payload, the client gets an ack and the connection survives."""

        async def run(sid: str, *args: Any) -> dict[str, Any]:
            try:
                return await handler(sid, *args)
            except ProtocolError as exc:
                return error(exc.code, exc.message, **exc.detail)
            except ServiceError as exc:
                detail = dict(exc.detail)
                if exc.headers.get("Retry-After"):
                    detail["retry_after_s"] = float(exc.headers["Retry-After"])
                return error(exc.code, exc.message, **detail)
            except BusError as exc:
                return error(exc.code, str(exc))
            except Exception:
                log.exception("socket.io %s from %s failed", name, sid)
                return error("internal", f"{name} failed on the server; see its log")

        return run

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Stop every feed and catch-up (called from the app's lifespan, before the backend closes)."""
        for client in list(self.clients.values()):
            for watch in list(client.watches.values()):
                self._drop_watch(watch)
        for feed in list(self.feeds.values()):
            self._close_feed(feed)
        # Catch-ups and feeds are cancelled by now; let the _finish_feed tasks detach the
        # subscriptions from the bus, then cancel whatever is left.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.sio.shutdown()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.debug("socket.io shutdown", exc_info=True)

    # engine.io internals (python-engineio 4.x): the per-socket outgoing queue is the
    # only place a socket's backlog is visible; both helpers degrade to "not slow".

    def _eio_socket(self, eio_sid: str) -> Any:
        return getattr(self.sio.eio, "sockets", {}).get(eio_sid)

    def _depth(self, eio_sid: str) -> int:
        sock = self._eio_socket(eio_sid)
        queue = getattr(sock, "queue", None)
        return queue.qsize() if queue is not None else 0

    async def _kick(self, client: Client, why: str) -> None:
        """Close a socket's engine.io connection without waiting for its backlog to flush.

        The client sees a transport close (not a server disconnect), so socket.io
        clients reconnect by themselves and resubscribe with their last seq.
        """
        sock = self._eio_socket(client.eio_sid)
        log.warning("socket %s disconnected: %s", client.sid, why)
        if sock is None:
            return
        try:
            await sock.close(wait=False, abort=True)
        finally:
            # Let the writer send what is queued, then close the WebSocket.
            queue = getattr(sock, "queue", None)
            if queue is not None:
                queue.put_nowait(None)

    async def _send(self, client: Client, packets: list[eio_packet.Packet]) -> None:
        send = self.sio.eio.send_packet
        try:
            for pkt in packets:
                await send(client.eio_sid, pkt)
        except eio_exceptions.SocketIsClosedError:
            raise SocketGone from None

    async def _drain(self, client: Client) -> None:
        """Wait until the socket's queue is below half the limit; kick it if that takes too long."""
        low = self.queue_limit // 2
        if self._depth(client.eio_sid) <= low:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.socketio_send_timeout_s
        while self._depth(client.eio_sid) > low:
            if self.clients.get(client.sid) is not client:
                raise SocketGone
            if loop.time() >= deadline:
                self.stats["disconnected_slow"] += 1
                await self._kick(client, f"its queue stayed above {low} packets for "
                                         f"{self.settings.socketio_send_timeout_s:g} s")
                raise SocketGone
            await asyncio.sleep(DRAIN_POLL_S)

    # ----------------------------------------------------------------- connections

    def _spoofed(self, sid: str) -> bool:
        """A client can emit events named "connect"/"disconnect"; the real ones arrive
        while socket.io holds the sid as pending, so it does not count as connected."""
        return self.sio.manager.is_connected(sid, NAMESPACE)

    async def _on_connect(self, sid: str, environ: Any = None, auth: Any = None, *_: Any) -> Any:
        if self._spoofed(sid):
            return error("unknown_event", "connect is a reserved event")
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        # One tenant until authentication lands; tokens will come in ``auth``.
        self.clients[sid] = Client(sid, eio_sid, DEFAULT_TENANT)
        return None

    async def _on_disconnect(self, sid: str, reason: Any = None, *_: Any) -> Any:
        if self._spoofed(sid):
            return error("unknown_event", "disconnect is a reserved event")
        client = self.clients.pop(sid, None)
        if client is not None:
            for watch in list(client.watches.values()):
                self._drop_watch(watch)
        return None

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        shown = repr(event)[:60]
        return error("unknown_event", f"unknown event {shown}; events are subscribe, "
                                      "unsubscribe, start_run and cancel_run")

    # ----------------------------------------------------------------- handlers

    def _client(self, sid: str) -> Client:
        client = self.clients.get(sid)
        if client is None:
            raise ProtocolError("not_connected", "this socket is not connected")
        return client

    async def _subscribe(self, sid: str, *args: Any) -> dict[str, Any]:
        payload = one_object(args)
        run_id = run_id_of(payload)
        after = cursor_of(payload)
        batch = batch_of(payload)
        client = self._client(sid)
        async with client.lock:
            return await self._subscribe_locked(client, run_id, after, batch)

    async def _subscribe_locked(self, client: Client, run_id: str, after: int | None,
                                batch: bool) -> dict[str, Any]:
        sid = client.sid
        snapshot = await self.runs.snapshot(run_id, tenant=client.tenant)
        bounds = await self.bus.bounds(run_id)
        if bounds is None:
            raise ProtocolError("log_expired", f"run {run_id!r} has no event log any more (it expired)")
        trimmed: int | None = None
        if after is None:
            after = bounds.first_seq - 1
            if bounds.first_seq > 1:
                trimmed = bounds.first_seq  # no cursor, but the start is gone: say so
        elif after > bounds.last_seq:
            raise ProtocolError("cursor_ahead", f"after {after} is past the end of run {run_id!r}'s "
                                                f"log (last seq {bounds.last_seq})", last_seq=bounds.last_seq)
        elif after < bounds.first_seq - 1:
            raise ProtocolError("cursor_expired",
                                f"after {after} is older than the retained log of run {run_id!r}, which "
                                f"starts at seq {bounds.first_seq}; subscribe without after to read what is kept",
                                first_seq=bounds.first_seq)
        if run_id not in client.watches and len(client.watches) >= self.settings.socketio_max_runs_per_socket:
            raise ProtocolError("too_many_subscriptions", f"a socket may watch at most "
                                f"{self.settings.socketio_max_runs_per_socket} runs; unsubscribe some first")
        feed = await self._acquire_feed(run_id)
        if self.clients.get(sid) is not client:  # disconnected meanwhile
            self._release_feed(feed)
            raise ProtocolError("not_connected", "this socket disconnected")
        old = client.watches.get(run_id)
        if old is not None:
            self._drop_watch(old)  # a resubscribe replaces the watch (the feed keeps its ref)
        watch = Watch(sid, run_id, feed, cursor=after, batch=batch)
        client.watches[run_id] = watch
        # The task starts after this handler returns, and socket.io queues the ack before
        # this task can run: the client gets the ack, then the events.
        watch.task = self._spawn(self._catch_up(client, watch, trimmed=trimmed),
                                 name=f"sio-catch-up-{run_id}")
        body: dict[str, Any] = {"run": snapshot}
        if trimmed is not None:
            body["first_seq"] = trimmed
        return ok(**body)

    async def _unsubscribe(self, sid: str, *args: Any) -> dict[str, Any]:
        run_id = run_id_of(one_object(args))
        client = self._client(sid)
        async with client.lock:
            watch = client.watches.get(run_id)
            if watch is not None:
                self._drop_watch(watch)
        # Everything queued for this run is ahead of this ack: after it, nothing of the run arrives.
        return ok(run_id=run_id, was_subscribed=watch is not None)

    async def _start_run(self, sid: str, *args: Any) -> dict[str, Any]:
        payload = dict(one_object(args))
        client = self._client(sid)
        idem = payload.pop("idempotency_key", None)
        if idem is not None and not (isinstance(idem, str) and 0 < len(idem) <= 255):
            raise ProtocolError("bad_idempotency_key", "idempotency_key must be a string of 1-255 characters")
        try:
            req = SubmitRequest.model_validate(payload)
        except ValidationError as exc:
            fld = field_of(exc)
            raise ProtocolError("invalid_request", f"{fld}: {exc.errors()[0]['msg']}", field=fld) from None
        rec, created = await self.runs.submit(req.agent, req.input, metadata=req.metadata,
                                              tenant=client.tenant, idempotency_key=idem)
        return ok(run_id=rec.run_id, status=rec.status, agent=rec.agent,
                  events_url=f"/runs/{rec.run_id}/events", room=f"run:{rec.run_id}", created=created)

    async def _cancel_run(self, sid: str, *args: Any) -> dict[str, Any]:
        run_id = run_id_of(one_object(args))
        client = self._client(sid)
        rec = await self.runs.cancel(run_id, tenant=client.tenant)
        return ok(run=rec.to_dict())

    async def _resume_run(self, sid: str, *args: Any) -> dict[str, Any]:
        """Answer an interrupted run: ``{run_id, value}``, as POST /runs/{id}/resume."""
        payload = one_object(args)
        run_id = run_id_of(payload)
        if "value" not in payload:
            raise ProtocolError("bad_request", 'resume_run needs a "value" (the answer)')
        rec = await self.runs.answer(run_id, payload["value"], tenant=self._client(sid).tenant)
        return ok(run=rec.to_dict())

    # ----------------------------------------------------------------- feeds

    async def _acquire_feed(self, run_id: str) -> Feed:
        """This process's feed of the run (opened on first use), with one more ref."""
        while True:
            feed = self.feeds.get(run_id)
            if feed is not None:
                feed.refs += 1
                return feed
            opening = self._opening.get(run_id)
            if opening is None:
                break
            await asyncio.wait({opening})
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[run_id] = done
        try:
            feed = await self._open_feed(run_id)
            feed.refs += 1
            self.feeds[run_id] = feed
            return feed
        finally:
            del self._opening[run_id]
            done.set_result(None)

    async def _open_feed(self, run_id: str) -> Feed:
        bounds = await self.bus.bounds(run_id)
        if bounds is None:
            raise UnknownLog(run_id)
        feed = Feed(run_id, bounds.last_seq, bounds.ended)
        if bounds.ended:
            last = await self.bus.read(run_id, bounds.last_seq - 1, 1) if bounds.last_seq else []
            feed.status = last[-1].data.get("state") if last else None
        else:
            feed.sub = await subscribe(self.bus, run_id, feed.last)
            feed.task = self._spawn(self._feed_loop(feed), name=f"sio-feed-{run_id}")
        return feed

    def _release_feed(self, feed: Feed) -> None:
        feed.refs -= 1
        if feed.refs <= 0:
            self._close_feed(feed)

    def _close_feed(self, feed: Feed) -> None:
        if feed.closed:
            return
        feed.closed = True
        feed.moved()
        if self.feeds.get(feed.run_id) is feed:
            del self.feeds[feed.run_id]
        task = feed.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        self._spawn(self._finish_feed(feed, task))

    async def _finish_feed(self, feed: Feed, task: asyncio.Task[None] | None) -> None:
        """Wait for the feed task to stop, then make sure its subscription is detached
        (a task cancelled before it ever ran has no ``finally`` to do it)."""
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        sub, feed.sub = feed.sub, None
        if sub is not None:
            await _quietly(sub.aclose())

    async def _feed_loop(self, feed: Feed) -> None:
        """Read the run's one subscription and hand each batch to the room; heal bus errors."""
        delay = RETRY_MIN_S
        try:
            while not feed.ended and not feed.closed:
                try:
                    if feed.sub is None:
                        feed.sub = await subscribe(self.bus, feed.run_id, feed.last)
                    async for batch in feed.sub:
                        await self._fan_out(feed, batch)
                        delay = RETRY_MIN_S
                        if feed.closed:
                            return
                    if not feed.ended:  # the log says it ended and we hold its last event
                        feed.ended = True
                        feed.moved()
                except (CursorExpired, UnknownLog) as exc:
                    self._fail_feed(feed, exc)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a bus hiccup: reopen at feed.last
                    log.warning("socket.io feed of run %s: %s; retrying in %.1f s", feed.run_id, exc, delay)
                    sub, feed.sub = feed.sub, None
                    if sub is not None:
                        await _quietly(sub.aclose())
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        finally:
            sub, feed.sub = feed.sub, None
            if sub is not None:
                await _quietly(sub.aclose())

    async def _fan_out(self, feed: Feed, batch: list[Event]) -> None:
        # One synchronous step: advance the boundary and take the members (see module doc).
        feed.last = batch[-1].seq
        terminal = batch[-1].is_terminal
        if terminal:
            feed.ended = True
            feed.status = batch[-1].data.get("state")
        manager = self.sio.manager
        members = list(manager.get_participants(NAMESPACE, feed.room))
        feed.moved()
        if not members:
            return
        encoded = [e.encode() for e in batch]  # once, whoever receives it
        by_mode: dict[bool, list[eio_packet.Packet]] = {}
        send = self.sio.eio.send_packet
        for sid, eio_sid in members:
            client = self.clients.get(sid)
            watch = client.watches.get(feed.run_id) if client is not None else None
            if watch is None or watch.feed is not feed or not watch.live or watch.done:
                manager.basic_leave_room(sid, NAMESPACE, feed.room)  # stale membership
                continue
            if not terminal and self._depth(eio_sid) >= self.queue_limit:
                # Too slow for live: cut it from the room; it resyncs from the log as it drains.
                manager.basic_leave_room(sid, NAMESPACE, feed.room)
                watch.live = False
                watch.cursor = batch[0].seq - 1
                self.stats["cut_from_live"] += 1
                log.info("socket %s cut from live run %s at seq %d (queue full); resyncing from the log",
                         sid, feed.run_id, watch.cursor)
                watch.task = self._spawn(self._catch_up(client, watch, drain_first=True),
                                         name=f"sio-catch-up-{feed.run_id}")
                continue
            packets = by_mode.get(watch.batch)
            if packets is None:
                packets = by_mode[watch.batch] = event_packets(encoded, watch.batch)
                if terminal:
                    packets.append(run_end_packet(feed.run_id, feed.status))
            try:
                for pkt in packets:
                    await send(eio_sid, pkt)
            except eio_exceptions.SocketIsClosedError:
                continue
            except Exception:  # noqa: BLE001 - never let one socket break the room
                # What this socket got of the batch is unknown: drop it; its client resyncs.
                log.exception("socket.io send to %s failed", sid)
                self._drop_watch(watch)
                self._spawn(_quietly(self._kick(client, "a send to it failed")))
                continue
            if terminal:
                self._drop_watch(watch)

    def _fail_feed(self, feed: Feed, exc: BusError) -> None:
        """The log lost events the room still needed: every watcher gets ``reset``."""
        log.warning("socket.io feed of run %s lost the log: %s", feed.run_id, exc)
        feed.failure = exc
        feed.moved()
        if self.feeds.get(feed.run_id) is feed:
            del self.feeds[feed.run_id]  # the next subscribe opens a fresh feed
        pkt = reset_packet(feed.run_id, exc)
        for sid, eio_sid in list(self.sio.manager.get_participants(NAMESPACE, feed.room)):
            client = self.clients.get(sid)
            watch = client.watches.get(feed.run_id) if client is not None else None
            self.sio.manager.basic_leave_room(sid, NAMESPACE, feed.room)
            if watch is not None and watch.feed is feed:
                self.stats["resets"] += 1
                self._spawn(_quietly(self.sio.eio.send_packet(eio_sid, pkt)))
                self._drop_watch(watch)

    # ----------------------------------------------------------------- watches

    def _drop_watch(self, watch: Watch) -> None:
        """Stop delivering a run to a socket (unsubscribe, run end, reset, disconnect)."""
        if watch.done:
            return
        watch.done = True
        client = self.clients.get(watch.sid)
        if client is not None and client.watches.get(watch.run_id) is watch:
            del client.watches[watch.run_id]
        if watch.live:
            watch.live = False
            self.sio.manager.basic_leave_room(watch.sid, NAMESPACE, watch.feed.room)
        task = watch.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
        self._release_feed(watch.feed)

    async def _catch_up(self, client: Client, watch: Watch, *, trimmed: int | None = None,
                        drain_first: bool = False) -> None:
        """Send the socket ``(cursor, feed.last]`` from the log, then join the room."""
        feed = watch.feed
        run_id = watch.run_id
        delay = RETRY_MIN_S
        try:
            if trimmed is not None:
                await self._send(client, [event_packet("reset", dumps(
                    {"run_id": run_id, "reason": "log_trimmed", "first_seq": trimmed}))])
            if drain_first:
                await self._drain(client)
            while not watch.done:
                if feed.failure is not None:
                    raise feed.failure
                target = feed.last
                if watch.cursor == target:
                    if feed.ended:
                        await self._send(client, [run_end_packet(run_id, feed.status)])
                        self._drop_watch(watch)
                        return
                    # The handoff: nothing awaited since feed.last was read.
                    self.sio.manager.basic_enter_room(watch.sid, NAMESPACE, feed.room,
                                                      eio_sid=client.eio_sid)
                    watch.live = True
                    return
                if watch.cursor > target:  # this process's feed is behind the client's cursor
                    await feed.wait_moved(1.0)
                    continue
                try:
                    page = await self.bus.read(run_id, watch.cursor, self.page)
                except (CursorExpired, UnknownLog):
                    raise
                except Exception as exc:  # noqa: BLE001 - a bus hiccup: the cursor is still good
                    log.warning("socket.io catch-up of run %s: %s; retrying in %.1f s", run_id, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_MIN_S
                page = [e for e in page if e.seq <= target]
                if not page or page[0].seq != watch.cursor + 1:
                    bounds = await self.bus.bounds(run_id)
                    raise CursorExpired(run_id, watch.cursor, bounds.first_seq if bounds else target + 1)
                if watch.done:
                    return
                packets = event_packets([e.encode() for e in page], watch.batch)
                terminal = page[-1].is_terminal
                if terminal:
                    packets.append(run_end_packet(run_id, page[-1].data.get("state")))
                await self._send(client, packets)
                watch.cursor = page[-1].seq
                if terminal:
                    self._drop_watch(watch)
                    return
                await self._drain(client)
        except (CursorExpired, UnknownLog) as exc:
            if not watch.done:
                self.stats["resets"] += 1
                await _quietly(self._send(client, [reset_packet(run_id, exc)]))
                self._drop_watch(watch)
        except SocketGone:
            self._drop_watch(watch)


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - best effort (closing, or a socket already gone)
        log.debug("ignored", exc_info=True)
