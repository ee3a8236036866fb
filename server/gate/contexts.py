"""Delivery contexts: what runs answer (a document, a view, a LangGraph thread).

A context has a version (the client moves it with ``PUT /contexts/{key}``; a thread's is
its head checkpoint), the newest run started on it (a later run supersedes an earlier
one), its runs in flight, and its inbox: what finished while nobody watched. Contexts are
tenant-scoped: (tenant, key) names one.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..events import dumps

if TYPE_CHECKING:
    from ..redis_ops import RedisOps


def log_id(tenant: str, key: str, gen: int = 0) -> str:
    """The id of the context's event log (an ordinary bus log: gapless and resumable)."""
    digest = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:32]
    return f"ctx.{digest}.{gen}"


@dataclass(frozen=True, slots=True)
class ContextRecord:
    tenant: str
    key: str
    version: str | None = None
    updated_at: float = field(default_factory=time.time)
    latest_run: str | None = None
    latest_created: float = 0.0
    inflight: dict[str, Any] = field(default_factory=dict)  # run id -> the version it started on
    inbox: list[dict[str, Any]] = field(default_factory=list)  # newest first
    gen: int = 0

    @property
    def log_id(self) -> str:
        return log_id(self.tenant, self.key, self.gen)


class ContextStore(Protocol):
    async def get(self, tenant: str, key: str) -> ContextRecord | None: ...

    async def set_version(self, tenant: str, key: str, version: str | None) -> tuple[ContextRecord, str | None]:
        """(the context after, its previous version); creates it."""
        ...

    async def run_started(self, tenant: str, key: str, run_id: str, version: str | None,
                          created_at: float) -> ContextRecord: ...

    async def run_ended(self, tenant: str, key: str, run_id: str) -> None: ...

    async def add_inbox(self, tenant: str, key: str, entry: dict[str, Any]) -> None: ...

    async def ack(self, tenant: str, key: str, run_ids: list[str] | None) -> None: ...


class MemoryContextStore:
    def __init__(self, *, inbox_max: int, inbox_ttl_s: float) -> None:
        self.inbox_max = inbox_max
        self.inbox_ttl_s = inbox_ttl_s
        self._ctx: dict[tuple[str, str], ContextRecord] = {}
        self._lock = asyncio.Lock()
        self._claims: set[str] = set()

    async def claim(self, name: str) -> bool:
        """True the first time ``name`` is claimed (one winner of a race)."""
        if name in self._claims:
            return False
        self._claims.add(name)
        return True

    def _fresh_inbox(self, rec: ContextRecord) -> ContextRecord:
        cutoff = time.time() - self.inbox_ttl_s
        kept = [e for e in rec.inbox if e.get("ended_at", 0) >= cutoff]
        return rec if len(kept) == len(rec.inbox) else replace(rec, inbox=kept)

    async def get(self, tenant: str, key: str) -> ContextRecord | None:
        rec = self._ctx.get((tenant, key))
        return self._fresh_inbox(rec) if rec is not None else None

    async def _change(self, tenant: str, key: str, fn: Any) -> ContextRecord:
        async with self._lock:
            rec = self._ctx.get((tenant, key)) or ContextRecord(tenant, key)
            rec = fn(self._fresh_inbox(rec))
            self._ctx[(tenant, key)] = rec
            return rec

    async def set_version(self, tenant: str, key: str, version: str | None) -> tuple[ContextRecord, str | None]:
        before = self._ctx.get((tenant, key))
        previous = before.version if before is not None else None
        rec = await self._change(tenant, key, lambda r: replace(r, version=version, updated_at=time.time()))
        return rec, previous

    async def run_started(self, tenant: str, key: str, run_id: str, version: str | None,
                          created_at: float) -> ContextRecord:
        def start(r: ContextRecord) -> ContextRecord:
            newer = created_at >= r.latest_created
            return replace(r, version=r.version if r.version is not None else version,
                           inflight={**r.inflight, run_id: version},
                           latest_run=run_id if newer else r.latest_run,
                           latest_created=max(created_at, r.latest_created))

        return await self._change(tenant, key, start)

    async def run_ended(self, tenant: str, key: str, run_id: str) -> None:
        await self._change(tenant, key, lambda r: replace(
            r, inflight={k: v for k, v in r.inflight.items() if k != run_id}))

    async def add_inbox(self, tenant: str, key: str, entry: dict[str, Any]) -> None:
        await self._change(tenant, key, lambda r: replace(r, inbox=[entry, *r.inbox][: self.inbox_max]))

    async def ack(self, tenant: str, key: str, run_ids: list[str] | None) -> None:
        await self._change(tenant, key, lambda r: replace(
            r, inbox=[] if run_ids is None else [e for e in r.inbox if e["run_id"] not in run_ids]))


