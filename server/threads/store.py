"""LangGraph threads' records: who owns a thread, its metadata, when it was touched.

A thread's *state* is not here: it lives in the LangGraph checkpointer under
``thread_id`` (so it survives restarts and every worker shares it). Its runs are run
records with ``thread_id`` set; its status is derived from them when read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .. import redis_keys
from ..events import dumps

if TYPE_CHECKING:
    from ..journal import Journal
    from ..redis_ops import RedisOps


# A checkpoint id no checkpoint has: LangGraph starts a run "from" it with an empty state.
EMPTY = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    thread_id: str
    tenant: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    # The checkpoint the thread stands at (its state, where its next run starts). None: the
    # newest checkpoint of the thread. A held run (the delivery gate) leaves it where it
    # was, so its checkpoints are a branch until delivered; EMPTY: before any checkpoint.
    head: str | None = None
    # A threadless run's own thread: its runs' endpoints find it, thread endpoints do not.
    ephemeral: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ThreadRecord:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


def matches(rec: ThreadRecord, metadata: dict[str, Any] | None) -> bool:
    """``metadata`` filter of a search: every key given has that value."""
    return not metadata or all(rec.metadata.get(k) == v for k, v in metadata.items())


class ThreadStore(Protocol):
    async def create(self, rec: ThreadRecord) -> tuple[ThreadRecord, bool]:
        """Store ``rec``; if its id exists, return the stored one and False."""
        ...

    async def get(self, thread_id: str) -> ThreadRecord | None: ...

    async def update(self, thread_id: str, **changes: Any) -> ThreadRecord | None: ...

    async def delete(self, thread_id: str) -> bool: ...

    async def search(self, *, tenant: str | None, metadata: dict[str, Any] | None,
                     limit: int, offset: int) -> list[ThreadRecord]:
        """Newest touched first; ``tenant=None``: every tenant's (an admin's view)."""
        ...


class MemoryThreadStore:
    """Threads in a dict, kept in the journal when there is one (a restart keeps them)."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal
        self._threads: dict[str, ThreadRecord] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        if self.journal is not None:
            for raw in await self.journal.load_threads():
                rec = ThreadRecord.from_dict(raw)
                self._threads[rec.thread_id] = rec

    async def _keep(self, rec: ThreadRecord) -> None:
        if self.journal is not None:
            await self.journal.put_thread(rec.thread_id, rec.to_dict())

    async def create(self, rec: ThreadRecord) -> tuple[ThreadRecord, bool]:
        async with self._lock:
            existing = self._threads.get(rec.thread_id)
            if existing is not None:
                return existing, False
            self._threads[rec.thread_id] = rec
        await self._keep(rec)
        return rec, True

    async def get(self, thread_id: str) -> ThreadRecord | None:
        return self._threads.get(thread_id)

    async def update(self, thread_id: str, **changes: Any) -> ThreadRecord | None:
        async with self._lock:
            rec = self._threads.get(thread_id)
            if rec is None:
                return None
            rec = replace(rec, **changes)
            self._threads[thread_id] = rec
        await self._keep(rec)
        return rec

    async def delete(self, thread_id: str) -> bool:
        async with self._lock:
            gone = self._threads.pop(thread_id, None) is not None
        if gone and self.journal is not None:
            await self.journal.put_thread(thread_id, None)
        return gone

    async def search(self, *, tenant: str | None, metadata: dict[str, Any] | None,
                     limit: int, offset: int) -> list[ThreadRecord]:
        rows = [r for r in self._threads.values()
                if (tenant is None or r.tenant == tenant) and matches(r, metadata)]
        rows.sort(key=lambda r: r.updated_at, reverse=True)
        return rows[offset:offset + limit]


class RedisThreadStore:
    """One JSON string per thread, and a sorted set per tenant (by last touch) to search."""

    def __init__(self, ops: RedisOps, *, prefix: str, ttl_s: float = 30 * 24 * 3600) -> None:
        self.ops = ops
        self.redis = ops.client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)

    # A thread and its index entries change in one MULTI: on a cluster they share the control
    # plane's slot (the thread's checkpoints have a slot of their own, by thread).
    def key(self, thread_id: str) -> str:
        return f"{redis_keys.control(self.prefix)}:thread:{thread_id}"

    def index_key(self, tenant: str | None) -> str:
        ctl = redis_keys.control(self.prefix)
        return f"{ctl}:threads:{tenant}" if tenant is not None else f"{ctl}:threads-all"

    async def _put(self, rec: ThreadRecord, *, only_new: bool) -> bool:
        async def put() -> bool:
            async with self.redis.pipeline(transaction=True) as p:
                p.set(self.key(rec.thread_id), dumps(rec.to_dict()), ex=self.ttl_s, nx=only_new)
                p.zadd(self.index_key(rec.tenant), {rec.thread_id: rec.updated_at})
                p.zadd(self.index_key(None), {rec.thread_id: rec.updated_at})
                stored, *_ = await p.execute()
            return bool(stored)

        return await self.ops.call(put)

    async def create(self, rec: ThreadRecord) -> tuple[ThreadRecord, bool]:
        if await self._put(rec, only_new=True):
            return rec, True
        existing = await self.get(rec.thread_id)
        return (existing or rec), False

    async def get(self, thread_id: str) -> ThreadRecord | None:
        raw = await self.ops.call(lambda: self.redis.get(self.key(thread_id)))
        return ThreadRecord.from_dict(orjson.loads(raw)) if raw else None

    async def update(self, thread_id: str, **changes: Any) -> ThreadRecord | None:
        rec = await self.get(thread_id)
        if rec is None:
            return None
        rec = replace(rec, **changes)
        await self._put(rec, only_new=False)
        return rec

    async def delete(self, thread_id: str) -> bool:
        rec = await self.get(thread_id)

        async def drop() -> int:
            async with self.redis.pipeline(transaction=True) as p:
                p.delete(self.key(thread_id))
                p.zrem(self.index_key(None), thread_id)
                if rec is not None:
                    p.zrem(self.index_key(rec.tenant), thread_id)
                gone, *_ = await p.execute()
            return int(gone)

        return bool(await self.ops.call(drop))

    async def search(self, *, tenant: str | None, metadata: dict[str, Any] | None,
                     limit: int, offset: int) -> list[ThreadRecord]:
        out: list[ThreadRecord] = []
        skipped, start, page = 0, 0, max(50, limit)
        index = self.index_key(tenant)
        while len(out) < limit:
            ids = await self.ops.call(lambda: self.redis.zrevrange(index, start, start + page - 1))
            if not ids:
                break
            start += len(ids)
            for raw_id in ids:
                rec = await self.get(raw_id.decode())
                if rec is None:
                    await self.ops.call(lambda: self.redis.zrem(index, raw_id))  # expired
                    continue
                if not matches(rec, metadata):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(rec)
                if len(out) == limit:
                    break
        return out
