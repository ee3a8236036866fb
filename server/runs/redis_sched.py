"""Fair share on Redis: the scheduling decision is one Lua script, the same for every worker.

Waiting runs live in sorted sets scored by one arrival counter: per tenant (its FIFO, and
``queue_position``) and per tenant and agent (so a worker of one pool picks only its
agents). A worker with free slots calls ``CLAIM``: in one atomic step it picks tenants by
smooth weighted round-robin among those with a waiting run it can take and a free slot
under their cap (the rules of ``fair.py``), takes each one's oldest run, counts the slot,
and hands the runs over through the queue Stream with ``XADD`` + ``XREADGROUP`` — so from
there on a run is a pending entry of that worker exactly as before: its heartbeat keeps it,
and after a worker's death ``XAUTOCLAIM`` gives it (and its slot) to another worker.
``RELEASE`` gives the slot back at every ending, once (a slot is a hash field per run).

Every key, the queue Stream included, is under the control plane's hash tag
(``redis_keys.control``) so a Redis Cluster keeps them on one shard, where a script can
touch them all; each call declares a key of that slot (KEYS) so a cluster client routes it
there (the scripts take their key names from ARGV: they build them per tenant and agent).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from .. import redis_keys
from ..redis_ops import RedisOps
from .fair import REJOIN_MEMORY_S, Rate, Refused, TenantPolicy, queue_full, rate_limited

_ENQUEUE = """
-- ARGV: base, run_id, tenant, agent, entry json, weight json, front, now, rejoin memory s
local b, run, t, a = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local weights = cjson.decode(ARGV[6])
local now, memory = tonumber(ARGV[8]), tonumber(ARGV[9])
local seq = redis.call('INCR', b .. ':seq')
if ARGV[7] == '1' then seq = -seq end  -- a taken-back run goes first in its tenant
if redis.call('SADD', b .. ':active', t) == 1 then
  -- A tenant that had nothing waiting comes back with the credit it would have had waiting
  -- all along (its credit when it left + its weight per pick since), capped just above the
  -- most credit any other tenant could reach at the next pick (fair.FairQueue._join_credit).
  local top, wmax = 0, 0
  for _, other in ipairs(redis.call('SMEMBERS', b .. ':active')) do
    if other ~= t then
      local c = tonumber(redis.call('HGET', b .. ':credit', other) or '0')
      if c > top then top = c end
      local w = weights[other] or weights['*'] or 1
      if w > wmax then wmax = w end
    end
  end
  local ceiling = top + wmax
  local credit = ceiling
  local rested = redis.call('HGET', b .. ':rested', t)
  local old = tonumber(redis.call('HGET', b .. ':credit', t) or '')
  if rested and old then
    local picks_then, since = string.match(rested, '([^:]+):([^:]+)')
    if now - tonumber(since) < memory then
      local picks = tonumber(redis.call('GET', b .. ':picks') or '0')
      local mine = weights[t] or weights['*'] or 1
      credit = math.min(ceiling, old + (picks - tonumber(picks_then)) * mine)
    end
  end
  redis.call('HDEL', b .. ':rested', t)
  redis.call('HSET', b .. ':credit', t, credit)
end
redis.call('ZREM', b .. ':held:' .. t, run)  -- its held place (admit) becomes a real one
redis.call('ZADD', b .. ':t:' .. t, seq, run)
redis.call('ZADD', b .. ':ta:' .. t .. ':' .. a, seq, run)
redis.call('SADD', b .. ':agents:' .. t, a)
redis.call('HSET', b .. ':entry', run, ARGV[5])
return seq
"""

# Remove a waiting run (cancelled while queued); returns 1 if it was waiting.
_WITHDRAW = """
local b, run = ARGV[1], ARGV[2]
local raw = redis.call('HGET', b .. ':entry', run)
if not raw then return 0 end
local e = cjson.decode(raw)
redis.call('HDEL', b .. ':entry', run)
redis.call('ZREM', b .. ':t:' .. e.tenant, run)
local ta = b .. ':ta:' .. e.tenant .. ':' .. e.agent
redis.call('ZREM', ta, run)
if redis.call('ZCARD', ta) == 0 then redis.call('SREM', b .. ':agents:' .. e.tenant, e.agent) end
if redis.call('ZCARD', b .. ':t:' .. e.tenant) == 0 then
  redis.call('SREM', b .. ':active', e.tenant)
  redis.call('HSET', b .. ':rested', e.tenant, (redis.call('GET', b .. ':picks') or '0') .. ':' .. ARGV[3])
