"""Socket.IO: a thin adapter over ``bus.subscribe``, one subscription per watched run per socket.

Protocol (DESIGN.md, "Socket.IO protocol"), default namespace, path ``/socket.io/``:

    client -> server   subscribe   {run_id, after?, batch?}
                                   ack {ok: true, run: snapshot, first_seq?} | {ok: false, error}
                       unsubscribe {run_id}              ack {ok: true, run_id, was_subscribed}
                       start_run   {agent, input, metadata?, idempotency_key?}
                                   ack {ok: true, run_id, status, agent, events_url, room, created}
                       cancel_run  {run_id}              ack {ok: true, run: record}
                       resume_run  {run_id, value}       ack {ok: true, run: record} (interrupted runs)
                       refresh     {token}               ack {ok: true, expires_at} (same tenant and sub)
    server -> client   event       one event, exactly the JSON of an SSE ``data:`` line
                       events      [event, ...]          instead of ``event`` when subscribed with
                                                         batch: true (up to 128 events, in order)
                       run_end     {run_id, status}      once, after the run's terminal event
                       reset       {run_id, reason, first_seq?, message?}   the log no longer holds
                                                         what this subscriber needs (contract item 6)
                       auth_expiring {expires_at, in_s}  the credential ends soon: send ``refresh``
                       auth_expired / auth_revoked {code, message}   then the server disconnects

Credentials come in the connect ``auth`` payload (``{token}`` or ``{api_key}``); a refused
connect is a ``connect_error`` whose data is ``{code, message}``.

Errors are ``{ok: false, error: {code, message, ...}}`` with the HTTP API's codes (one
mapping, ``common.api_error``). The ack of a request is sent before anything that request
causes; after an ``unsubscribe`` ack no event of that run arrives. ``batch`` exists because
over WebSocket every Socket.IO message is one frame and one write: per-event messages cost
about 3x SSE's CPU per delivered event, lists of events cost less than SSE
(`python -m bench fanout`, bench/README.md).

Each watched run of a socket reads through its own ``Subscription`` (``sio_watch.py``):
ordering, dedup, the history-to-live handoff and slow-subscriber resync are the bus's one
algorithm, exactly as for SSE. What all sockets of a run share is the encoding: each event
is encoded once and each batch's packets are built once (``PacketCache``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine

import socketio

from ..auth import EXPIRED, MEMBER, VIEWER, AuthError
from ..auth.caller import invalid_token, token_expired
from ..bus.subscription import subscribe
from ..config import Settings
from ..runs.service import NotFound
from .common import RequestError, SubmitRequest, api_error, check_idempotency_key, identity_of, validate
from .engine import EngineSockets, allow_packets_per_poll
from .sio_protocol import OriginPolicy, batch_of, cursor_of, error, ok, one_object, run_id_of
from .sio_watch import Client, Delivery, Watch

if TYPE_CHECKING:
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)

NAMESPACE = "/"
Handler = Callable[..., Coroutine[Any, Any, dict[str, Any]]]


class SocketIOTransport:
    """The Socket.IO server, its handlers, and the watches of its sockets.

    ``state`` is the Starlette ``app.state``; ``runs``, ``bus`` and ``identity`` are read
    from it lazily because the lifespan sets them after the app is built.
    """

    def __init__(self, settings: Settings, state: Any = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.state = state
        allow_packets_per_poll(2 * settings.socketio_max_runs_per_socket + 16)
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
        self.delivery = Delivery(settings, EngineSockets(self.sio.eio), lambda: self.bus, metrics)
        self._register()

    @property
    def runs(self) -> Any:
        return self.state.runs

    @property
    def bus(self) -> Any:
        return self.state.bus

    @property
    def stats(self) -> dict[str, int]:
        return self.delivery.stats

    async def aclose(self) -> None:
        """Stop every watch (called from the app's lifespan, before the backend closes)."""
        for client in list(self.clients.values()):
            self._forget(client)
        await self.delivery.aclose()
        try:
            await self.sio.shutdown()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.debug("socket.io shutdown", exc_info=True)

    # ----------------------------------------------------------------- plumbing

    def _register(self) -> None:
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        for name, handler in (("subscribe", self._subscribe), ("unsubscribe", self._unsubscribe),
                              ("start_run", self._start_run), ("cancel_run", self._cancel_run),
                              ("resume_run", self._resume_run), ("refresh", self._refresh),
                              ("subscribe_context", self._subscribe_context),
                              ("unsubscribe_context", self._unsubscribe_context)):
            self.sio.on(name, self._guarded(name, handler))
        self.sio.on("*", self._unknown_event)

    def _guarded(self, name: str, handler: Handler) -> Handler:
        """Whatever the payload, the client gets an ack and the connection survives."""

        async def run(sid: str, *args: Any) -> dict[str, Any]:
            try:
                return await handler(sid, *args)
            except Exception as exc:  # noqa: BLE001 - rendered by the one error builder
                err = api_error(exc)
                if err.status >= 500:
                    log.error("socket.io %s from %s failed", name, sid, exc_info=exc)
                return err.ack()

        return run

    # ----------------------------------------------------------------- connections

    def _spoofed(self, sid: str) -> bool:
        """A client can emit events named "connect"/"disconnect"; the real ones arrive
        while socket.io holds the sid as pending, so it does not count as connected."""
        return self.sio.manager.is_connected(sid, NAMESPACE)

    async def _on_connect(self, sid: str, environ: Any = None, auth: Any = None, *_: Any) -> Any:
        if self._spoofed(sid):
            return error("unknown_event", "connect is a reserved event")
        identity = identity_of(self.state)
        try:
            caller = await identity.of_socket(environ or {}, auth)
        except (AuthError, RequestError) as exc:  # a missing or bad credential: connect_error {code, message}
            body = api_error(exc).body()
            raise socketio.exceptions.ConnectionRefusedError(body["message"], body) from None
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        client = Client(sid, eio_sid, caller, environ=environ or {})
        client.session = identity.sessions.open(
            caller, lambda why: self._credential_ended(client, why),
            lambda exp: self.delivery.spawn(self._warn_expiring(client, exp), name="sio-auth-expiring"))
        self.clients[sid] = client
        return None

    def _credential_ended(self, client: Client, why: str) -> None:
        """At exp (no refresh came) or on revocation: nothing more of any run, say why, close."""
        if client.gone:
            return
        self._forget(client)
        body = ({"code": "token_expired", "message": "the credential expired; reconnect with a new one"}
                if why == EXPIRED else {"code": "revoked", "message": "the credential was revoked"})
        self.delivery.spawn(self._say_and_close(client.sid, why, body), name="sio-auth-end")

    async def _say_and_close(self, sid: str, event: str, body: dict[str, Any]) -> None:
        try:
            await self.sio.emit(event, body, to=sid)
            await self.sio.disconnect(sid)  # queued after the emit: the client reads why first
        except Exception:  # noqa: BLE001 - the socket may be gone already
            log.debug("closing socket %s after %s", sid, event, exc_info=True)

    async def _warn_expiring(self, client: Client, exp: float) -> None:
        if client.gone:
            return
        try:
            await self.sio.emit("auth_expiring", {"expires_at": exp, "in_s": round(max(0.0, exp - time.time()), 1)},
                                to=client.sid)
        except Exception:  # noqa: BLE001
            log.debug("auth_expiring to %s", client.sid, exc_info=True)

    async def _on_disconnect(self, sid: str, reason: Any = None, *_: Any) -> Any:
        if self._spoofed(sid):
            return error("unknown_event", "disconnect is a reserved event")
        client = self.clients.pop(sid, None)
        if client is not None:
            self._forget(client)
        return None

    def _forget(self, client: Client) -> None:
        client.gone = True
        if client.session is not None:
            client.session.close()
        for watch in list(client.watches.values()):
            self.delivery.drop(watch)

    async def _unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        shown = repr(event)[:60]
        return error("unknown_event", f"unknown event {shown}; events are subscribe, "
                                      "unsubscribe, start_run, cancel_run, resume_run and refresh")

    def _client(self, sid: str, role: str = VIEWER) -> Client:
        """The socket's client, if its credential is still good and its role allows ``role``."""
        client = self.clients.get(sid)
        if client is None:
            raise RequestError("not_connected", "this socket is not connected")
        if client.caller.expired():  # its timer is about to end the socket; refuse meanwhile
            raise token_expired()
        client.caller.require(role)
        return client

    # ----------------------------------------------------------------- handlers

    async def _subscribe(self, sid: str, *args: Any) -> dict[str, Any]:
        payload = one_object(args)
        run_id = run_id_of(payload)
        after = cursor_of(payload)
        batch = batch_of(payload)
        client = self._client(sid)
        async with client.lock:
            snapshot = await self.runs.snapshot(run_id, tenant=client.caller.scope)
            limit = self.settings.socketio_max_runs_per_socket
            if run_id not in client.watches and len(client.watches) >= limit:
                raise RequestError("too_many_subscriptions", f"a socket may watch at most {limit} "
                                   "runs; unsubscribe some first", status=429)
            sub = await subscribe(self.bus, run_id, after)  # cursor errors come from here
            if client.gone:
                await sub.aclose()
                raise RequestError("not_connected", "this socket disconnected")
            old = client.watches.get(run_id)
            if old is not None:
                self.delivery.drop(old)  # a resubscribe replaces the watch
            self.delivery.start(Watch(client, run_id, sub, batch, last=sub.last))
        body: dict[str, Any] = {"run": snapshot}
        if sub.trimmed_from is not None:
            body["first_seq"] = sub.trimmed_from
        return ok(**body)

    async def _context_log(self, client: Any, payload: dict[str, Any]) -> tuple[str, str, Any]:
        key = payload.get("key")
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise RequestError("invalid_request", "key must be a context key (1-200 characters)", status=422,
                               field="key")
        gate = self.state.backend.gate
        rec = await gate.contexts.get(client.caller.tenant, key)
        if rec is None:
            raise NotFound(f"unknown context {key!r}")
        return key, await gate.log_of(rec), rec

    async def _subscribe_context(self, sid: str, *args: Any) -> dict[str, Any]:
        """The context's INBOX (what finished while nobody watched), then its live events."""
        payload = one_object(args)
        client = self._client(sid)
        async with client.lock:
            key, log_id, rec = await self._context_log(client, payload)
            after = cursor_of(payload)
            if after is None:  # live from now, after the inbox
                bounds = await self.bus.bounds(log_id)
                after = bounds.last_seq if bounds is not None else 0
            sub = await subscribe(self.bus, log_id, after)  # watching it from here: not unwatched
            if client.gone:
                await sub.aclose()
                raise RequestError("not_connected", "this socket disconnected")
            old = client.watches.get(log_id)
            if old is not None:
                self.delivery.drop(old)
            rec = await self.state.backend.gate.contexts.get(client.caller.tenant, key) or rec
            inbox = {"ns": "INBOX", "key": key, "data": {"key": key, "entries": rec.inbox}}
            # After the ack (tasks run once the handler returned), before any live event.
            self.delivery.spawn(self.sio.emit("event", inbox, to=sid), name=f"sio-inbox-{key}")
            self.delivery.start(Watch(client, log_id, sub, batch_of(payload), last=sub.last))
        return ok(context=self.state.backend.gate.view(rec))

    async def _unsubscribe_context(self, sid: str, *args: Any) -> dict[str, Any]:
        client = self._client(sid)
        async with client.lock:
            key, log_id, _ = await self._context_log(client, one_object(args))
            watch = client.watches.get(log_id)
            if watch is not None:
                self.delivery.drop(watch)
        return ok(key=key, was_subscribed=watch is not None)

    async def _unsubscribe(self, sid: str, *args: Any) -> dict[str, Any]:
        run_id = run_id_of(one_object(args))
        client = self._client(sid)
        async with client.lock:
            watch = client.watches.get(run_id)
            if watch is not None:
                self.delivery.drop(watch)
        # Everything queued for this run is ahead of this ack: after it, nothing of the run arrives.
        return ok(run_id=run_id, was_subscribed=watch is not None)

    async def _start_run(self, sid: str, *args: Any) -> dict[str, Any]:
        payload = dict(one_object(args))
        client = self._client(sid, MEMBER)
        idem = check_idempotency_key(payload.pop("idempotency_key", None), "idempotency_key")
        req: SubmitRequest = validate(SubmitRequest, payload)
        rec, created = await self.runs.submit(req.agent, req.input, metadata=req.metadata,
                                              context=req.context.model_dump() if req.context else None,
                                              tenant=client.caller.tenant, sub=client.caller.sub,
                                              idempotency_key=idem)
        return ok(run_id=rec.run_id, status=rec.status, agent=rec.agent,
                  events_url=f"/runs/{rec.run_id}/events", room=f"run:{rec.run_id}", created=created)

    async def _cancel_run(self, sid: str, *args: Any) -> dict[str, Any]:
        run_id = run_id_of(one_object(args))
        client = self._client(sid, MEMBER)
        rec = await self.runs.cancel(run_id, tenant=client.caller.scope)
        return ok(run=rec.to_dict())

    async def _resume_run(self, sid: str, *args: Any) -> dict[str, Any]:
        """Answer an interrupted run: ``{run_id, value}``, as POST /runs/{id}/resume."""
        payload = one_object(args)
        run_id = run_id_of(payload)
        if "value" not in payload:
            raise RequestError("bad_request", 'resume_run needs a "value" (the answer)')
        client = self._client(sid, MEMBER)
        rec = await self.runs.answer(run_id, payload["value"], tenant=client.caller.scope)
        return ok(run=rec.to_dict())

    async def _refresh(self, sid: str, *args: Any) -> dict[str, Any]:
        """A new credential before the old one expires: ``{token}`` (or ``{api_key}``)."""
        payload = one_object(args)
        client = self.clients.get(sid)
        if client is None:
            raise RequestError("not_connected", "this socket is not connected")
        fresh = await identity_of(self.state).of_socket(client.environ, dict(payload))
        old = client.caller
        if (fresh.tenant, fresh.sub) != (old.tenant, old.sub):
            raise invalid_token("a refresh must be a credential of the same tenant and subject")
        client.caller = fresh
        if client.session is not None:
            client.session.renew(fresh)
        return ok(expires_at=fresh.exp)
