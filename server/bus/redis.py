"""The Redis bus: each run's log is a Stream; pub/sub rings the doorbell.

Appending is one round trip per batch (EVALSHA, ``redis_writer.py``): the script assigns
the seqs, XADDs the events, PUBLISHes them to the run's channel and refreshes the expiry.
Each process holds one pub/sub connection, subscribed to a run's channel only while
local subscribers watch it, and dispatches to them in-process. When that connection
drops, it reconnects with capped backoff and every local subscriber resyncs from the
Stream. On a Redis Cluster a run's channel is a shard channel (SPUBLISH), heard through
one connection per shard (``redis_shards.py``); control channels stay classic.

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
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import orjson
from redis.exceptions import ResponseError

from .. import redis_keys
from ..backoff import Backoff
from ..events import Event
from ..observability.logs import current_run
from ..redis_ops import TRANSIENT, RedisOps
from .base import CursorExpired, Fenced, LogBounds, LogLost, Sink
from .redis_shards import ShardedChannels
from .redis_writer import APPEND, PENDING_MAX, RunWriter

if TYPE_CHECKING:
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)

# Runs whose last seq a process remembers (to notice a log that went back); oldest forgotten.
SEEN_MAX = 50_000
# How long closing the bus waits for the runs' last batches.
CLOSE_DRAIN_S = 3.0
# How long a run's failed writer keeps its failure for the run's next emit, append or flush.
FAILED_KEPT_S = 600.0


def log_meta_key(prefix: str, run_id: str) -> str:
    """The hash holding a log's next seq and state; its existence is the log's existence."""
    return redis_keys.run_meta(prefix, run_id)


class RedisBus:
    """Logs in Redis Streams under ``{prefix}:run:{{id}}:log`` (``redis_keys``); fan-out over pub/sub.

    ``open_logs``: an append to a run with no log starts one (a bus used alone). Behind a
    run store it is False: the store starts each log with its record, so a log missing
    later was lost, and appending to it is ``LogLost``.
    """

    def __init__(self, ops: RedisOps, *, prefix: str, max_events: int, ttl_s: float,
                 subscriber_buffer: int, live_ttl_s: float | None = None,
                 open_logs: bool = True, metrics: Metrics | None = None, wait_replicas: int = 0,
                 wait_timeout_s: float = 1.0) -> None:
        self._ops = ops
        # Each batch waits until this many replicas hold it (WAIT), so that an acknowledged
        # event survives a failover (Settings.redis_wait_replicas).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = max(1, int(wait_timeout_s * 1000))
        self.metrics = metrics
        self.open_logs = open_logs
        self.prefix = prefix
        self.max_events = max_events
        self.ttl_ms = int(ttl_s * 1000)
        # A live run may be quiet for long; its log must outlive any run (timeout + ttl).
        self.live_ttl_ms = int((live_ttl_s if live_ttl_s is not None else ttl_s + 3600) * 1000)
        self.subscriber_buffer = subscriber_buffer
        self._append = ops.register_script(APPEND)
        self._writers: dict[str, RunWriter] = {}  # run -> its batching writer in this process
        self._created = 0
        self._fences: dict[str, int] = {}  # run -> this process's fencing token for it
        self._seen: dict[str, int] = {}  # run -> the last seq this process saw its log reach
        # PUBLISH to a run's channel; a cluster's bus publishes to shard channels (SPUBLISH),
        # heard through one connection per shard (redis_shards.py), control channels stay classic.
        self.publish_command = "SPUBLISH" if ops.cluster else "PUBLISH"
        self._shards: ShardedChannels | None = None
        if ops.cluster:
            self._shards = ShardedChannels(ops, deliver=self._deliver, resync=self._resync_channels)
        self._writer_id = uuid.uuid4().hex[:12]  # names this process's batches in the log meta
        self.batches = 0
        self.unreplicated = 0  # WAITs answered by fewer replicas than asked (each asked again)
        self._sinks: dict[str, set[Sink]] = {}  # channel -> local sinks
        self._control: dict[str, Callable[[dict[str, Any]], Awaitable[None] | None]] = {}
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._lock = asyncio.Lock()  # serializes (un)subscribe with reconnects
        self.reconnects = 0

    # -- keys ---------------------------------------------------------------
    def log_key(self, run_id: str) -> str:
        return redis_keys.run_log(self.prefix, run_id)

    def meta_key(self, run_id: str) -> str:
        return log_meta_key(self.prefix, run_id)

    def channel(self, run_id: str) -> str:
        return redis_keys.run_channel(self.prefix, run_id)

    # -- lifecycle ----------------------------------------------------------
    async def __aenter__(self) -> RedisBus:
        self._ops.on_data_lost(self._resync_all)
        self._ops.reconnected()  # adopt (or set) the epoch, in the background
        self._listener = asyncio.create_task(self._listen_forever(), name="redis-bus-listener")
        return self

    async def __aexit__(self, *exc: object) -> None:
        # What runs emitted last goes out if Redis answers soon; a bus closing on a dead
        # Redis does not hang (those runs are recovered from their checkpoints).
        try:
            async with asyncio.timeout(CLOSE_DRAIN_S):
                await self.flush()
        except TimeoutError:
            log.warning("redis bus closed with %d runs' events unwritten", len(self._writers))
        for writer in list(self._writers.values()):
            await writer.aclose()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._shards is not None:
            await self._shards.aclose()
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await pubsub.aclose()

    async def flush(self) -> None:
        """Wait until the events emitted so far are in Redis.

        The checkpoint barrier (``runs.checkpoints.log_barrier``) calls this before a
        checkpoint is written, inside the run's task: then it waits for that run's events
        only and raises its writer's failure, so a checkpoint is never ahead of its events.
        Called outside a run, it waits for every run's and raises nothing (each run hears
        its own failure).
        """
        run = current_run()
        if run is not None:
            writer = self._writers.get(run["run_id"])
            if writer is not None:
                await writer.drained()
            return
        for writer in list(self._writers.values()):
            await writer.idle()

    async def ping(self) -> bool:
        return await self._ops.ping()

    # -- log ----------------------------------------------------------------
    async def append(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> Event:
        """Append one event; it is in the log (and published) when this returns."""
        return await (await self._writer(run_id)).put(ns, agent, data, wait=True)

    async def emit(self, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> None:
        """Append without waiting for Redis: the run's writer sends whatever is ready in one
        round trip per batch. A failure (the log lost or closed, Redis away past the
        allowance) is raised by this run's next emit, append or flush."""
        await (await self._writer(run_id)).put(ns, agent, data, wait=False)

    async def _writer(self, run_id: str) -> RunWriter:
        """The run's writer, once it has room: a graph faster than Redis waits here."""
        while True:
            writer = self._writers.get(run_id)
            if writer is None:
                self._created += 1
                if self._created % 256 == 0:
                    self._prune_failed()
                writer = self._writers[run_id] = RunWriter(self, run_id)
            if len(writer.pending) < PENDING_MAX:
                return writer
            await writer.drained()

    def _prune_failed(self) -> None:
        """A failed writer stays until its run asks why; long after, nobody is left to ask."""
        cutoff = time.monotonic() - FAILED_KEPT_S
        for run_id, writer in list(self._writers.items()):
            if writer.failed_at is not None and writer.failed_at < cutoff:
                del self._writers[run_id]

    def fence_of(self, run_id: str) -> int:
        """This process's fencing token for ``run_id`` (0: it does not execute it)."""
        return self._fences.get(run_id, 0)

    def fence(self, run_id: str, token: int | None) -> None:
        """This process executes ``run_id`` with fencing token ``token`` (None: it stopped):
        its batches carry it, and are refused once another execution holds a higher one."""
        if token is None:
            self._fences.pop(run_id, None)
        else:
            self._fences[run_id] = token

    def _saw(self, run_id: str, last: int, terminal: bool) -> None:
        seen = self._seen
        if terminal:
            seen.pop(run_id, None)
            return
        seen.pop(run_id, None)
        seen[run_id] = last  # newest last: the oldest entries are forgotten first
        if len(seen) > SEEN_MAX:
            del seen[next(iter(seen))]

    async def _write_batch(self, run_id: str, heads: list[bytes], terminal: bool, token: str) -> int:
        """One script call for a batch; returns the seq of its first event. ``RedisOps.call``
        re-runs it after a dropped connection with the same ``token``: applied once."""
        keys = [self.log_key(run_id), self.meta_key(run_id)]
        after = self._seen.get(run_id, 0)
        args = [self.channel(run_id), self.max_events, self.ttl_ms, self.live_ttl_ms, int(self.open_logs),
                self._writer_id, token, int(terminal), self._fences.get(run_id, 0), after,
                self.publish_command, *heads]

        async def op() -> Any:
            try:
                if self.wait_replicas:
                    return await self._append_replicated(keys, args)
                return await self._append(keys=keys, args=args)
            except ResponseError as exc:
                text = str(exc)
                if "FENCED" in text:
                    raise Fenced(run_id) from None
                if "LOGLOST" not in text:
                    raise
                if "went back" in text:
                    log.error("run %s: its log in Redis is behind seq %d, which this process wrote: Redis "
                              "forgot acknowledged writes (a failover to a replica that was behind?); "
                              "the log is declared lost rather than reuse those seqs", run_id, after)
                    raise LogLost(run_id, f"Redis forgot its events after seq <= {after} "
                                          "(a failover to a replica that was behind)") from None
            # Most likely all of Redis was emptied: have the epoch say so now, not at the
            # next reconnect (a restart this process did not see, say).
            self._ops.reconnected()
            raise LogLost(run_id)

        first = int(await self._ops.call(op))
        self.batches += 1
        self._saw(run_id, first + len(heads) - 1, terminal)
        return first

    async def _append_replicated(self, keys: list[str], args: list[Any]) -> Any:
        """The script, then WAIT, over one connection (WAIT counts the replicas holding that
        connection's writes; on a cluster WAIT sent through the cluster client would go to
        every master). Too few replicas: a transient error, so ``RedisOps.call`` asks again
        with the same batch token - answered from the meta, not appended twice - and WAITs again."""
        from redis.exceptions import AskError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        client = (self._ops.slot_client(keys[1], socket_timeout=5 + self.wait_timeout_ms / 1000)
                  if self._ops.cluster else self._ops.client)
        try:
            async with client.pipeline(transaction=False) as p:
                await self._append(keys=keys, args=args, client=p)  # queued (returns the pipeline)
                p.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                first, acked = await p.execute()
        except (*TRANSIENT, AskError):  # AskError: MOVED too (a failover or a slot move)
            if self._ops.cluster:
                await self._ops.refresh_slots()
                raise ConnectionError("the run's slot moved; asking its new master") from None
            raise
        if int(acked) < self.wait_replicas:
            self.unreplicated += 1
            raise RedisTimeoutError(f"batch held by {acked} of {self.wait_replicas} replicas after "
                                    f"{self.wait_timeout_ms} ms")
        return first

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

    async def open_log(self, run_id: str) -> None:
        """Start an empty log that is not a run's (a delivery context's); it then expires
        like a live run's, counted from its last append."""
        meta = self.meta_key(run_id)

        async def op() -> None:
            async with self._ops.client.pipeline(transaction=True) as p:
                p.hsetnx(meta, "seq", 0)
                p.pexpire(meta, self.live_ttl_ms)
                await p.execute()

        await self._ops.call(op)

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
            if first and self._shards is not None:
                await self._shards.subscribe(ch)  # a channel it cannot place yet waits for its repair
            elif first and self._pubsub is not None:
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
                if self._shards is not None:
                    await self._shards.unsubscribe(ch)
                elif self._pubsub is not None:
                    try:
                        await self._pubsub.unsubscribe(ch)
                    except TRANSIENT:
                        pass

    async def _resync_all(self) -> None:
        """Redis lost its data: every local subscriber reads its log again, and finds it gone."""
        for sinks in list(self._sinks.values()):
            for sink in list(sinks):
                sink.resync_needed()

    def _resync_channels(self, channels: Any) -> None:
        """These channels were subscribed again after a loss (a shard's failover, a slot
        move): what was published meanwhile is gone, so their subscribers read the log."""
        for ch in channels:
            for sink in list(self._sinks.get(ch, ())):
                sink.resync_needed()

    async def _control_resync(self) -> None:
        """Messages published while the connection was down are gone for good (pub/sub keeps
        nothing): every control handler hears ``{"resync": true}`` and may catch up from
        wherever its sender keeps the truth (revocations keep a log for this)."""
        for ch, handler in list(self._control.items()):
            try:
                res = handler({"resync": True})
                if asyncio.iscoroutine(res):
                    await res
            except Exception:
                log.exception("control handler for %s failed to resync", ch)

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
            # (On a cluster the run channels are shard channels, on connections of their own.)
            runs = () if self._shards is not None else self._sinks
            await pubsub.subscribe(self.control_channel("all"), *self._control, *runs)
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
                    if self._shards is None:
                        await self._resync_all()
                    await self._control_resync()
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
            if self._deliver(ch, msg["data"]):
                continue
            handler = self._control.get(ch)
            if handler is not None:
                try:
                    res = handler(orjson.loads(msg["data"]))
                    if asyncio.iscoroutine(res):
                        await res
                except Exception:
                    log.exception("control handler for %s failed", ch)


    def _deliver(self, ch: str, data: bytes) -> bool:
        """A run channel's message to its local subscribers; False if nobody here watches it."""
        sinks = self._sinks.get(ch)
        if not sinks:
            return False
        # One message per batch: its events one per line.
        events = [Event.decode(line) for line in data.split(b"\n")]
        for sink in list(sinks):
            for event in events:
                sink.push(event)
        return True
