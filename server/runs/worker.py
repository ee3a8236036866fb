"""Runs over Redis: the queue is a Stream with a consumer group, workers pull from it.

A worker keeps the pending entries of the runs it executes fresh (XCLAIM to itself,
its heartbeat). When a worker dies, its entries go idle; after the lease any other
worker's reaper takes them over with XAUTOCLAIM and asks the lifecycle what the run
becomes (run it, resume it from its checkpoint, or fail it as lost).

When Redis comes back empty, the runs in flight are gone with it: the worker stops the
ones it executes whose log vanished (``LOG_LOST_REASON``; nothing more is written for
them), and carries on with new runs (the queue's group is re-created on NOGROUP).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any, Awaitable, Callable

import orjson
from redis.exceptions import ResponseError

from ..backoff import Backoff
from ..bus.base import BackendUnavailable, ControlBus, LogLost
from ..redis_ops import TRANSIENT, RedisOps
from .executor import Executor
from .lifecycle import LOG_LOST_REASON, SHUTDOWN_REASON, Dispatch, Lifecycle, RunHandle
from .store import NO_ANSWER, RunStore

log = logging.getLogger(__name__)

GROUP = "workers"
CONTROL = "workers"


def _answer(fields: dict[bytes, bytes]) -> Any:
    raw = fields.get(b"answer")
    return NO_ANSWER if raw is None else orjson.loads(raw)


class RedisQueue:
    """The API side: enqueue runs, ask workers to cancel, report depth."""

    def __init__(self, ops: RedisOps, bus: ControlBus, *, prefix: str) -> None:
        self.ops = ops
        self.bus = bus
        self.stream = f"{prefix}:queue"

    async def ensure_group(self) -> None:
        try:
            await self.ops.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, run_id: str, answer: Any = NO_ANSWER) -> None:
        fields = {"run_id": run_id}
        if answer is not NO_ANSWER:
            fields["answer"] = orjson.dumps(answer)
        await self.ops.call(lambda: self.ops.client.xadd(self.stream, fields))

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Tell every worker; the one that owns the run cancels it."""
        return await self.bus.publish_control(CONTROL, {"cancel": run_id, "reason": reason}) > 0

    async def depth(self) -> int:
        """Entries not yet handed to any worker (the group's lag)."""
        try:
            groups = await self.ops.call(lambda: self.ops.client.xinfo_groups(self.stream))
        except ResponseError:
            return 0
        for g in groups:
            if g.get("name") in (GROUP, GROUP.encode()):
                lag = g.get("lag")
                return int(lag) if lag is not None else int(g.get("pending", 0))
        return 0