class RedisContextStore:
    """A hash per context (version, newest run, log generation), a hash of its runs in flight
    and a list for its inbox; every process of a deployment shares them."""

    def __init__(self, ops: RedisOps, *, prefix: str, inbox_max: int, inbox_ttl_s: float,
                 ttl_s: float = 30 * 24 * 3600) -> None:
        self.ops = ops
        self.redis = ops.client
        self.prefix = prefix
        self.inbox_max = inbox_max
        self.inbox_ttl_s = inbox_ttl_s
        self.ttl_s = int(ttl_s)

    def key(self, tenant: str, key: str) -> str:
        # Tagged by context: its hash, runs and inbox share a slot (START touches two of them).
        return f"{self.prefix}:ctx:{{{log_id(tenant, key)}}}"

    async def claim(self, name: str) -> bool:
        """True for the first claimer of ``name`` across every process (SET NX)."""
        return bool(await self.ops.call(lambda: self.redis.set(f"{self.prefix}:claim:{name}", 1,
                                                               nx=True, ex=self.ttl_s)))

    async def get(self, tenant: str, key: str) -> ContextRecord | None:
        base = self.key(tenant, key)

        async def op() -> Any:
            async with self.redis.pipeline(transaction=False) as p:
                p.hgetall(base)
                p.hgetall(base + ":runs")
                p.lrange(base + ":inbox", 0, self.inbox_max - 1)
                return await p.execute()

        head, runs, inbox = await self.ops.call(op)
        if not head:
            return None
        h = {k.decode(): orjson.loads(v) for k, v in head.items()}
        cutoff = time.time() - self.inbox_ttl_s
        entries = [e for e in (orjson.loads(raw) for raw in inbox) if e.get("ended_at", 0) >= cutoff]
        return ContextRecord(tenant, key, version=h.get("version"), updated_at=h.get("updated_at", 0.0),
                             latest_run=h.get("latest_run"), latest_created=h.get("latest_created", 0.0),
                             inflight={k.decode(): orjson.loads(v) for k, v in runs.items()},
                             inbox=entries, gen=int(h.get("gen", 0)))

    async def _touch(self, tenant: str, key: str, fields: dict[str, Any]) -> None:
        base = self.key(tenant, key)

        async def op() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.hset(base, mapping={k: dumps(v) for k, v in fields.items()})
                p.hsetnx(base, "gen", b"0")
                p.expire(base, self.ttl_s)
                await p.execute()

        await self.ops.call(op)

    async def set_version(self, tenant: str, key: str, version: str | None) -> tuple[ContextRecord, str | None]:
        before = await self.get(tenant, key)
        await self._touch(tenant, key, {"version": version, "updated_at": time.time()})
        rec = await self.get(tenant, key)
        assert rec is not None
        return rec, before.version if before is not None else None

    # KEYS: context hash, its runs hash. ARGV: run id, version (JSON), created_at.
    START = """
    if redis.call('HEXISTS', KEYS[1], 'version') == 0 or redis.call('HGET', KEYS[1], 'version') == 'null' then
      redis.call('HSET', KEYS[1], 'version', ARGV[2])
    end
    local latest = tonumber(redis.call('HGET', KEYS[1], 'latest_created') or '0') or 0
    if tonumber(ARGV[3]) >= latest then
      redis.call('HSET', KEYS[1], 'latest_run', cjson.encode(ARGV[1]), 'latest_created', ARGV[3])
    end
    redis.call('HSETNX', KEYS[1], 'gen', '0')
    redis.call('HSETNX', KEYS[1], 'updated_at', ARGV[3])
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    redis.call('EXPIRE', KEYS[2], ARGV[4])
    return 1
    """

    async def run_started(self, tenant: str, key: str, run_id: str, version: str | None,
                          created_at: float) -> ContextRecord:
        base = self.key(tenant, key)
        script = self.ops.register_script(self.START)
        await self.ops.call(lambda: script(keys=[base, base + ":runs"],
                                           args=[run_id, dumps(version), repr(created_at), self.ttl_s]))
        rec = await self.get(tenant, key)
        assert rec is not None
        return rec

    async def run_ended(self, tenant: str, key: str, run_id: str) -> None:
        base = self.key(tenant, key)
        await self.ops.call(lambda: self.redis.hdel(base + ":runs", run_id))

    async def add_inbox(self, tenant: str, key: str, entry: dict[str, Any]) -> None:
        inbox = self.key(tenant, key) + ":inbox"

        async def op() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.lpush(inbox, dumps(entry))
                p.ltrim(inbox, 0, self.inbox_max - 1)
                p.expire(inbox, int(self.inbox_ttl_s))
                await p.execute()

        await self.ops.call(op)

    async def ack(self, tenant: str, key: str, run_ids: list[str] | None) -> None:
        inbox = self.key(tenant, key) + ":inbox"
        if run_ids is None:
            await self.ops.call(lambda: self.redis.delete(inbox))
            return
        for raw in await self.ops.call(lambda: self.redis.lrange(inbox, 0, -1)):
            if orjson.loads(raw).get("run_id") in run_ids:
                await self.ops.call(lambda raw=raw: self.redis.lrem(inbox, 0, raw))

    async def bump_gen(self, tenant: str, key: str) -> int:
        """The context's log vanished (expired): its events go on in a new log, never reusing seqs."""
        return int(await self.ops.call(lambda: self.redis.hincrby(self.key(tenant, key), "gen", 1)))