end
return 1
"""

_CLAIM = """
-- ARGV: base, stream, group, consumer, n, agents ('*' or comma list), weights json, caps json, now
local b, stream, group, consumer = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local all = ARGV[6] == '*'
local mine = {}
if not all then for ag in string.gmatch(ARGV[6], '[^,]+') do mine[ag] = true end end
local weights, caps = cjson.decode(ARGV[7]), cjson.decode(ARGV[8])
local function weight(t) return weights[t] or weights['*'] or 1 end
local function cap(t) return caps[t] or caps['*'] or 0 end
-- The group first: after Redis lost its data it is gone, and an XADD without it would hand
-- runs to nobody (BUSYGROUP, the usual answer, is ignored).
redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
local taken, guard = 0, 16
while taken < n do
  local cands, total = {}, 0
  for _, t in ipairs(redis.call('SMEMBERS', b .. ':active')) do
    local c = cap(t)
    if c == 0 or tonumber(redis.call('HGET', b .. ':running', t) or '0') < c then
      local ok = all
      if not all then
        for _, ag in ipairs(redis.call('SMEMBERS', b .. ':agents:' .. t)) do
          if mine[ag] then ok = true break end
        end
      end
      if ok then table.insert(cands, t); total = total + weight(t) end
    end
  end
  if #cands == 0 then break end
  table.sort(cands)  -- ties go the same way on every worker
  local best, bestc = nil, nil
  for _, t in ipairs(cands) do
    local c = tonumber(redis.call('HINCRBYFLOAT', b .. ':credit', t, weight(t)))
    if bestc == nil or c > bestc then best, bestc = t, c end
  end
  redis.call('HINCRBYFLOAT', b .. ':credit', best, -total)
  local picks = redis.call('INCR', b .. ':picks')
  -- the tenant's oldest run this worker may take
  local run, agent, score = nil, nil, nil
  for _, ag in ipairs(redis.call('SMEMBERS', b .. ':agents:' .. best)) do
    if all or mine[ag] then
      local head = redis.call('ZRANGE', b .. ':ta:' .. best .. ':' .. ag, 0, 0, 'WITHSCORES')
      if head[1] and (score == nil or tonumber(head[2]) < score) then
        run, agent, score = head[1], ag, tonumber(head[2])
      end
    end
  end
  if run == nil then
    -- its sets disagree (a write lost with Redis's data): forget the tenant's waiting state
    redis.call('SREM', b .. ':active', best)
    redis.call('HDEL', b .. ':credit', best)
    redis.call('DEL', b .. ':agents:' .. best)
    guard = guard - 1
    if guard <= 0 then break end
  else
    local raw = redis.call('HGET', b .. ':entry', run)
    redis.call('HDEL', b .. ':entry', run)
    redis.call('ZREM', b .. ':t:' .. best, run)
    local ta = b .. ':ta:' .. best .. ':' .. agent
    redis.call('ZREM', ta, run)
    if redis.call('ZCARD', ta) == 0 then redis.call('SREM', b .. ':agents:' .. best, agent) end
    if redis.call('ZCARD', b .. ':t:' .. best) == 0 then
      redis.call('SREM', b .. ':active', best)
      redis.call('HSET', b .. ':rested', best, picks .. ':' .. ARGV[9])  -- for its rejoin
    end
    redis.call('HINCRBY', b .. ':running', best, 1)
    redis.call('HSET', b .. ':slot', run, cjson.encode({tenant = best, agent = agent}))
    local e = raw and cjson.decode(raw) or {}
    local fields = {'run_id', run, 'tenant', best, 'agent', agent, 'since', tostring(e.since or 0)}
    if e.answer ~= nil then table.insert(fields, 'answer'); table.insert(fields, e.answer) end
    redis.call('XADD', stream, '*', unpack(fields))
    taken = taken + 1
  end
end
-- Always read: entries handed over but never delivered (a claim that failed half-way) are
-- delivered now, oldest first; they already hold their slots.
return redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', stream, '>')
"""

# A run's execution is over: ack its entry and give its slot back (once per run however
# often it is called). ARGV: base, run, duration[, stream, group, entry id, consumer]. With an
# entry: if another worker took the entry over meanwhile (this one stalled past the lease),
# that worker executes the run now and finishes it: nothing is acked or released here (-1).
_RELEASE = """
local b, run = ARGV[1], ARGV[2]
if ARGV[4] then
  local ok, p = pcall(redis.call, 'XPENDING', ARGV[4], ARGV[5], ARGV[6], ARGV[6], 1)
  if ok and p[1] and p[1][2] ~= ARGV[7] then return -1 end
  redis.call('XACK', ARGV[4], ARGV[5], ARGV[6])
  redis.call('XDEL', ARGV[4], ARGV[6])
end
local raw = redis.call('HGET', b .. ':slot', run)
if not raw then return 0 end
redis.call('HDEL', b .. ':slot', run)
local s = cjson.decode(raw)
if tonumber(redis.call('HINCRBY', b .. ':running', s.tenant, -1)) <= 0 then
  redis.call('HDEL', b .. ':running', s.tenant)
end
local d = tonumber(ARGV[3])
if d and d >= 0 then
  local old = tonumber(redis.call('HGET', b .. ':mean', s.tenant) or '')
  redis.call('HSET', b .. ':mean', s.tenant, old and (old + 0.2 * (d - old)) or d)
end
return 1
"""

# Admission: the tenant's queue cap, then its creation rate (GCRA: one number per tenant).
# ARGV: base, tenant, max_queued, interval_s, burst, now, run_id. Returns {code, value}:
# {'ok', 0} | {'queue', queued} | {'rate', wait_s}
_ADMIT = """
local b, t = ARGV[1], ARGV[2]
local max_queued = tonumber(ARGV[3])
local held = b .. ':held:' .. t  -- admitted creations not queued yet (expire if never queued)
if max_queued > 0 then
  redis.call('ZREMRANGEBYSCORE', held, '-inf', ARGV[6])
  local queued = redis.call('ZCARD', b .. ':t:' .. t) + redis.call('ZCARD', held)
  if queued >= max_queued then return {'queue', queued} end
end
local interval = tonumber(ARGV[4])
if interval > 0 then
  local now, burst = tonumber(ARGV[6]), tonumber(ARGV[5])
  local key = b .. ':tat:' .. t
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  local limit = now + interval * burst
  if new > limit then return {'rate', tostring(new - limit)} end
  redis.call('SET', key, tostring(new), 'PX', math.ceil(interval * burst * 1000) + 1000)
end
if max_queued > 0 and ARGV[7] ~= '' then
  redis.call('ZADD', held, tonumber(ARGV[6]) + 30, ARGV[7])
  redis.call('EXPIRE', held, 60)
end
return {'ok', 0}
"""


class RedisScheduler:
    """The scripts, and the views built from the same keys."""

    def __init__(self, ops: RedisOps, *, prefix: str, policy: TenantPolicy) -> None:
        self.ops = ops
        self.base = redis_keys.scheduler(prefix)
        self._slot = [self.base]  # KEYS of every call: routes it to the control plane's shard
        self.policy = policy
        self._weights = orjson.dumps(policy.weights or {"*": 1}).decode()
        caps: dict[str, int] = {"*": policy.max_running, **policy.max_running_overrides}
        self._caps = orjson.dumps(caps).decode()
        self._enqueue = ops.register_script(_ENQUEUE)
        self._withdraw = ops.register_script(_WITHDRAW)
        self._claim = ops.register_script(_CLAIM)
        self._release = ops.register_script(_RELEASE)
        self._admit = ops.register_script(_ADMIT)

    async def admit(self, tenant: str, run_id: str = "") -> None:
        """Refused, or the creation is counted and ``run_id`` holds a queue place until enqueued."""
        rate: Rate | None = self.policy.rate
        args = [self.base, tenant, self.policy.max_queued, rate.interval_s if rate else 0,
                rate.burst if rate else 0, time.time(), run_id]
        code, value = await self.ops.call(lambda: self._admit(keys=self._slot, args=args))
        code = code.decode() if isinstance(code, bytes) else code
        if code == "queue":
            mean = await self.mean_run_s(tenant)
            running = await self.ops.call(lambda: self.ops.client.hget(f"{self.base}:running", tenant))
            cap = self.policy.cap(tenant) or max(1, int(running or 0))
            raise queue_full(tenant, int(value), self.policy.max_queued, mean, cap)
        if code == "rate":
            assert rate is not None
            raise rate_limited(tenant, rate, float(value))

    async def unreserve(self, tenant: str, run_id: str) -> None:
        key = f"{self.base}:held:{tenant}"
        await self.ops.call(lambda: self.ops.client.zrem(key, run_id))

    async def mean_run_s(self, tenant: str) -> float:
        means = await self.ops.call(lambda: self.ops.client.hgetall(f"{self.base}:mean"))
        values = {k.decode(): float(v) for k, v in means.items()}
        if tenant in values:
            return values[tenant]
        return sum(values.values()) / len(values) if values else 1.0

    async def enqueue(self, run_id: str, tenant: str, agent: str, answer: bytes | None = None,
                      *, front: bool = False, since: float | None = None) -> None:
        entry: dict[str, Any] = {"tenant": tenant, "agent": agent, "since": since or time.time()}
        if answer is not None:
            entry["answer"] = answer.decode()
        args = [self.base, run_id, tenant, agent, orjson.dumps(entry).decode(), self._weights,
                "1" if front else "0", time.time(), REJOIN_MEMORY_S]
        await self.ops.call(lambda: self._enqueue(keys=self._slot, args=args))

    async def withdraw(self, run_id: str) -> bool:
        args = [self.base, run_id, time.time()]
        return bool(await self.ops.call(lambda: self._withdraw(keys=self._slot, args=args)))

    async def claim(self, stream: str, group: str, consumer: str, n: int, agents: str) -> Any:
        """Up to ``n`` runs for this worker, as ``[(stream, [(entry id, {field: value})])]`` like
        redis-py's XREADGROUP (a script's reply comes unparsed: flat field lists)."""
        raw = await self._claim(keys=[self.base, stream], args=[self.base, stream, group, consumer, n, agents,
                                                               self._weights, self._caps, time.time()])
        out = []
        for name, entries in raw or ():
            parsed = []
            for entry_id, flat in entries:
                flat = flat or []
                parsed.append((entry_id, dict(zip(flat[::2], flat[1::2]))))
            out.append((name, parsed))
        return out

    async def release(self, run_id: str, duration_s: float | None = None) -> bool:
        args = [self.base, run_id, -1 if duration_s is None else duration_s]
        return bool(await self.ops.call(lambda: self._release(keys=self._slot, args=args)))

    async def finish(self, run_id: str, duration_s: float | None, *, stream: str, group: str,
                     entry_id: str, consumer: str) -> int:
        """Ack the run's entry and release its slot, unless another worker took the entry
        over: 1 released, 0 nothing held, -1 not ours any more (its new owner finishes it)."""
        args = [self.base, run_id, -1 if duration_s is None else duration_s, stream, group, entry_id, consumer]
        return int(await self.ops.call(lambda: self._release(keys=[self.base, stream], args=args)))

    async def depth(self) -> int:
        return int(await self.ops.call(lambda: self.ops.client.hlen(f"{self.base}:entry")))

    async def position(self, run_id: str, tenant: str, agent: str,
                       live_agents: set[str] | None) -> tuple[int, str] | None:
        client = self.ops.client
        rank = await self.ops.call(lambda: client.zrank(f"{self.base}:t:{tenant}", run_id))
        if rank is None:
            return None
        running = int(await self.ops.call(lambda: client.hget(f"{self.base}:running", tenant)) or 0)
        cap = self.policy.cap(tenant)
        if live_agents is not None and agent not in live_agents and "*" not in live_agents:
            why = f"no live worker serves agent {agent!r}"
        elif cap and running >= cap:
            why = f"tenant {tenant!r} is at its running cap ({running}/{cap})"
        elif rank:
            why = f"behind {rank} earlier run(s) of tenant {tenant!r}"
        else:
            why = "waiting for a free worker slot"
        return rank + 1, why

    async def overview(self) -> dict[str, Any]:
        client, b = self.ops.client, self.base
        entries = await self.ops.call(lambda: client.hgetall(f"{b}:entry"))
        slots = await self.ops.call(lambda: client.hgetall(f"{b}:slot"))
        now = time.time()
        tenants: dict[str, Any] = {}

        def row(tenant: str) -> dict[str, Any]:
            if tenant not in tenants:
                tenants[tenant] = {"queued": 0, "running": 0, "cap": self.policy.cap(tenant) or None,
                                   "weight": self.policy.weight(tenant), "oldest_age_s": None, "by_agent": {}}
            return tenants[tenant]

        for raw in entries.values():
            e = orjson.loads(raw)
            r = row(e["tenant"])
            r["queued"] += 1
            r["by_agent"].setdefault(e["agent"], {"queued": 0, "running": 0})["queued"] += 1
            age = now - float(e.get("since") or now)
            r["oldest_age_s"] = max(r["oldest_age_s"] or 0.0, age)
        for raw in slots.values():
            s = orjson.loads(raw)
            r = row(s["tenant"])
            r["running"] += 1
            r["by_agent"].setdefault(s["agent"], {"queued": 0, "running": 0})["running"] += 1
        return {"tenants": tenants}


__all__ = ["RedisScheduler", "Refused"]
