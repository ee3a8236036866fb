"""LangGraph checkpoints on plain Redis types, for workers on many machines.

LangGraph's own ``langgraph-checkpoint-redis`` needs the RedisJSON and RediSearch modules;
a stock Redis (7.0 here) has neither. This saver keeps the same data in hashes, sorted
sets and sets, so any Redis the server already uses can hold its checkpoints, and a worker
that takes over a dead worker's run on another machine finds them there.

What is stored is LangGraph's own serialization (``self.serde.dumps_typed``): the saver
only frames each ``(type, bytes)`` pair with msgpack (``ormsgpack``, what LangGraph's serde
itself uses) to keep it in one hash field.

Keys, all of one thread under one hash tag (``{thread_id}``), so a thread lives on one
shard of a cluster and a put is one MULTI::

    P:cp:{T}:ns           set   the thread's checkpoint namespaces (with checkpoints or writes)
    P:cp:{T}:ids:NS       zset  checkpoint ids (score 0, ordered by id: uuid6 ids sort by time)
    P:cp:{T}:ck:NS        hash  id -> (checkpoint type, bytes, metadata type, bytes, parent id)
    P:cp:{T}:blobs:NS     hash  channel \\0 version -> (type, bytes)
    P:cp:{T}:w:NS:ID      hash  task id \\0 index -> (channel, type, bytes, task path)
    P:cp:{T}:wids:NS      set   checkpoint ids that have writes (for delete_thread)
    P:cp:{T}:listed       string  set once the thread is in the threads index
    P:cp:threads          set   every thread (for list() without a thread); its own slot

Every write refreshes the thread's expiry (``ttl_s``): a run's checkpoints are needed while
it runs and for a while after, not forever. Long-lived threads belong in PostgreSQL.
"""

from __future__ import annotations

import random
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence, TypeVar

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (WRITES_IDX_MAP, BaseCheckpointSaver, ChannelVersions, Checkpoint,
                                       CheckpointMetadata, CheckpointTuple, get_checkpoint_id,
                                       get_checkpoint_metadata, writes_sort_key)

T = TypeVar("T")
PAGE = 100  # checkpoint ids read per round trip while listing


async def _direct(op: Callable[[], Awaitable[T]]) -> T:
    return await op()


def _pack(*parts: Any) -> bytes:
    return ormsgpack.packb(list(parts))


def _unpack(raw: bytes) -> list[Any]:
    return ormsgpack.unpackb(raw)


