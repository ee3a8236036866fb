"""Runs over Redis: the queue is a Stream with a consumer group, workers pull from it.

A worker keeps the pending entries of the runs it executes fresh (XCLAIM to itself,
its heartbeat), from a thread of its own so that a busy event loop cannot starve it
(``lease.py``). When a worker dies, its entries go idle; after the lease any other
worker's reaper takes them over with XAUTOCLAIM and asks the lifecycle what the run
becomes (run it, resume it from its checkpoint, or fail it as lost). A worker whose
renewal finds an entry taken over stops that run without writing anything more for it.

When Redis comes back empty, the runs in flight are gone with it: the worker stops the
ones it executes whose log vanished (``LOG_LOST_REASON``; nothing more is written for
them), and carries on with new runs (the queue's group is re-created on NOGROUP).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Awaitable, Callable

import orjson
from redis.exceptions import ResponseError

from ..backoff import Backoff
from ..bus.base import BackendUnavailable, Fenced, LogLost
from ..bus.redis import RedisBus, log_meta_key
from ..redis_ops import TRANSIENT
from .executor import Executor
from .lease import FENCE, LeaseKeeper, reap_period
from .lifecycle import LOG_LOST_REASON, SHUTDOWN_REASON, Dispatch, Lifecycle, RunHandle
from .redis_queue import CONTROL, GROUP, WAKE, RedisQueue, answer_of
from .store import NO_ANSWER, RunRecord, RunStore

log = logging.getLogger(__name__)

# A worker with free slots claims at least this often even if no wake-up reaches it.
CLAIM_POLL_S = 0.5
# While Redis stays away, a periodic task (the reaper, the loop tick) says so this often, not
# at every retry (twice a second with a short lease).
OUTAGE_LOG_EVERY_S = 60.0


class Worker:
    """Pulls runs from the queue stream, at most ``concurrency`` at a time."""

    def __init__(self, *, queue: RedisQueue, bus: RedisBus, store: RunStore, executor: Executor,
                 concurrency: int, lease_s: float, lifecycle: Lifecycle | None = None,
                 name: str | None = None, agents: tuple[str, ...] = (),
                 on_dispatch: Callable[[str, float], None] | None = None,
                 heartbeat_client: Any = None) -> None:
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
        # _running changes on the loop and is read by the lease thread: guarded (held only
        # for a dict operation, never across I/O).
        self._running_lock = threading.Lock()
        self.heartbeat_client = heartbeat_client  # synchronous, for the lease thread alone
        self._keeper: LeaseKeeper | None = None
        self._fence = queue.ops.register_script(FENCE)
        self._tasks: set[asyncio.Task[None]] = set()
        self.agents = agents  # the pool this worker serves; () = every agent
        self.on_dispatch = on_dispatch  # (tenant, seconds it waited): the metrics' queued time
        self._slot = asyncio.Event()
        self._wake = asyncio.Event()
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
        await self.bus.on_control(WAKE, lambda _msg: self._wake.set())
        self.queue.ops.on_data_lost(self._on_data_lost)
        await self._announce()
        self._keeper = LeaseKeeper(
            self.heartbeat_client, loop=asyncio.get_running_loop(), stream=self.queue.stream, group=GROUP,
            consumer=self.name, workers_key=self.queue.workers_key, announcement=self._announcement,
            lease_s=self.lease_s, entries=self._entries, on_lost=self._on_lost,
            on_nogroup=self.queue.ops.reconnected).start()
        loops = ((self._consume(), "consume"),
                 (self._periodic(self._keeper.period, "loop tick", self._tick), "tick"),
                 (self._periodic(reap_period(self.lease_s), "reaper", self._reap), "reap"))
        for coro, label in loops:
            task = asyncio.create_task(coro, name=f"worker-{label}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("worker %s started (concurrency %d, lease %.1fs, takeover within %.1fs, agents %s)",
                 self.name, self.concurrency, self.lease_s, self.lease_s + reap_period(self.lease_s),
                 ",".join(self.agents) or "all")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [h.task for h, _ in self._running.values() if h.cancel(SHUTDOWN_REASON)]
        if running:
            await asyncio.wait([t for t in running if t is not None], timeout=5)
        if self._keeper is not None:  # joined off the loop: its last round may be in flight
            await asyncio.to_thread(self._keeper.stop)
        try:
            await self.redis.hdel(self.queue.workers_key, self.name)
        except TRANSIENT:
            pass  # its entry expires by itself

    def _announcement(self) -> bytes:
        """Which agents this worker takes, until a little past its next heartbeat."""
        return orjson.dumps({"agents": list(self.agents) or ["*"], "until": time.time() + self.lease_s,
                             "concurrency": self.concurrency})

    async def _announce(self) -> None:
        await self.redis.hset(self.queue.workers_key, self.name, self._announcement())

    def _entries(self) -> list[str]:
        """The queue entries of the runs executing here (called from the lease thread)."""
        with self._running_lock:
            return [m for _, m in self._running.values()]

    def _on_lost(self, entry_ids: list[str]) -> None:
        """The lease thread found these entries taken over (this worker stalled past its
        lease): another worker executes those runs now. Stop them here without writing
        anything: SHUTDOWN_REASON is the cancel after which the executor leaves a run to
        whoever recovers it."""
        lost = set(entry_ids)
        for run_id, (handle, msg_id) in list(self._running.items()):
            if msg_id in lost and handle.cancel(SHUTDOWN_REASON):
                log.warning("worker %s: run %s was taken over by another worker (this one held "
                            "it past its %.1fs lease); stopping it here", self.name, run_id, self.lease_s)

    async def _tick(self) -> None:
        """Tell the lease thread the loop still runs (a hung loop's leases are let go)."""
        if self._keeper is not None:
            self._keeper.loop_tick()

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
                self._wake.clear()
                # The fair-share decision, in Redis, atomically for every worker (redis_sched.py).
                resp = await self.queue.scheduler.claim(self.queue.stream, GROUP, self.name, free,
                                                        ",".join(self.agents) or "*")
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
            claimed = 0
            for _stream, entries in resp or ():
                for msg_id, fields in entries:
                    run_id = fields[b"run_id"].decode()
                    self._start(msg_id.decode(), Dispatch(run_id, answer=answer_of(fields)))
                    claimed += 1
                    since = float(fields.get(b"since") or 0)
                    if self.on_dispatch is not None and since:
                        self.on_dispatch(fields.get(b"tenant", b"default").decode(), max(0.0, time.time() - since))
            if not claimed:
                try:  # nothing for us: until a wake-up (a run queued, a slot freed) or the poll
                    await asyncio.wait_for(self._wake.wait(), CLAIM_POLL_S)
                except asyncio.TimeoutError:
                    pass

    def _start(self, msg_id: str, dispatch: Dispatch) -> None:
        handle = RunHandle(dispatch.run_id)
        with self._running_lock:
            self._running[dispatch.run_id] = (handle, msg_id)
        handle.start(self._execute(msg_id, dispatch, handle))

    async def _execute(self, msg_id: str, dispatch: Dispatch, handle: RunHandle) -> None:
        run_id = dispatch.run_id
        started = time.monotonic()
        ended: RunRecord | None = None
        try:
            # The fence first, before anything of the run is read (its checkpoint above all):
            # from here on, a previous holder's writes carry a lower token.
            handle.fence = await self.queue.ops.call(
                lambda: self._fence(keys=[log_meta_key(self.queue.prefix, run_id)])) or None
            # Every batch of this execution carries it: once a later execution bumped the
            # fence, this one's appends are refused (Fenced) and it stops.
            self.bus.fence(run_id, handle.fence)
            rec = await self.store.get(run_id)
            if rec is not None and rec.status == dispatch.from_status:
                ended = await self.executor.run(rec, handle, worker=self.name, recover=dispatch.recover,
                                                answer=dispatch.answer)
        except asyncio.CancelledError:
            if self._stopping and self.executor.recoverable:
                # Left running on purpose: its entry stays pending, and after the lease
                # another worker claims and recovers it.
                self._release(run_id)
                return
        except Fenced:
            # Taken over while it ran (this worker's lease ran out): the entry is the new
            # owner's now, so it is neither acked nor ended here.
            log.warning("worker %s: run %s was taken over by another worker; this execution stopped",
                        self.name, run_id)
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
        await self._done(msg_id, run_id, time.monotonic() - started)
        # After the slot went back: released, the run takes no cancel any more (a cancel of a
        # run that has just ended would otherwise cut the release short), and the tenant's
        # next run does not wait for this clean-up.
        await self._drop_checkpoints(ended)

    async def _drop_checkpoints(self, rec: RunRecord | None) -> None:
        """A run of no LangGraph thread that ended: nothing reads its checkpoints any more
        (only a running run is resumed), so they leave Redis now instead of at their TTL
        (RAM, not disk). A thread's checkpoints are its state: they stay."""
        from .redis_checkpoints import RedisSaver

        saver = self.executor.checkpointer
        if rec is None or not rec.terminal or rec.thread_id is not None or not isinstance(saver, RedisSaver):
            return
        try:
            await saver.adelete_thread(rec.run_id)
        except (*TRANSIENT, BackendUnavailable):
            log.info("run %s: its checkpoints were not dropped (Redis away); they expire", rec.run_id)

    def _release(self, run_id: str) -> None:
        self.bus.fence(run_id, None)
        with self._running_lock:
            self._running.pop(run_id, None)
        self._slot.set()

    async def _done(self, msg_id: str, run_id: str, duration_s: float | None = None) -> None:
        """The run's execution is over (however it ended): ack its entry, give its slot back —
        unless this worker stalled past its lease and another took the run over meanwhile (a
        stale owner releasing the slot would let the tenant exceed its cap)."""
        try:
            done = await self.queue.scheduler.finish(run_id, duration_s, stream=self.queue.stream, group=GROUP,
                                                     entry_id=msg_id, consumer=self.name)
        except (*TRANSIENT, BackendUnavailable):
            log.warning("worker %s: run %s not acked nor its slot released (Redis away); the reaper "
                        "will see it", self.name, run_id)
            return
        if done > 0:
            await self.queue.wake_workers()  # its tenant may have been at its cap
        elif done < 0:
            log.warning("worker %s: run %s was taken over by another worker meanwhile; it finishes it",
                        self.name, run_id)

    async def _ack(self, msg_id: str) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as p:
                p.xack(self.queue.stream, GROUP, msg_id)
                p.xdel(self.queue.stream, msg_id)
                await p.execute()
        except TRANSIENT:
            log.warning("worker %s: could not ack %s", self.name, msg_id)

    async def _periodic(self, period: float, label: str, tick: Callable[[], Awaitable[None]]) -> None:
        """``tick`` every ``period``. After a Redis failure it is retried sooner (backing off
        up to the period), so a worker whose Redis came back proves it is alive quickly."""
        backoff = Backoff(first=min(0.1, period), cap=period)
        delay = period
        failing_since: float | None = None  # an outage is logged at its start, then once a minute
        warned_at = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await tick()
            except (*TRANSIENT, BackendUnavailable) as exc:
                delay = backoff.step()
                now = time.monotonic()
                if failing_since is None or now - warned_at >= OUTAGE_LOG_EVERY_S:
                    if failing_since is None:
                        failing_since = now
                    warned_at = now
                    log.warning("worker %s: %s failed for %.0fs (%s); retrying every %.1fs at most",
                                self.name, label, now - failing_since, exc, period)
                else:
                    log.debug("worker %s: %s failed (%s); retrying in %.1fs", self.name, label, exc, delay)
            except Exception:  # a bug must not stop the heartbeat or the reaper for good
                log.exception("worker %s: %s failed", self.name, label)
                delay = period
            else:
                if failing_since is not None:
                    log.warning("worker %s: %s works again after %.0fs", self.name, label,
                                time.monotonic() - failing_since)
                    failing_since = None
                backoff.reset()
                delay = period

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
                await self._ack(mid)
                continue
            run_id = fields[b"run_id"].decode()
            if run_id in self._running:
                continue
            try:
                await self._take_over(mid, run_id, answer_of(fields))
            except LogLost as exc:  # nothing left to recover
                log.error("worker %s: run %s not taken over (log_lost): %s", self.name, run_id, exc.why)
                await self._done(mid, run_id)
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
            await self._done(msg_id, run_id)  # it ended (or was failed as lost): its slot goes back
        else:
            self._start(msg_id, dispatch)  # the run goes on here, in the slot it already holds
