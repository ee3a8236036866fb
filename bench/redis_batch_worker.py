"""Experiment, not the server: ``python -m server worker`` with batched Redis appends.

    .venv/bin/python -m bench.redis_batch_worker worker --agent firehose=bench/graphs.py:firehose

Used by ``bench.redis_fanout --targets ...,redis_batched`` to A/B a suggested change to
``server/bus/redis.py``; the server's files are not touched, only this process's copy
of ``RedisBus`` is patched. ``append`` queues the event and returns at once (the returned
Event carries seq 0: the executor does not use it while streaming); one task per run sends
everything queued so far in ONE EVALSHA (the script loops: HINCRBY, XADD, PUBLISH per
event, the expiry once per batch); ``flush`` waits for every queue to drain. The events
of a batch reach the API processes in one burst, so each SSE subscriber wakes, and
writes, once per batch instead of once per event (what the in-process memory bus does).

Not production-ready as is: no idempotency token (a retried batch after a timeout could
append twice), and nothing waits for ``flush`` before checkpoints or before the run's
record is finished (a real version would hook ``flush`` into ``log_barrier`` as the
journaled memory bus does, and flush at the end of ``Executor.run``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from server.bus import redis as redis_bus
from server.events import Event, dumps

# KEYS: log stream, meta hash. ARGV: channel, maxlen, ttl ms after the end, ttl ms while
# live, n, then n pairs (event JSON without its seq, ending in '"seq":'; terminal flag).
BATCH_APPEND = """
local meta = KEYS[2]
if redis.call('HGET', meta, 'ended') == '1' then
  return redis.error_reply('LOGCLOSED')
end
local n = tonumber(ARGV[5])
local ttl = ARGV[4]
local seq = 0
for i = 1, n do
  seq = redis.call('HINCRBY', meta, 'seq', 1)
  local payload = ARGV[4 + 2 * i] .. seq .. '}'
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', payload)
  if ARGV[5 + 2 * i] == '1' then
    redis.call('HSET', meta, 'ended', '1')
    ttl = ARGV[3]
  end
  redis.call('PUBLISH', ARGV[1], payload)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', meta, ttl)
return seq
"""


def _state(bus: Any) -> tuple[dict[str, list[tuple[bytes, int]]], dict[str, asyncio.Task[None]], Any]:
    if not hasattr(bus, "_batch_queues"):
        bus._batch_queues = {}
        bus._batch_tasks = {}
        bus._batch_script = bus.redis.register_script(BATCH_APPEND)
    return bus._batch_queues, bus._batch_tasks, bus._batch_script


async def append(self: Any, run_id: str, ns: str, agent: str, data: dict[str, Any]) -> Event:
    ts = time.time()
    body = dumps({"run_id": run_id, "ns": ns, "agent": agent, "data": data, "ts": ts})
    head = body[:-1] + b',"seq":'
    terminal = ns == "STATUS" and data.get("state") in ("succeeded", "failed", "cancelled")
    queues, tasks, _ = _state(self)
    queues.setdefault(run_id, []).append((head, int(terminal)))
    if run_id not in tasks:
        tasks[run_id] = asyncio.create_task(_drain(self, run_id), name=f"batch-append-{run_id}")
    return Event(run_id, 0, ns, agent, data, ts)


async def _drain(self: Any, run_id: str) -> None:
    queues, tasks, script = _state(self)
    try:
        while queues.get(run_id):
            batch, queues[run_id] = queues[run_id], []
            keys = [self.log_key(run_id), self.meta_key(run_id)]
            args: list[Any] = [self.channel(run_id), self.max_events, self.ttl_ms, self.live_ttl_ms, len(batch)]
            for head, terminal in batch:
                args += [head, terminal]
            await self.with_retry(lambda: script(keys=keys, args=args))
    finally:
        tasks.pop(run_id, None)
        queues.pop(run_id, None)


async def flush(self: Any) -> None:
    _, tasks, _ = _state(self)
    while tasks:
        await asyncio.gather(*list(tasks.values()), return_exceptions=True)


def main() -> int:
    redis_bus.RedisBus.append = append  # type: ignore[method-assign]
    redis_bus.RedisBus.flush = flush  # type: ignore[method-assign]
    from server.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
