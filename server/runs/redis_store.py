"""Run records in Redis: one hash per run, a sorted set per tenant for listing."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import orjson

from ..events import dumps
from ..redis_ops import RedisOps
from .store import _ALLOWED, InvalidTransition, RunRecord

_FIELDS = [f.name for f in dataclasses.fields(RunRecord)]

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
                rec = await self.get(existing.decode()) if existing else None
                if rec is not None:
                    return rec, False
                await self.redis.set(idem, record.run_id, ex=24 * 3600)
        fields = {f: getattr(record, f) for f in _FIELDS}
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(self.key(record.run_id), mapping=dict(zip(fields, map(dumps, fields.values()))))
            p.expire(self.key(record.run_id), self.ttl_s)
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
        raw = await self.redis.hgetall(self.key(run_id))
        if not raw:
            return None
        values = {k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in _FIELDS}
        return RunRecord(**values)

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
                rec = await self.get(rid.decode())
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
        await self.redis.hset(self.key(run_id), mapping=dict(zip(changes, map(dumps, changes.values()))))
        rec = await self.get(run_id)
        assert rec is not None
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
        assert rec is not None
        return rec
