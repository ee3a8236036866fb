"""The one retry policy of a Redis backend, and the connections it is handed with.

``backends.py`` opens the connections (it is the only module that creates a Redis
client) and wraps them in one ``RedisOps``; the bus, the run store and the queue get
that object and never open a connection of their own. Imported only with Redis.

It also notices when Redis forgets (DESIGN.md, "When Redis forgets"): an epoch key, set
once (SET NX, a random id) and compared after every reconnect. A Redis that restarted
from its AOF still holds it; one that came back empty does not, and every process then
says so once and tells its listeners (the bus resyncs its subscribers, a worker drops
the runs it executes), instead of carrying on as if nothing had happened.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Awaitable, Callable, TypeVar

from redis.exceptions import ClusterDownError, RedisClusterUnreachableError, ResponseError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import TryAgainError

from .backoff import Backoff
from .bus.base import BackendUnavailable, LogClosed

# What a Redis outage looks like from here (BusyLoadingError, a restarted Redis still
# reading its AOF, is a ConnectionError too). On a cluster, a shard's failover too: its
# slots answer CLUSTERDOWN / TRYAGAIN, or are covered by nobody, until a replica took over.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, ClusterDownError,
             TryAgainError, SlotNotCoveredError, RedisClusterUnreachableError)

T = TypeVar("T")
log = logging.getLogger(__name__)


class RedisOps:
    """A command client, a client for pub/sub, and ``call``: ride out an outage, then say so.

    ``client`` is pooled and shared by every command of the process. ``pubsub_client``
    never reconnects by itself: a dropped pub/sub connection must surface, because the
    bus's reconnect is what makes every live subscriber resync (contract item 3).
    """

    def __init__(self, client: Any, *, pubsub_client: Any, outage_s: float,
                 epoch_key: str | None = None, cluster: bool = False,
                 node_options: dict[str, Any] | None = None,
                 startup_nodes: list[tuple[str, int]] | None = None) -> None:
        self.client = client
        # A Redis Cluster: a MULTI or a script only within one slot (``redis_keys``), live
        # channels are shard channels (SPUBLISH / SSUBSCRIBE, one connection per shard).
        self.cluster = cluster
        self._node_options = node_options or {}
        self._node_clients: dict[tuple[str, int, float | None], Any] = {}  # a cluster's nodes
        self._startup_nodes = startup_nodes or []  # until the cluster client learnt its map
        self._next_node = 0
        self.pubsub_client = pubsub_client
        self.outage_s = outage_s
        # None: no epoch kept (a bus or store used alone, as the contract tests do).
        self.epoch_key = epoch_key
        self.epoch: bytes | None = None  # the id this process last saw in the epoch key
        self.losses = 0  # how often this process found Redis emptied
        self._loss_listeners: list[Callable[[], Awaitable[None]]] = []
        self._epoch_lock = asyncio.Lock()
        self._epoch_check: asyncio.Task[bool] | None = None

    # -- the epoch: did Redis lose its data? ---------------------------------------
    def on_data_lost(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener()`` whenever Redis is found to have lost its data."""
        self._loss_listeners.append(listener)

    async def check_epoch(self) -> bool:
        """Compare the epoch key with the id this process saw; True if Redis lost its data.

        The first call adopts the epoch (setting it if Redis has none). Called at start and
        after every reconnect; a check that cannot reach Redis changes nothing (the next
        reconnect checks again).
        """
        if self.epoch_key is None:
            return False
        async with self._epoch_lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.outage_s
            backoff = Backoff(first=0.05, cap=1.0)
            while True:
                try:
                    current = await self.client.get(self.epoch_key)
                    if current is not None and current == self.epoch:
                        return False
                    if current is None:
                        # SET NX: of the processes finding it missing, one id wins; all adopt it.
                        await self.client.set(self.epoch_key, uuid.uuid4().hex, nx=True)
                        current = await self.client.get(self.epoch_key)
                    break
                except TRANSIENT:
                    # Away again, or still loading its AOF (a durable restart answers LOADING
                    # first): wait for the answer rather than miss a loss.
                    if loop.time() + backoff.next_delay > deadline:
                        return False
                    await backoff.wait()
            before, self.epoch = self.epoch, current
            if before is None:
                return False  # the first look: nothing known to lose
            self.losses += 1
            log.error("Redis lost its data (epoch %s is gone, now %s): runs in flight are lost; "
                      "run Redis with appendonly yes", before.decode(errors="replace"),
                      current.decode(errors="replace") if current else "?")
            listeners = list(self._loss_listeners)
        for listener in listeners:
            try:
                await listener()
            except Exception:  # one listener's failure must not keep the others from running
                log.exception("a listener of the Redis data loss failed")
        return True

    def reconnected(self) -> None:
        """Redis may have restarted (a command or the pub/sub connection got through after a
        drop, an append found its log gone, the queue's group vanished): check the epoch,
        one check at a time, in the background (the caller is on some command's path)."""
        if self.epoch_key is None or (self._epoch_check is not None and not self._epoch_check.done()):
            return
        self._epoch_check = asyncio.get_running_loop().create_task(self.check_epoch(),
                                                                   name="redis-epoch-check")

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (re-run it after a dropped connection) for up to ``outage_s``.

        Past that it raises BackendUnavailable (a 503, never a 500). The append
        script's LOGCLOSED refusal becomes LogClosed; other command errors pass through.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_s
        backoff = Backoff(first=0.05, cap=1.0)
        dropped = False
        while True:
            try:
                result = await op()
                if dropped:
                    self.reconnected()
                return result
            except TRANSIENT as exc:  # first: a cluster's CLUSTERDOWN is a ResponseError too
                dropped = True
                if loop.time() + backoff.next_delay > deadline:
                    raise BackendUnavailable(f"redis unreachable for {self.outage_s:g}s: {exc}") from exc
                await backoff.wait()
            except ResponseError as exc:
                if "LOGCLOSED" in str(exc):
                    raise LogClosed("the run has ended; its log takes no more events") from None
                raise

    def register_script(self, source: str) -> Any:
        return self.client.register_script(source)

    def pubsub(self) -> Any:
        """A pub/sub connection for classic channels (control messages). On a cluster any
        node hears every PUBLISH: each call takes the next known node, so a reconnect after
        a node died goes elsewhere."""
        if not self.cluster:
            return self.pubsub_client.pubsub()
        nodes = sorted((n.host, int(n.port)) for n in self.client.get_nodes()) or self._startup_nodes
        self._next_node += 1
        return self.node_client(*nodes[self._next_node % len(nodes)]).pubsub()

    def slot_client(self, key: str, *, socket_timeout: float) -> Any:
        """On a cluster, a client of the master that holds ``key``'s slot now (one node, one
        connection per pipeline: what WAIT needs, since it counts that connection's writes).
        ``socket_timeout``: a reply may take that long (WAIT's own timeout, and some)."""
        from redis.crc import key_slot

        node = self.client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        return self.node_client(node.host, int(node.port), socket_timeout=socket_timeout)

    async def refresh_slots(self) -> None:
        """Re-read the cluster's slot map (a failover or a slot move under way)."""
        try:
            await self.client.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - still electing: the caller retries
            log.debug("cluster slot map not refreshed: %s", exc)

    def node_client(self, host: str, port: int, *, socket_timeout: float | None = None) -> Any:
        """A client of one cluster node that never retries by itself (a dropped pub/sub
        connection must surface, as with ``pubsub_client``); kept until close. Pub/sub's
        have no socket timeout (they wait for messages); command clients have one, so a
        node that stopped answering fails the call instead of hanging it."""
        key = (host, port, socket_timeout)
        client = self._node_clients.get(key)
        if client is None:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = self._node_clients[key] = Redis(host=host, port=port, retry=Retry(NoBackoff(), 0),
                                                     socket_timeout=socket_timeout, **self._node_options)
        return client

    async def ping(self) -> bool:
        # Twice: after Redis restarts, the first try may pick a pooled connection that died
        # with the old server (it is dropped on failure); only a second failure means down.
        for _ in range(2):
            try:
                return bool(await asyncio.wait_for(self.client.ping(), 2))
            except (*TRANSIENT, asyncio.TimeoutError):
                continue
        return False

    async def aclose(self) -> None:
        if self._epoch_check is not None:
            self._epoch_check.cancel()
            await asyncio.gather(self._epoch_check, return_exceptions=True)
        for node in self._node_clients.values():
            await node.aclose(close_connection_pool=True)
        if self.pubsub_client is not None:
            await self.pubsub_client.aclose(close_connection_pool=True)
        if self.cluster:
            await self.client.aclose()
        else:
            await self.client.aclose(close_connection_pool=True)
