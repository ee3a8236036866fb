"""Run records in Redis: one hash per run, a sorted set per tenant for listing.

A record is created with its run's log (the log's meta hash, in the same transaction),
and never re-created by a later write: when Redis comes back empty, an update of a
vanished record is refused (``LogLost``) instead of leaving a hash of a few fields, and a
live record whose log vanished reads as lost, not as a run that will go on.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import orjson

from .. import redis_keys
from ..bus.base import Fenced, LogLost
from ..bus.redis import log_meta_key
from ..events import dumps
from ..redis_ops import RedisOps
from .store import _ALLOWED, InvalidTransition, RunRecord

_FIELDS = [f.name for f in dataclasses.fields(RunRecord)]
# What a record must hold to be one: create() writes every field, so a hash without these
# is the remains of writes to a record that vanished. (``tenant`` above all: a default
# would hand the run to the default tenant.)
_REQUIRED = frozenset({"run_id", "agent", "input", "tenant", "status", "created_at"})

# A write for a run from a worker that executes it carries that execution's fencing token
# (runs/lease.py; 0 from anyone else): once a later execution bumped the log meta's 'fence'
# (same hash tag as the record), the stale one's writes are refused - its ending must not win
# the record from the worker that took the run over.

# KEYS: record hash, log meta. ARGV: fencing token, then field/value pairs. Never creates a
# hash that is not there. Returns 1, 0 (no record) or -1 (fenced).
UPDATE = """
if ARGV[1] ~= '0' and tonumber(redis.call('HGET', KEYS[2], 'fence') or '0') > tonumber(ARGV[1]) then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS: record hash, log meta. ARGV: wanted status (JSON), allowed current statuses (JSON
# list), fencing token, then field/value pairs. Returns {1, previous status}, {0, current
# status} when the change is refused, {-1, current} when fenced.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if ARGV[3] ~= '0' and tonumber(redis.call('HGET', KEYS[2], 'fence') or '0') > tonumber(ARGV[3]) then
  return {-1, cur}
end
local allowed = cjson.decode(ARGV[2])
for _, s in ipairs(allowed) do
  if cjson.encode(s) == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 4))
    return {1, cur}
  end
end
return {0, cur}
"""


def _encode(changes: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in changes.items():
        out += [k, dumps(v)]
    return out


def _retried(fn: Any) -> Any:
    """Ride out a short Redis outage with the backend's one retry policy; a long one is a 503."""

    @functools.wraps(fn)
    async def wrapper(self: RedisRunStore, *args: Any, **kwargs: Any) -> Any:
        return await self.ops.call(lambda: fn(self, *args, **kwargs))

    return wrapper


