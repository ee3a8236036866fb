"""Runs over Redis: the queue is a Stream with a consumer group, workers pull from it.

A worker keeps the pending entries of the runs it executes fresh (XCLAIM to itself,
its heartbeat). When a worker dies, its entries go idle; after the lease any other
worker's reaper takes them over with XAUTOCLAIM and recovers the run — today by
ending it ``failed`` with a clear error; ``recover`` is the seam where resuming from
a checkpoint belongs.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import os
import socket
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..bus.base import BackendUnavailable
from ..bus.redis import TRANSIENT, RedisBus
from ..events import ERROR, STATUS
from .executor import SHUTDOWN_REASON, Executor
from .store import (FAILED, INTERRUPTED, NO_ANSWER, QUEUED, RUNNING, InvalidTransition, RunRecord,
                    RunStore)

log = logging.getLogger(__name__)

GROUP = "workers"
CONTROL = "workers"


def _answer(fields: dict[bytes, bytes]) -> Any:
    raw = fields.get(b"answer")
    return NO_ANSWER if raw is None else orjson.loads(raw)


class RedisQueue:
    """The API side: enqueue runs, ask workers to cancel, report depth."""

    def __init__(self, redis: Redis, bus: RedisBus, *, prefix: str) -> None:
        self.redis = redis
        self.bus = bus
        self.stream = f"{prefix}:queue"

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, run_id: str, answer: Any = NO_ANSWER) -> None:
        fields = {"run_id": run_id}
        if answer is not NO_ANSWER:
            fields["answer"] = orjson.dumps(answer)
        await self.bus.with_retry(lambda: self.redis.xadd(self.stream, fields))

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Tell every worker; the one that owns the run cancels it."""
        return await self.bus.publish_control(CONTROL, {"cancel": run_id, "reason": reason}) > 0

    async def depth(self) -> int:
        """Entries not yet handed to any worker (the group's lag)."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError:
            return 0
        for g in groups:
            if g.get("name") in (GROUP, GROUP.encode()):
                lag = g.get("lag")
                return int(lag) if lag is not None else int(g.get("pending", 0))
        return 0


class Worker:
    """Pulls runs from the queue stream, at most ``concurrency`` at a time."""

    def __init__(self, *, queue: RedisQueue, bus: RedisBus, store: RunStore, executor: Executor,
                 concurrency: int, lease_s: float, max_attempts: int = 3,
                 name: str | None = None) -> None:
        self.max_attempts = max_attempts
        self.queue = queue
        self.redis = queue.redis
        self.bus = bus
        self.store = store
        self.executor = executor
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._running: dict[str, tuple[asyncio.Task[None], str]] = {}
        self._reasons: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot = asyncio.Event()
        self._stopping = False

    async def __aenter__(self) -> Worker:
        delay = 0.2
        while True:  # a worker started while Redis is away waits for it
            try:
                await self.queue.ensure_group()
                # Join visibly now (XREADGROUP would only register us on our first entry).
                await self.redis.xgroup_createconsumer(self.queue.stream, GROUP, self.name)
                break
            except TRANSIENT as exc:
                log.warning("worker %s: Redis unreachable (%s); retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self.bus.on_control(CONTROL, self._on_control)
        for coro, label in ((self._consume(), "consume"), (self._heartbeat(), "heartbeat"),
                            (self._reap(), "reap")):
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
        running = [t for t, _ in self._running.values()]
        for run_id, (task, _) in list(self._running.items()):
            self._reasons[run_id] = SHUTDOWN_REASON
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=5)

    def active(self) -> int:
        return len(self._running)

    def _on_control(self, msg: dict[str, Any]) -> None:
        run_id = msg.get("cancel")
        entry = self._running.get(run_id) if isinstance(run_id, str) else None
        if entry is not None:
            self._reasons[run_id] = str(msg.get("reason") or "cancelled")
            entry[0].cancel()

    async def _consume(self) -> None:
        delay = 0.1
        while True:
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                resp = await self.redis.xreadgroup(GROUP, self.name, {self.queue.stream: ">"},
                                                   count=free, block=1000)
                delay = 0.1
            except TRANSIENT as exc:
                log.warning("worker %s: queue read failed (%s); retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: recreate and carry on
                    try:
                        await self.queue.ensure_group()
                    except TRANSIENT:
                        await asyncio.sleep(delay)
                    continue
                raise
            for _stream, entries in resp or ():
                for msg_id, fields in entries:
                    self._start(msg_id.decode(), fields[b"run_id"].decode(), answer=_answer(fields))

    def _start(self, msg_id: str, run_id: str, *, resume: bool = False, answer: Any = NO_ANSWER) -> None:
        task = asyncio.create_task(self._execute(msg_id, run_id, resume, answer), name=f"run-{run_id}")
        self._running[run_id] = (task, msg_id)

    async def _execute(self, msg_id: str, run_id: str, resume: bool, answer: Any) -> None:
        wanted = RUNNING if resume else QUEUED if answer is NO_ANSWER else INTERRUPTED
        try:
            rec = await self.store.get(run_id)
            if rec is not None and rec.status == wanted:
                await self.executor.run(rec, self._reasons, worker=self.name, resume=resume,
                                        answer=answer)
        except asyncio.CancelledError:
            if self._stopping and self.executor.resumable:
                # Left running on purpose: its entry stays pending, and after the lease
                # another worker claims and resumes it.
                self._running.pop(run_id, None)
                return
        except BackendUnavailable as exc:
            # Redis stayed away past the outage allowance: the run cannot even record its
            # failure. Its entry stays pending; once Redis is back and the lease has run
            # out, a worker resumes it from its checkpoint (attempts permitting).
            log.error("worker %s: run %s stopped, Redis unreachable (%s); it resumes later",
                      self.name, run_id, exc)
            self._running.pop(run_id, None)
            self._slot.set()
            return
        except Exception:
            log.exception("worker %s: run %s crashed the executor", self.name, run_id)
        finally:
            self._running.pop(run_id, None)
            self._slot.set()
        await self._done(msg_id)

    async def _done(self, msg_id: str) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as p:
                p.xack(self.queue.stream, GROUP, msg_id)
                p.xdel(self.queue.stream, msg_id)
                await p.execute()
        except TRANSIENT:
            log.warning("worker %s: could not ack %s; the reaper will see it as done", self.name, msg_id)

    async def _heartbeat(self) -> None:
        """Keep our pending entries' idle time low: proof of life, per run."""
        while True:
            await asyncio.sleep(self.lease_s / 4)
            ids = [m for _, m in self._running.values()]
            if not ids:
                continue
            try:
                await self.redis.xclaim(self.queue.stream, GROUP, self.name, 0, ids, justid=True)
            except TRANSIENT as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.name, exc)

    async def _reap(self) -> None:
        """Take over entries whose worker stopped heartbeating for longer than the lease."""
        lease_ms = int(self.lease_s * 1000)
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                _next, claimed, *_ = await self.redis.xautoclaim(
                    self.queue.stream, GROUP, self.name, lease_ms, "0-0", count=20)
            except TRANSIENT as exc:
                log.warning("worker %s: reaper failed (%s)", self.name, exc)
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    continue
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
                    await self.recover(mid, run_id, _answer(fields))
                except Exception:
                    log.exception("worker %s: recovering run %s failed", self.name, run_id)

    async def recover(self, msg_id: str, run_id: str, answer: Any = NO_ANSWER) -> None:
        """A run whose worker died. Queued: run it here. Running: resume it from its last
        checkpoint here, unless it has used up its attempts."""
        rec = await self.store.get(run_id)
        if rec is None or rec.terminal:
            await self._done(msg_id)
            return
        if rec.status == QUEUED or (rec.status == INTERRUPTED and answer is not NO_ANSWER):
            self._start(msg_id, run_id, answer=answer)  # never started by the worker that died
            return
        if rec.status == RUNNING:
            if rec.attempt < self.max_attempts:
                log.warning("run %s: worker %s is gone; resuming it here (attempt %d)",
                            run_id, rec.worker, rec.attempt + 1)
                self._start(msg_id, run_id, resume=True)
                return
            await self._fail_lost(rec)
        await self._done(msg_id)

    async def _fail_lost(self, rec: RunRecord) -> None:
        message = (f"worker {rec.worker or '?'} stopped heartbeating for more than "
                   f"{self.lease_s:g}s while executing this run, and the run has used all "
                   f"{self.max_attempts} attempts; giving up")
        error = {"code": "worker_lost", "message": message}
        try:
            rec = await self.store.transition(rec.run_id, FAILED, error=error,
                                              ended_at=time.time())
        except InvalidTransition:
            return
        log.warning("run %s: %s", rec.run_id, message)
        await self.bus.append(rec.run_id, ERROR, "server", error)
        await self.bus.append(rec.run_id, STATUS, "server", {"state": FAILED, "error": error})
