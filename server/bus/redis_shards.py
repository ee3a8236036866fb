"""Live fan-out on a Redis Cluster: shard channels, one pub/sub connection per shard.

A run's channel hashes to its run's slot (``redis_keys``), so the append script SPUBLISHes
on the shard that holds the log, and only that shard's subscribers hear it (a classic
PUBLISH is broadcast to every node of a cluster). A process holds one pub/sub connection
per shard it needs - each master holding a channel that a local subscriber watches -
never one per run.

redis-py's ClusterPubSub keeps one connection per node too, and moves channels after a
slot change by itself, but silently: what was published during the move or the reconnect
is lost, and the bus must know, so that those channels' subscribers fill the hole from
the log (DESIGN.md, contract item 3). So the connections are ours. A shard whose
connection drops (its master died) or whose server unsubscribes a channel (its slot
moved) hands its channels back; they are subscribed again wherever the cluster's map
says their slot lives now (after a failover: the promoted replica), and then their
subscribers resync from the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from redis.crc import key_slot

from ..backoff import Backoff
from ..redis_ops import TRANSIENT, RedisOps

log = logging.getLogger(__name__)

Node = tuple[str, int]


class _Shard:
    """One pub/sub connection to one master, and the channels subscribed on it."""

    def __init__(self, ops: RedisOps, node: Node) -> None:
        self.node = node
        self.channels: set[str] = set()
        self.pubsub = ops.node_client(*node).pubsub()
        self.task: asyncio.Task[None] | None = None
        self.dead = False

    async def add(self, channels: Iterable[str]) -> None:
        if self.dead:
            raise ConnectionError(f"the connection to {self.node} is gone")
        by_slot: dict[int, list[str]] = {}
        for ch in channels:
            by_slot.setdefault(key_slot(ch.encode()), []).append(ch)
        for group in by_slot.values():  # one SSUBSCRIBE names channels of one slot only
            await self.pubsub.ssubscribe(*group)
            self.channels.update(group)

    async def aclose(self) -> None:
        self.dead = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        try:
            await self.pubsub.aclose()
        except Exception:  # noqa: BLE001 - the connection is already gone
            pass


class ShardedChannels:
    """The run channels this process listens to on a cluster.

    ``deliver(channel, data)`` gets every message; ``resync(channels)`` is called for
    channels subscribed again after a loss (their subscribers read the log from their
    cursor). Owned by the bus: ``aclose`` ends every connection and task.
    """

    def __init__(self, ops: RedisOps, *, deliver: Callable[[str, bytes], None],
                 resync: Callable[[Iterable[str]], None]) -> None:
        self._ops = ops
        self._deliver = deliver
        self._resync = resync
        self._wanted: set[str] = set()  # channels with local subscribers
        self._shards: dict[Node, _Shard] = {}
        self._homeless: set[str] = set()  # wanted, but not subscribed anywhere since a loss
        self._repair: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # serializes placing channels with (un)subscribes
        self.moves = 0  # channels subscribed again after a loss (for tests and stats)

    def shards(self) -> list[Node]:
        """The nodes this process holds a shard connection to."""
        return list(self._shards)

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            self._wanted.add(channel)
            await self._place({channel}, resync=False)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            self._wanted.discard(channel)
            self._homeless.discard(channel)
            for node, shard in list(self._shards.items()):
                if channel not in shard.channels:
                    continue
                shard.channels.discard(channel)
                if not shard.channels:  # nothing left to hear there: no idle connection kept
                    del self._shards[node]
                    await shard.aclose()
                    continue
                try:
                    await shard.pubsub.sunsubscribe(channel)
                except TRANSIENT:
                    pass  # the connection is going: its reader hands its channels back

    async def aclose(self) -> None:
        if self._repair is not None:
            self._repair.cancel()
            await asyncio.gather(self._repair, return_exceptions=True)
        for shard in list(self._shards.values()):
            await shard.aclose()
        self._shards.clear()

    # -- placing channels on their shards ----------------------------------------
    def _node_of(self, channel: str) -> Node:
        node = self._ops.client.nodes_manager.get_node_from_slot(key_slot(channel.encode()))
        return node.host, int(node.port)

    async def _place(self, channels: set[str], *, resync: bool) -> None:
        """Subscribe each channel on its slot's master; the ones that fail wait for the repair."""
        by_node: dict[Node, set[str]] = {}
        failed: set[str] = set()
        for ch in channels:
            try:
                by_node.setdefault(self._node_of(ch), set()).add(ch)
            except Exception:  # noqa: BLE001 - the slot has no master in the map right now
                failed.add(ch)
        placed: set[str] = set()
        for node, group in by_node.items():
            shard = self._shards.get(node)
            if shard is None:
                shard = self._shards[node] = _Shard(self._ops, node)
            try:
                await shard.add(group)
            except TRANSIENT:
                failed |= group - shard.channels
                if not shard.channels and self._shards.get(node) is shard:
                    del self._shards[node]
                    await shard.aclose()
                continue
            placed |= group
            if shard.task is None:
                shard.task = asyncio.create_task(self._read(shard), name=f"redis-shard-{node[0]}:{node[1]}")
        if resync and placed:
            self.moves += len(placed)
            self._resync(placed)
        if failed:
            self._homeless |= failed
            self._start_repair()

    def _lost(self, channels: set[str]) -> None:
        """These channels are subscribed nowhere now: the repair places them again."""
        channels &= self._wanted
        if channels:
            self._homeless |= channels
            self._start_repair()

    def _start_repair(self) -> None:
        if self._repair is None or self._repair.done():
            self._repair = asyncio.get_running_loop().create_task(self._repair_forever(),
                                                                  name="redis-shard-repair")

    async def _repair_forever(self) -> None:
        """Until every wanted channel is subscribed again: refresh the cluster's slot map
        (a failover promotes a replica after the node timeout), then place the channels."""
        backoff = Backoff(first=0.1, cap=2.0)
        while self._homeless:
            await backoff.wait()
            try:
                await self._ops.client.nodes_manager.initialize()
            except Exception as exc:  # noqa: BLE001 - the cluster is still electing
                log.debug("cluster slot map not refreshed yet: %s", exc)
                continue
            async with self._lock:
                channels, self._homeless = self._homeless & self._wanted, set()
                await self._place(channels, resync=True)
        log.info("redis shard channels subscribed again (%d moved so far)", self.moves)

    async def _read(self, shard: _Shard) -> None:
        """Read one shard's connection until it drops; then its channels go elsewhere."""
        try:
            while True:
                msg = await shard.pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if msg is None:
                    continue
                kind, ch = msg["type"], msg["channel"]
                ch = ch.decode() if isinstance(ch, bytes) else ch
                if kind == "smessage":
                    self._deliver(ch, msg["data"])
                elif kind == "sunsubscribe" and ch in shard.channels:
                    # Not asked for by us (an unsubscribe removes the channel first): the
                    # server dropped it because its slot moved to another shard.
                    shard.channels.discard(ch)
                    log.warning("shard %s:%d dropped channel %s (its slot moved)", *shard.node, ch)
                    self._lost({ch})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a dropped connection, a dead master
            log.warning("redis shard %s:%d pub/sub connection lost (%s); %d channels move", *shard.node, exc,
                        len(shard.channels))
        shard.dead = True
        if self._shards.get(shard.node) is shard:
            del self._shards[shard.node]
        lost, shard.channels = set(shard.channels), set()
        await shard.aclose()
        self._lost(lost)
