"""The Redis bus: each run's log is a Stream; pub/sub rings the doorbell.

Appending is one round trip (EVALSHA): the script assigns the seq, XADDs the event,
PUBLISHes it to the run's channel and refreshes the expiry. Each process holds one
pub/sub connection, subscribed to a run's channel only while local subscribers
watch it, and dispatches to them in-process. When that connection drops, it
reconnects with capped backoff and every local subscriber resyncs from the Stream.

The bus opens no connection of its own: the backend opener hands it a ``RedisOps``
(the pooled client, the pub/sub client, the one retry policy) that the run store and
the queue share.

An append never re-creates a log that vanished (Redis came back empty): behind a run
store, a log's meta hash is written with the run's record (``RedisRunStore.create``), and
the script refuses a run with no meta (``LogLost``). Re-creating it would start again at
seq 1, and the same seqs would name other events for anyone holding a cursor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import orjson
from redis.exceptions import ResponseError

from ..backoff import Backoff
from ..events import Event, dumps
from ..redis_ops import TRANSIENT, RedisOps
from .base import CursorExpired, LogBounds, LogLost, Sink

log = logging.getLogger(__name__)

# KEYS: log stream, meta hash. ARGV: event JSON without its seq (ends in '"seq":'),
# channel, maxlen, ttl ms after the end, terminal flag, append token (makes a retried
# append idempotent), ttl ms while live (refreshed by every append), '1' if an append
# may start a log that has no meta yet ('0' behind a run store, which starts them).
APPEND = """
local meta = KEYS[2]
if redis.call('HGET', meta, 'tok') == ARGV[6] then
  return tonumber(redis.call('HGET', meta, 'seq'))
end
if ARGV[8] ~= '1' and redis.call('EXISTS', meta) == 0 then
  return redis.error_reply('LOGLOST')
