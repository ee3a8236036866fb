"""Run records in Redis: one hash per run, a sorted set per tenant for listing.

A record is created with its run's log (the log's meta hash, in the same transaction),
and never re-created by a later write: when Redis comes back empty, an update of a
vanished record is refused (``LogLost``) instead of leaving a hash of a few fields, and a
live record whose log vanished reads as lost, not as a run that will go on.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import orjson

from ..bus.base import LogLost
from ..bus.redis import log_meta_key
from ..events import dumps
from ..redis_ops import RedisOps
from .store import _ALLOWED, InvalidTransition, RunRecord

_FIELDS = [f.name for f in dataclasses.fields(RunRecord)]
# What a record must hold to be one: create() writes every field, so a hash without these
# is the remains of writes to a record that vanished. (``tenant`` above all: a default
# would hand the run to the default tenant.)
_REQUIRED = frozenset({"run_id", "agent", "input", "tenant", "status", "created_at"})

# KEYS: record hash. ARGV: field/value pairs. Never creates a hash that is not there.
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: record hash. ARGV: wanted status (JSON), allowed current statuses (JSON list),
# then field/value pairs. Returns the current status when the change is refused.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local allowed = cjson.decode(ARGV[2])
for _, s in ipairs(allowed) do
  if cjson.encode(s) == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 3))
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
    def __init__(self, ops: RedisOps, *, prefix: str, ttl_s: float = 7 * 24 * 3600) -> None:
        self.ops = ops
        self.redis = ops.client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self._transition = ops.register_script(TRANSITION)
        self._update = ops.register_script(UPDATE)

    def key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def index_key(self, tenant: str) -> str:
        return f"{self.prefix}:runs:{tenant}"

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
            p.zadd(self.index_key(record.tenant), {record.run_id: record.created_at})
            await p.execute()
        return record, True

    def idem_key(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{key}"

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
    async def list(self, *, tenant: str, status: str | None = None, limit: int = 50,
                   before: float | None = None) -> list[RunRecord]:
        out: list[RunRecord] = []
        hi: Any = f"({before}" if before is not None else "+inf"
        page = max(limit, 50)
        offset = 0
        while len(out) < limit:
            ids = await self.redis.zrevrangebyscore(self.index_key(tenant), hi, "-inf",
                                                    start=offset, num=page)
            if not ids:
                break
            offset += len(ids)
            for rid in ids:
                try:
                    rec = await self.get(rid.decode())
                except LogLost:
                    continue  # lost: listed as nothing rather than as a run that goes on
                if rec is None:
                    await self.redis.zrem(self.index_key(tenant), rid)  # its record expired
                    continue
                if status is None or rec.status == status:
                    out.append(rec)
                    if len(out) == limit:
                        break
        return out

    @_retried
    async def update(self, run_id: str, **changes: Any) -> RunRecord:
        if not await self._update(keys=[self.key(run_id)], args=_encode(changes)):
            raise LogLost(run_id, "its record vanished")
        rec = await self.get(run_id)
        if rec is None:  # expired or lost between the two commands
            raise LogLost(run_id, "its record vanished")
        return rec

    @_retried
    async def transition(self, run_id: str, status: str, **changes: Any) -> RunRecord:
        allowed = [s for s, nxt in _ALLOWED.items() if status in nxt]
        ok, cur = await self._transition(
            keys=[self.key(run_id)],
            args=[dumps(status), orjson.dumps(allowed), *_encode(changes)])
        if not ok:
            current = orjson.loads(cur) if cur else "missing"
            raise InvalidTransition(run_id, current, status)
        rec = await self.get(run_id)
        if rec is None:
            raise LogLost(run_id, "its record vanished")
        return rec
