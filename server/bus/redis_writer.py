"""A run's appends to Redis in batches: the append script and the per-run writer.

``RedisBus.emit``/``append`` hand a run's events to its ``RunWriter``; the writer sends
whatever is ready in one script call per batch (``RedisBus._write_batch`` runs it through
the backend's retry policy). Split out of ``redis.py``, which keeps the bus itself: logs,
reads, fan-out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..events import TERMINAL_STATES, Event, dumps
from .base import BackendUnavailable

if TYPE_CHECKING:
    from .redis import RedisBus

# One batch of a run's events in one round trip. KEYS: log stream, meta hash. ARGV: channel,
# maxlen, ttl ms after the end, ttl ms while live (refreshed by every append), '1' if an
# append may start a log that has no meta yet ('0' behind a run store, which starts them),
# writer id, batch token, '1' if the batch's last event is terminal, the writer's fencing
# token ('0': none), the last seq this writer saw the log reach ('0': none), the publish
# command (PUBLISH, or SPUBLISH on a cluster), then each event's JSON without its seq
# (ends in '"seq":').
#
# The seqs of a batch are contiguous (one script). A batch retried after a dropped reply is
# recognised by its writer's last token (meta field 'w:<writer>' = token:first seq): it is
# answered with the seqs it got the first time, never appended twice - whatever other
# writers (an API process ending a run, say) appended in between.
#
# Fences. A worker that executes a run holds a token from the meta's 'fence' (bumped by
# every execution, runs/lease.py): once a later execution bumped it, this one's batches are
# refused (FENCED) - a worker that lost its lease never appends again. And the log's seq
# never goes back: a meta below the last seq this writer saw means Redis forgot writes (a
# failover to a replica that had not caught up, a restart from an old snapshot). Appending
# would hand the same seqs to other events, so the log is declared lost instead (its meta
# goes, as if Redis had come back empty, and every reader and writer takes the log_lost path).
APPEND = """
local meta = KEYS[2]
local wfield = 'w:' .. ARGV[6]
local prev = redis.call('HGET', meta, wfield)
if prev then
  local sep = string.find(prev, ':', 1, true)
  if string.sub(prev, 1, sep - 1) == ARGV[7] then
    -- Written again (a no-op) so that a WAIT after this answer waits for the replicas to
    -- hold this writer's batch: WAIT counts the offset of the connection's last write.
    redis.call('HSET', meta, wfield, prev)
    return tonumber(string.sub(prev, sep + 1))
  end
end
if ARGV[5] ~= '1' and redis.call('EXISTS', meta) == 0 then
  return redis.error_reply('LOGLOST')
end
if ARGV[9] ~= '0' and tonumber(redis.call('HGET', meta, 'fence') or '0') > tonumber(ARGV[9]) then
  return redis.error_reply('FENCED')
end
if tonumber(redis.call('HGET', meta, 'seq') or '0') < tonumber(ARGV[10]) then
  redis.call('DEL', meta)
  return redis.error_reply('LOGLOST went back')
end
if redis.call('HGET', meta, 'ended') == '1' then
  return redis.error_reply('LOGCLOSED')
end
local n = #ARGV - 11
local last = redis.call('HINCRBY', meta, 'seq', n)
local first = last - n + 1
local payloads = {}
for i = 1, n do
  local seq = first + i - 1
  local payload = ARGV[11 + i] .. seq .. '}'
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', payload)
  payloads[i] = payload