end
if redis.call('HGET', meta, 'ended') == '1' then
  return redis.error_reply('LOGCLOSED')
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local payload = ARGV[1] .. seq .. '}'
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', payload)
redis.call('HSET', meta, 'tok', ARGV[6])
if ARGV[5] == '1' then redis.call('HSET', meta, 'ended', '1') end
local ttl = ARGV[7]
if ARGV[5] == '1' then ttl = ARGV[4] end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', meta, ttl)
redis.call('PUBLISH', ARGV[2], payload)
return seq
"""


def log_meta_key(prefix: str, run_id: str) -> str:
    """The hash holding a log's next seq and state; its existence is the log's existence."""
    return f"{prefix}:run:{run_id}:meta"


class RedisBus:
    """Logs in Redis Streams under ``{prefix}:run:{id}:log``; fan-out over pub/sub.

    ``open_logs``: an append to a run with no log starts one (a bus used alone). Behind a
    run store it is False: the store starts each log with its record, so a log missing
    later was lost, and appending to it is ``LogLost``.
    """

    def __init__(self, ops: RedisOps, *, prefix: str, max_events: int, ttl_s: float,
                 subscriber_buffer: int, live_ttl_s: float | None = None,
                 open_logs: bool = True) -> None:
        self._ops = ops
        self.open_logs = open_logs
        self.prefix = prefix
        self.max_events = max_events
        self.ttl_ms = int(ttl_s * 1000)
        # A live run may be quiet for long; its log must outlive any run (timeout + ttl).
        self.live_ttl_ms = int((live_ttl_s if live_ttl_s is not None else ttl_s + 3600) * 1000)
        self.subscriber_buffer = subscriber_buffer
        self._append = ops.register_script(APPEND)
        self._sinks: dict[str, set[Sink]] = {}  # channel -> local sinks
        self._control: dict[str, Callable[[dict[str, Any]], Awaitable[None] | None]] = {}
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._lock = asyncio.Lock()  # serializes (un)subscribe with reconnects
        self.reconnects = 0

    # -- keys ---------------------------------------------------------------
    def log_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:log"

    def meta_key(self, run_id: str) -> str:
        return log_meta_key(self.prefix, run_id)

    def channel(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:live"

    # -- lifecycle ----------------------------------------------------------
    async def __aenter__(self) -> RedisBus:
        self._ops.on_data_lost(self._resync_all)
        self._ops.reconnected()  # adopt (or set) the epoch, in the background
        self._listener = asyncio.create_task(self._listen_forever(), name="redis-bus-listener")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await pubsub.aclose()

    async def flush(self) -> None:
        """Appends are visible once they return: nothing to wait for."""

    async def ping(self) -> bool:
        return await self._ops.ping()

    # -- log ----------------------------------------------------------------
    async def append(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> Event:
        ts = time.time()
        body = dumps({"run_id": run_id, "ns": ns, "agent": agent, "data": data, "ts": ts})
        head = body[:-1] + b',"seq":'
        terminal = ns == "STATUS" and data.get("state") in ("succeeded", "failed", "cancelled")
        token = uuid.uuid4().hex
        keys = [self.log_key(run_id), self.meta_key(run_id)]
        args = [head, self.channel(run_id), self.max_events, self.ttl_ms, int(terminal), token,
                self.live_ttl_ms, int(self.open_logs)]

        async def op() -> Any:
            try:
                return await self._append(keys=keys, args=args)
            except ResponseError as exc:
                if "LOGLOST" not in str(exc):
                    raise
            # Most likely all of Redis was emptied: have the epoch say so now, not at the
            # next reconnect (a restart this process did not see, say).
            self._ops.reconnected()
            raise LogLost(run_id)

        seq = await self._ops.call(op)
        return Event(run_id, int(seq), ns, agent, data, ts)

    async def read(self, run_id: str, after: int, limit: int | None = None) -> list[Event]:
        key = self.log_key(run_id)

        async def op() -> Any:
            async with self._ops.client.pipeline(transaction=False) as p:
                p.xrange(key, "-", "+", count=1)
                p.xrange(key, f"{after + 1}-0", "+", count=limit)
                return await p.execute()

        first, rows = await self._ops.call(op)
        if first:
            first_seq = int(first[0][0].split(b"-")[0])
            if after < first_seq - 1:
                raise CursorExpired(run_id, after, first_seq)
        return [Event.decode(fields[b"e"]) for _, fields in rows]

    async def bounds(self, run_id: str) -> LogBounds | None:
        async def op() -> Any:
            async with self._ops.client.pipeline(transaction=False) as p:
                p.hmget(self.meta_key(run_id), "seq", "ended")
                p.xrange(self.log_key(run_id), "-", "+", count=1)
                return await p.execute()

        (seq, ended), first = await self._ops.call(op)
        if seq is None:
            return None
        last = int(seq)
        first_seq = int(first[0][0].split(b"-")[0]) if first else last + 1
        return LogBounds(first_seq, last, ended == b"1")

    # -- live fan-out -------------------------------------------------------
    async def attach(self, run_id: str, sink: Sink) -> None:
        ch = self.channel(run_id)
        async with self._lock:
            sinks = self._sinks.setdefault(ch, set())
            first = not sinks
            sinks.add(sink)
            if first and self._pubsub is not None:
                try:
                    await self._pubsub.subscribe(ch)
                except TRANSIENT:
                    pass  # the listener reconnects and subscribes every channel in _sinks

    async def detach(self, run_id: str, sink: Sink) -> None:
        ch = self.channel(run_id)
        async with self._lock:
            sinks = self._sinks.get(ch)
            if not sinks:
                return
            sinks.discard(sink)
            if not sinks:
                del self._sinks[ch]
                if self._pubsub is not None:
                    try:
                        await self._pubsub.unsubscribe(ch)
                    except TRANSIENT:
                        pass

    async def _resync_all(self) -> None:
        """Redis lost its data: every local subscriber reads its log again, and finds it gone."""
        for sinks in list(self._sinks.values()):
            for sink in list(sinks):
                sink.resync_needed()

    def local_channels(self) -> int:
        return len(self._sinks)

    # -- control messages (cancel, ...) -----------------------------------
    def control_channel(self, name: str) -> str:
        return f"{self.prefix}:ctl:{name}"

    async def on_control(self, name: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``handler(message)`` for every message published on control channel ``name``."""
        ch = self.control_channel(name)
        async with self._lock:
            self._control[ch] = handler
            if self._pubsub is not None:
                try:
                    await self._pubsub.subscribe(ch)
                except TRANSIENT:
                    pass  # the listener subscribes every control channel when it reconnects

    async def publish_control(self, name: str, message: dict[str, Any]) -> int:
        return await self._ops.call(
            lambda: self._ops.client.publish(self.control_channel(name), orjson.dumps(message)))

    async def _connect(self) -> None:
        pubsub = self._ops.pubsub()
        async with self._lock:
            # A control channel is always subscribed, so the connection is never idle-empty.
            await pubsub.subscribe(self.control_channel("all"), *self._control, *self._sinks)
            self._pubsub = pubsub

    async def _listen_forever(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        first = True
        while True:
            try:
                await self._connect()
                if not first:
                    self.reconnects += 1
                    log.warning("redis pub/sub reconnected; %d local channels resync from their logs",
                                len(self._sinks))
                    # Did it come back empty? Checked in the background (a Redis loading its
                    # AOF answers LOADING for a while); a loss resyncs everyone again.
                    self._ops.reconnected()
                    await self._resync_all()
                first = False
                backoff.reset()
                self._connected.set()
                await self._pump()
            except asyncio.CancelledError:
                raise
            except TRANSIENT as exc:
                log.warning("redis pub/sub connection lost (%s); retrying in %.1fs", exc,
                            backoff.next_delay)
            except Exception:
                log.exception("redis pub/sub listener failed; restarting")
            self._connected.clear()
            if self._pubsub is not None:
                pubsub, self._pubsub = self._pubsub, None
                try:
                    await pubsub.aclose()
                except Exception:  # the connection is already gone
                    pass
            await backoff.wait()

    async def _pump(self) -> None:
        pubsub = self._pubsub
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None or msg["type"] != "message":
                continue
            ch = msg["channel"].decode()
            sinks = self._sinks.get(ch)
            if sinks:
                event = Event.decode(msg["data"])
                for sink in list(sinks):
                    sink.push(event)
                continue
            handler = self._control.get(ch)
            if handler is not None:
                try:
                    res = handler(orjson.loads(msg["data"]))
                    if asyncio.iscoroutine(res):
                        await res
                except Exception:
                    log.exception("control handler for %s failed", ch)