class Worker:
    """Pulls runs from the queue stream, at most ``concurrency`` at a time."""

    def __init__(self, *, queue: RedisQueue, bus: ControlBus, store: RunStore, executor: Executor,
                 concurrency: int, lease_s: float, lifecycle: Lifecycle | None = None,
                 name: str | None = None) -> None:
        self.queue = queue
        self.redis = queue.ops.client
        self.bus = bus
        self.store = store
        self.executor = executor
        self.lifecycle = lifecycle or executor.lifecycle
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._running: dict[str, tuple[RunHandle, str]] = {}  # run id -> (handle, entry id)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot = asyncio.Event()
        self._stopping = False

    async def __aenter__(self) -> Worker:
        backoff = Backoff(first=0.2, cap=5.0)
        while True:  # a worker started while Redis is away waits for it
            try:
                await self.queue.ensure_group()
                # Join visibly now (XREADGROUP would only register us on our first entry).
                await self.redis.xgroup_createconsumer(self.queue.stream, GROUP, self.name)
                break
            except TRANSIENT as exc:
                log.warning("worker %s: Redis unreachable (%s); retrying in %.1fs", self.name, exc,
                            backoff.next_delay)
                await backoff.wait()
        await self.bus.on_control(CONTROL, self._on_control)
        self.queue.ops.on_data_lost(self._on_data_lost)
        loops = ((self._consume(), "consume"),
                 (self._periodic(self.lease_s / 4, "heartbeat", self._heartbeat), "heartbeat"),
                 (self._periodic(self.lease_s / 3, "reaper", self._reap), "reap"))
        for coro, label in loops:
            task = asyncio.create_task(coro, name=f"worker-{label}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("worker %s started (concurrency %d, lease %.1fs)", self.name, self.concurrency, self.lease_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [h.task for h, _ in self._running.values() if h.cancel(SHUTDOWN_REASON)]
        if running:
            await asyncio.wait([t for t in running if t is not None], timeout=5)

    def active(self) -> int:
        return len(self._running)

    async def _on_data_lost(self) -> None:
        """Redis lost its data: stop the runs executing here whose log went with it. A run
        started since Redis came back has its log, and goes on."""
        for run_id, (handle, _msg_id) in list(self._running.items()):
            if await self.bus.bounds(run_id) is None:
                handle.cancel(LOG_LOST_REASON)

    def _on_control(self, msg: dict[str, Any]) -> None:
        run_id = msg.get("cancel")
        entry = self._running.get(run_id) if isinstance(run_id, str) else None
        if entry is not None:
            entry[0].cancel(str(msg.get("reason") or "cancelled"))

    async def _consume(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        while True:
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                resp = await self.redis.xreadgroup(GROUP, self.name, {self.queue.stream: ">"},
                                                   count=free, block=1000)
                backoff.reset()
            except TRANSIENT as exc:
                log.warning("worker %s: queue read failed (%s); retrying", self.name, exc)
                await backoff.wait()
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: recreate and carry on
                    self.queue.ops.reconnected()  # and have the epoch check say so
                    try:
                        await self.queue.ensure_group()
                    except TRANSIENT:
                        await backoff.wait()
                    continue
                raise
            for _stream, entries in resp or ():
                for msg_id, fields in entries:
                    run_id = fields[b"run_id"].decode()
                    self._start(msg_id.decode(), Dispatch(run_id, answer=_answer(fields)))

    def _start(self, msg_id: str, dispatch: Dispatch) -> None:
        handle = RunHandle(dispatch.run_id)
        self._running[dispatch.run_id] = (handle, msg_id)
        handle.start(self._execute(msg_id, dispatch, handle))

    async def _execute(self, msg_id: str, dispatch: Dispatch, handle: RunHandle) -> None:
        run_id = dispatch.run_id
        try:
            rec = await self.store.get(run_id)
            if rec is not None and rec.status == dispatch.from_status:
                await self.executor.run(rec, handle, worker=self.name, recover=dispatch.recover,
                                        answer=dispatch.answer)
        except asyncio.CancelledError:
            if self._stopping and self.executor.recoverable:
                # Left running on purpose: its entry stays pending, and after the lease
                # another worker claims and recovers it.
                self._release(run_id)
                return
        except LogLost as exc:  # its record is there but not whole, or its log vanished
            log.error("worker %s: run %s not executed (log_lost): %s", self.name, run_id, exc.why)
        except BackendUnavailable as exc:
            # Redis stayed away past the outage allowance: the run cannot even record its
            # end. Its entry stays pending; once Redis is back and the lease has run out,
            # a worker recovers it from its checkpoint (attempts permitting).
            log.error("worker %s: run %s stopped, Redis unreachable (%s); it is recovered later",
                      self.name, run_id, exc)
            self._release(run_id)
            return
        except Exception:
            log.exception("worker %s: run %s crashed the executor", self.name, run_id)
        self._release(run_id)
        await self._done(msg_id)

    def _release(self, run_id: str) -> None:
        self._running.pop(run_id, None)
        self._slot.set()

    async def _done(self, msg_id: str) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as p:
                p.xack(self.queue.stream, GROUP, msg_id)
                p.xdel(self.queue.stream, msg_id)
                await p.execute()
        except TRANSIENT:
            log.warning("worker %s: could not ack %s; the reaper will see it as done", self.name, msg_id)

    async def _periodic(self, period: float, label: str, tick: Callable[[], Awaitable[None]]) -> None:
        """``tick`` every ``period``. After a Redis failure it is retried sooner (backing off
        up to the period), so a worker whose Redis came back proves it is alive quickly."""
        backoff = Backoff(first=min(0.1, period), cap=period)
        delay = period
        while True:
            await asyncio.sleep(delay)
            try:
                await tick()
            except (*TRANSIENT, BackendUnavailable) as exc:
                delay = backoff.step()
                log.warning("worker %s: %s failed (%s); retrying in %.1fs", self.name, label, exc, delay)
            except Exception:  # a bug must not stop the heartbeat or the reaper for good
                log.exception("worker %s: %s failed", self.name, label)
                delay = period
            else:
                backoff.reset()
                delay = period

    async def _heartbeat(self) -> None:
        """Keep our pending entries' idle time low: proof of life, per run."""
        ids = [m for _, m in self._running.values()]
        if ids:
            try:
                await self.redis.xclaim(self.queue.stream, GROUP, self.name, 0, ids, justid=True)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The queue vanished: Redis lost its data. The epoch check says so and
                # stops the runs that went with it; the consumer re-creates the group.
                self.queue.ops.reconnected()

    async def _reap(self) -> None:
        """Take over entries whose worker stopped heartbeating for longer than the lease."""
        try:
            _next, claimed, *_ = await self.redis.xautoclaim(
                self.queue.stream, GROUP, self.name, int(self.lease_s * 1000), "0-0", count=20)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return  # Redis restarted empty; the consumer recreates the group
            raise
        for msg_id, fields in claimed:
            mid = msg_id.decode()
            if not fields:  # deleted meanwhile
                await self._done(mid)
                continue
            run_id = fields[b"run_id"].decode()
            if run_id in self._running:
                continue
            try:
                await self._take_over(mid, run_id, _answer(fields))
            except LogLost as exc:  # nothing left to recover
                log.error("worker %s: run %s not taken over (log_lost): %s", self.name, run_id, exc.why)
                await self._done(mid)
            except (*TRANSIENT, BackendUnavailable):
                raise  # Redis is away: the next round retries (the entry stays claimable)
            except Exception:
                log.exception("worker %s: taking over run %s failed", self.name, run_id)

    async def _take_over(self, msg_id: str, run_id: str, answer: Any = NO_ANSWER) -> None:
        """An entry whose worker died: the lifecycle decides what its run becomes."""
        rec = await self.store.get(run_id)
        lost_because = (f"worker {rec.worker if rec and rec.worker else '?'} stopped heartbeating "
                        f"for more than {self.lease_s:g}s")
        dispatch = await self.lifecycle.recover(rec, lost_because=lost_because, answer=answer)
        if dispatch is None:
            await self._done(msg_id)
        else:
            self._start(msg_id, dispatch)