class RedisRunStore:
    def __init__(self, ops: RedisOps, *, prefix: str, ttl_s: float = 7 * 24 * 3600,
                 fence_of: Callable[[str], int] | None = None) -> None:
        self.ops = ops
        # This process's fencing token for a run it executes (the bus's; 0: none).
        self.fence_of = fence_of or (lambda run_id: 0)
        self.redis = ops.client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self._transition = ops.register_script(TRANSITION)
        self._update = ops.register_script(UPDATE)

    def key(self, run_id: str) -> str:
        return redis_keys.run(self.prefix, run_id)

    def index_key(self, tenant: str | None) -> str:
        """The tenant's runs by creation time; every tenant's with None (an admin's list)."""
        ctl = redis_keys.control(self.prefix)
        return f"{ctl}:runs:{tenant}" if tenant is not None else f"{ctl}:runs-all"

    @_retried
    async def create(self, record: RunRecord) -> tuple[RunRecord, bool]:
        if record.idempotency_key is not None:
            idem = self.idem_key(record.tenant, record.idempotency_key)
            claimed = await self.redis.set(idem, record.run_id, nx=True, ex=24 * 3600)
            if not claimed:
                existing = await self.redis.get(idem)
                try:
                    rec = await self.get(existing.decode()) if existing else None
                except LogLost:
                    rec = None  # that run was lost: this request starts a new one
                if rec is not None:
                    return rec, False
                await self.redis.set(idem, record.run_id, ex=24 * 3600)
        fields = {f: getattr(record, f) for f in _FIELDS}
        meta = log_meta_key(self.prefix, record.run_id)
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(self.key(record.run_id), mapping=dict(zip(fields, map(dumps, fields.values()))))
            p.expire(self.key(record.run_id), self.ttl_s)
            # The run's log starts with its record, empty (the bus appends only to a log
            # that exists); its first append sets the log's own expiry.
            p.hset(meta, "seq", 0)
            p.expire(meta, self.ttl_s)
            if not self.ops.cluster:
                self._index(p, record)
            await p.execute()
        if self.ops.cluster:
            # A cluster runs a MULTI on one slot only: the run's keys above, then the
            # indexes (the control plane's slot). A record whose index write is lost is
            # only unlisted; an index entry is never left without its record.
            async with self.redis.pipeline(transaction=True) as p:
                self._index(p, record)
                await p.execute()
        return record, True

    def _index(self, p: Any, record: RunRecord) -> None:
        p.zadd(self.index_key(record.tenant), {record.run_id: record.created_at})
        p.zadd(self.index_key(None), {record.run_id: record.created_at})
        if record.thread_id is not None:
            p.zadd(self.thread_index_key(record.thread_id), {record.run_id: record.created_at})
            p.expire(self.thread_index_key(record.thread_id), self.ttl_s)

    def thread_index_key(self, thread_id: str) -> str:
        return f"{redis_keys.control(self.prefix)}:thread-runs:{thread_id}"

    def idem_key(self, tenant: str, key: str) -> str:
        return f"{redis_keys.control(self.prefix)}:idem:{tenant}:{key}"

    @_retried
    async def find_idempotent(self, tenant: str, key: str) -> RunRecord | None:
        run_id = await self.redis.get(self.idem_key(tenant, key))
        return await self.get(run_id.decode()) if run_id else None

    @_retried
    async def get(self, run_id: str) -> RunRecord | None:
        """The record, None if there is none, LogLost if what is there is not a run that can
        go on: a hash missing fields, or a live run whose log vanished."""
        async with self.redis.pipeline(transaction=False) as p:
            p.hgetall(self.key(run_id))
            p.exists(log_meta_key(self.prefix, run_id))
            raw, has_log = await p.execute()
        if not raw:
            return None
        try:
            values = {k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in _FIELDS}
            if not _REQUIRED <= values.keys():
                raise ValueError(f"missing {sorted(_REQUIRED - values.keys())}")
            rec = RunRecord(**values)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise LogLost(run_id, f"its record is incomplete ({exc})") from None
        if not has_log and not rec.terminal:
            # An ended run's log may expire before its record (that is its TTL); a live
            # run's log cannot, unless Redis lost it.
            raise LogLost(run_id)
        return rec

    @_retried
    async def delete(self, run_id: str) -> None:
        rec = await self.get(run_id)
        if rec is None:
            return
        if self.ops.cluster:  # the record's slot first, then the control plane's (as in create)
            await self.redis.delete(self.key(run_id))
        async with self.redis.pipeline(transaction=True) as p:
            if not self.ops.cluster:
                p.delete(self.key(run_id))
            p.zrem(self.index_key(rec.tenant), run_id)
            p.zrem(self.index_key(None), run_id)
            if rec.thread_id is not None:
                p.zrem(self.thread_index_key(rec.thread_id), run_id)
            if rec.idempotency_key is not None:
                p.delete(self.idem_key(rec.tenant, rec.idempotency_key))
            await p.execute()

    @_retried
    async def list(self, *, tenant: str | None, status: str | None = None, limit: int = 50,
                   before: float | None = None, thread_id: str | None = None) -> list[RunRecord]:
        out: list[RunRecord] = []
        index = self.thread_index_key(thread_id) if thread_id is not None else self.index_key(tenant)
        hi: Any = f"({before}" if before is not None else "+inf"
        page = max(limit, 50)
        offset = 0
        while len(out) < limit:
            ids = await self.redis.zrevrangebyscore(index, hi, "-inf", start=offset, num=page)
            if not ids:
                break
            offset += len(ids)
            for rid in ids:
                try:
                    rec = await self.get(rid.decode())
                except LogLost:
                    continue  # lost: listed as nothing rather than as a run that goes on
                if rec is None:
                    await self.redis.zrem(index, rid)  # its record expired
                    continue
                if tenant is not None and rec.tenant != tenant:
                    continue
                if status is None or rec.status == status:
                    out.append(rec)
                    if len(out) == limit:
                        break
        return out

    @_retried
    async def update(self, run_id: str, **changes: Any) -> RunRecord:
        done = await self._update(keys=[self.key(run_id), log_meta_key(self.prefix, run_id)],
                                  args=[self.fence_of(run_id), *_encode(changes)])
        if done == -1:
            raise Fenced(run_id)
        if not done:
            raise LogLost(run_id, "its record vanished")
        rec = await self.get(run_id)
        if rec is None:  # expired or lost between the two commands
            raise LogLost(run_id, "its record vanished")
        return rec

    @_retried
    async def transition(self, run_id: str, status: str, **changes: Any) -> RunRecord:
        allowed = [s for s, nxt in _ALLOWED.items() if status in nxt]
        ok, cur = await self._transition(
            keys=[self.key(run_id), log_meta_key(self.prefix, run_id)],
            args=[dumps(status), orjson.dumps(allowed), self.fence_of(run_id), *_encode(changes)])
        if ok == -1:
            raise Fenced(run_id)
        if not ok:
            current = orjson.loads(cur) if cur else "missing"
            raise InvalidTransition(run_id, current, status)
        rec = await self.get(run_id)
        if rec is None:
            raise LogLost(run_id, "its record vanished")
        return rec