def _sync_unsupported(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        # A sync call from inside the event loop would block it on Redis; the server only
        # uses the async API (astream, aget_state), so say what to call instead.
        raise NotImplementedError(f"RedisSaver is async only: use a{name}()")

    method.__name__ = name
    return method


class RedisSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on a ``redis.asyncio`` client.

    ``call`` runs every Redis operation (the server passes its ``RedisOps.call``, so a
    checkpoint write rides out a Redis restart like a log append does).
    """

    def __init__(self, client: Any, *, prefix: str = "ts", ttl_s: float | None = None,
                 call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
                 serde: Any = None) -> None:
        super().__init__(serde=serde)
        self.client = client
        self.prefix = prefix
        self.ttl_s = int(ttl_s) if ttl_s else None
        self.call = call or _direct

    # -- keys -------------------------------------------------------------------
    def _k(self, thread_id: str, *parts: str) -> str:
        return ":".join((f"{self.prefix}:cp:{{{thread_id}}}", *parts))

    def _threads_key(self) -> str:
        return f"{self.prefix}:cp:threads"

    # -- reading ------------------------------------------------------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id is None:
            newest = await self.call(lambda: self.client.zrevrangebylex(
                self._k(thread_id, "ids", ns), "+", "-", start=0, num=1))
            if not newest:
                return None
            checkpoint_id = newest[0].decode()
        raw = await self.call(lambda: self.client.hget(self._k(thread_id, "ck", ns), checkpoint_id))
        if raw is None:
            return None
        return await self._tuple(thread_id, ns, checkpoint_id, _unpack(raw))

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        conf = (config or {}).get("configurable") or {}
        if conf.get("thread_id") is not None:
            threads = [str(conf["thread_id"])]
        else:
            threads = sorted(m.decode() for m in await self.call(
                lambda: self.client.smembers(self._threads_key())))
        wanted_ns = conf.get("checkpoint_ns")
        wanted_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        left = limit
        for thread_id in threads:
            if wanted_ns is not None:
                spaces = [wanted_ns]
            else:
                spaces = sorted(m.decode() for m in await self.call(
                    lambda: self.client.smembers(self._k(thread_id, "ns"))))
            for ns in spaces:
                async for tup in self._list_ns(thread_id, ns, wanted_id, before_id, filter):
                    if left is not None and left <= 0:
                        return
                    yield tup
                    if left is not None:
                        left -= 1

    async def _list_ns(self, thread_id: str, ns: str, wanted_id: str | None, before_id: str | None,
                       filter: dict[str, Any] | None) -> AsyncIterator[CheckpointTuple]:
        """A namespace's checkpoints, newest first, a page of ids per round trip."""
        ids_key, ck_key = self._k(thread_id, "ids", ns), self._k(thread_id, "ck", ns)
        if wanted_id is not None:
            if before_id is not None and wanted_id >= before_id:
                return
            pages: Iterator[list[str]] | None = iter([[wanted_id]])
        else:
            pages = None
        upper = f"({before_id}" if before_id is not None else "+"
        while True:
            if pages is not None:
                ids = next(pages, None)
                if ids is None:
                    return
            else:
                raw_ids = await self.call(lambda: self.client.zrevrangebylex(
                    ids_key, upper, "-", start=0, num=PAGE))
                if not raw_ids:
                    return
                ids = [i.decode() for i in raw_ids]
                upper = f"({ids[-1]}"  # the next page starts below this one's oldest
            rows = await self.call(lambda: self.client.hmget(ck_key, ids))
            for checkpoint_id, raw in zip(ids, rows):
                if raw is None:
                    continue
                row = _unpack(raw)
                metadata = self.serde.loads_typed((row[2], row[3]))
                if filter and not all(metadata.get(k) == v for k, v in filter.items()):
                    continue
                yield await self._tuple(thread_id, ns, checkpoint_id, row, metadata)
            if pages is None and len(ids) < PAGE:
                return

    async def _tuple(self, thread_id: str, ns: str, checkpoint_id: str, row: list[Any],
                     metadata: Any = None) -> CheckpointTuple:
        checkpoint_type, checkpoint_bytes, meta_type, meta_bytes, parent = row
        checkpoint: Checkpoint = self.serde.loads_typed((checkpoint_type, checkpoint_bytes))
        versions = checkpoint.get("channel_versions") or {}
        channels = list(versions)
        fields = [f"{ch}\0{versions[ch]}" for ch in channels]

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as p:
                if fields:
                    p.hmget(self._k(thread_id, "blobs", ns), fields)
                p.hgetall(self._k(thread_id, "w", ns, checkpoint_id))
                return await p.execute()

        replies = await self.call(read)
        blobs = replies[0] if fields else []
        values: dict[str, Any] = {}
        for ch, raw in zip(channels, blobs):
            if raw is None:
                continue
            kind, data = _unpack(raw)
            if kind != "empty":
                values[ch] = self.serde.loads_typed((kind, data))
        writes = []
        for key, raw in replies[-1].items():
            task_id, idx = key.decode().split("\0")
            channel, kind, data, task_path = _unpack(raw)
            writes.append((writes_sort_key(task_path, task_id, int(idx)), task_id, channel, kind, data))
        writes.sort(key=lambda w: w[0])

        def cfg(cid: str) -> RunnableConfig:
            return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

        return CheckpointTuple(
            config=cfg(checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata if metadata is not None else self.serde.loads_typed((meta_type, meta_bytes)),
            parent_config=cfg(parent) if parent else None,
            pending_writes=[(tid, ch, self.serde.loads_typed((kind, data))) for _, tid, ch, kind, data in writes],
        )

    # -- writing ------------------------------------------------------------------
    def _expire(self, p: Any, keys: Sequence[str]) -> None:
        if self.ttl_s:
            for key in keys:
                p.expire(key, self.ttl_s)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        parent = conf.get("checkpoint_id")
        stored = checkpoint.copy()
        values: dict[str, Any] = stored.pop("channel_values")  # type: ignore[misc]
        blobs = {f"{ch}\0{ver}": _pack(*(self.serde.dumps_typed(values[ch]) if ch in values else ("empty", b"")))
                 for ch, ver in new_versions.items()}
        row = _pack(*self.serde.dumps_typed(stored),
                    *self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)), parent)
        keys = [self._k(thread_id, "ns"), self._k(thread_id, "ids", ns), self._k(thread_id, "ck", ns),
                self._k(thread_id, "blobs", ns), self._k(thread_id, "listed")]

        async def write() -> None:
            # One thread's keys share a slot: one MULTI, so a reader never sees a checkpoint
            # without its blobs.
            async with self.client.pipeline(transaction=True) as p:
                p.sadd(keys[0], ns)
                p.zadd(keys[1], {checkpoint["id"]: 0})
                p.hset(keys[2], checkpoint["id"], row)
                if blobs:
                    p.hset(keys[3], mapping=blobs)
                p.set(keys[4], 1, nx=True)
                self._expire(p, keys)
                first = (await p.execute())[-1 - (len(keys) if self.ttl_s else 0)]
            if first:
                # The threads index is in another slot: its own command, and only for a
                # thread's first checkpoint, so a step costs one round trip on the pool it
                # shares with every run's appends.
                await self.client.sadd(self._threads_key(), thread_id)

        await self.call(write)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                                 "checkpoint_id": checkpoint["id"]}}

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        conf = config["configurable"]
        thread_id, ns = str(conf["thread_id"]), conf.get("checkpoint_ns", "")
        checkpoint_id = conf["checkpoint_id"]
        key, wids = self._k(thread_id, "w", ns, checkpoint_id), self._k(thread_id, "wids", ns)
        spaces = self._k(thread_id, "ns")
        # A task's regular writes are kept once (a retried put_writes must not double them:
        # HSETNX); special ones (errors, interrupts: negative indices) are replaced (HSET).
        fields = []
        for idx, (channel, value) in enumerate(writes):
            i = WRITES_IDX_MAP.get(channel, idx)
            fields.append((f"{task_id}\0{i}", _pack(channel, *self.serde.dumps_typed(value), task_path), i >= 0))

        async def write() -> None:
            async with self.client.pipeline(transaction=True) as p:
                for field, value, keep_first in fields:
                    (p.hsetnx if keep_first else p.hset)(key, field, value)
                p.sadd(wids, checkpoint_id)
                p.sadd(spaces, ns)  # so delete_thread finds writes of a namespace with no checkpoint
                self._expire(p, [key, wids, spaces])
                await p.execute()

        await self.call(write)

    async def adelete_thread(self, thread_id: str) -> None:
        thread_id = str(thread_id)

        async def delete() -> None:
            spaces = [m.decode() for m in await self.client.smembers(self._k(thread_id, "ns"))]
            keys = [self._k(thread_id, "ns"), self._k(thread_id, "listed")]
            for ns in spaces:
                ids = [m.decode() for m in await self.client.smembers(self._k(thread_id, "wids", ns))]
                keys += [self._k(thread_id, part, ns) for part in ("ids", "ck", "blobs", "wids")]
                keys += [self._k(thread_id, "w", ns, cid) for cid in ids]
            await self.client.delete(*set(keys))
            await self.client.srem(self._threads_key(), thread_id)

        await self.call(delete)

    def get_next_version(self, current: str | None, channel: None) -> str:
        # As LangGraph's own savers: a zero-padded counter (versions sort as strings) and a
        # random tail.
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    get_tuple = _sync_unsupported("get_tuple")
    list = _sync_unsupported("list")
    put = _sync_unsupported("put")
    put_writes = _sync_unsupported("put_writes")
    delete_thread = _sync_unsupported("delete_thread")