end
redis.call('HSET', meta, wfield, ARGV[7] .. ':' .. first)
local ttl = ARGV[4]
if ARGV[8] == '1' then
  redis.call('HSET', meta, 'ended', '1')
  ttl = ARGV[3]
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', meta, ttl)
-- One message per batch: the events' JSON, one per line (JSON never holds a raw newline).
redis.call(ARGV[11], ARGV[1], table.concat(payloads, '\\n'))
return first
"""

# A batch is cut at this many events or bytes (a script's arguments stay small enough that
# one slow batch never holds Redis for long), and ends after a terminal event.
BATCH_MAX_EVENTS = 256
BATCH_MAX_BYTES = 512 * 1024
# emit() waits once this many of a run's events wait to be written: a graph faster than
# Redis slows down instead of filling memory.
PENDING_MAX = 4096


class RunWriter:
    """One run's appends in this process, in order, batched: while one batch is in flight
    the next ones gather, and go together in the next round trip.

    Owned by the bus (closed with it); its task ends when nothing is pending and starts
    again with the next event, so an idle run holds no task.
    """

    __slots__ = ("bus", "run_id", "pending", "task", "error", "failed_at", "_idle")

    def __init__(self, bus: RedisBus, run_id: str) -> None:
        self.bus = bus
        self.run_id = run_id
        # (event body without its seq, ns, agent, data, ts, future or None)
        self.pending: list[tuple[bytes, str, str, dict[str, Any], float, asyncio.Future[Event] | None]] = []
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None  # a failed batch's, until someone is told
        self.failed_at: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def put(self, ns: str, agent: str, data: dict[str, Any], *, wait: bool) -> Event | None:
        self._raise_failure()
        ts = time.time()
        body = dumps({"run_id": self.run_id, "ns": ns, "agent": agent, "data": data, "ts": ts})
        fut: asyncio.Future[Event] | None = asyncio.get_running_loop().create_future() if wait else None
        self.pending.append((body[:-1] + b',"seq":', ns, agent, data, ts, fut))
        self._idle.clear()
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"redis-append-{self.run_id}")
        return await fut if fut is not None else None

    async def idle(self) -> None:
        await self._idle.wait()

    async def drained(self) -> None:
        """Wait until nothing of this run's is pending (or in flight); raise its failure."""
        await self._idle.wait()
        self._raise_failure()

    def _raise_failure(self) -> None:
        """Tell the failure to the first caller that asks, once: the run stops there, and
        whoever writes for it next (its ending, an attempt that resumes it after Redis came
        back) starts a fresh writer that asks Redis again."""
        exc = self.error
        if exc is None:
            return
        self.error = None
        if self.bus._writers.get(self.run_id) is self:
            del self.bus._writers[self.run_id]
        raise exc

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _take(self) -> tuple[list[tuple[Any, ...]], bool]:
        batch: list[tuple[Any, ...]] = []
        size = 0
        terminal = False
        for item in self.pending:
            if len(batch) >= BATCH_MAX_EVENTS or (batch and size + len(item[0]) > BATCH_MAX_BYTES):
                break
            batch.append(item)
            size += len(item[0])
            if item[1] == "STATUS" and item[3].get("state") in TERMINAL_STATES:
                terminal = True
                break  # nothing rides after a run's end in the same script
        del self.pending[:len(batch)]
        return batch, terminal

    async def _run(self) -> None:
        bus = self.bus
        try:
            while self.pending:
                batch, terminal = self._take()
                try:
                    first = await bus._write_batch(self.run_id, [b[0] for b in batch], terminal,
                                                   uuid.uuid4().hex)
                except BaseException as exc:
                    # This batch and everything after it fail: a later event must never land
                    # in the log ahead of (or without) an earlier one.
                    failed, self.pending = batch + self.pending, []
                    if not isinstance(exc, asyncio.CancelledError):
                        self.error = exc
                        self.failed_at = time.monotonic()
                    for item in failed:
                        if item[5] is not None and not item[5].done():
                            item[5].set_exception(exc if not isinstance(exc, asyncio.CancelledError)
                                                  else BackendUnavailable("the bus closed"))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    return
                for i, (_, ns, agent, data, ts, fut) in enumerate(batch):
                    if bus.metrics is not None:
                        bus.metrics.published(ns)
                    if fut is not None and not fut.done():
                        fut.set_result(Event(self.run_id, first + i, ns, agent, data, ts))
        finally:
            self.task = None
            self._idle.set()
            if self.error is None and not self.pending and bus._writers.get(self.run_id) is self:
                # Idle: forget the run here (a later event makes a new writer); a failed
                # writer stays, so the run's next emit, append or flush hears why.
                del bus._writers[self.run_id]
