"""Runs over Redis, the API side: the queue is a Stream with a consumer group (``worker.py``
is the side that pulls from it).

The API enqueues through the fair scheduler (``redis_sched.py``), wakes the workers with a
control message, asks them to cancel a run, and reads which agents have a live worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError

from .. import redis_keys
from ..bus.redis import RedisBus
from ..redis_ops import RedisOps
from .fair import TenantPolicy
from .redis_sched import RedisScheduler
from .store import NO_ANSWER, RunRecord

log = logging.getLogger(__name__)

GROUP = "workers"  # the queue stream's consumer group
CONTROL = "workers"  # the control channel workers take cancels on
WAKE = "sched"  # the control channel that wakes workers with free slots


def answer_of(fields: dict[bytes, bytes]) -> Any:
    """The resume answer a queue entry carries (NO_ANSWER: a fresh start)."""
    raw = fields.get(b"answer")
    return NO_ANSWER if raw is None else orjson.loads(raw)


class RedisQueue:
    """The API side: enqueue runs (fairly: ``redis_sched.py``), ask workers to cancel,
    report depth, positions and which agents have a live worker."""

    def __init__(self, ops: RedisOps, bus: RedisBus, *, prefix: str, policy: TenantPolicy | None = None) -> None:
        self.ops = ops
        self.bus = bus
        self.prefix = prefix
        self.stream = redis_keys.queue(prefix)  # on the control plane's slot, with the scheduler's keys
        self.workers_key = redis_keys.workers(prefix)
        self.scheduler = RedisScheduler(ops, prefix=prefix, policy=policy or TenantPolicy())

    async def ensure_group(self) -> None:
        try:
            await self.ops.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def admit(self, tenant: str, run_id: str = "") -> None:
        await self.scheduler.admit(tenant, run_id)

    async def unreserve(self, tenant: str, run_id: str) -> None:
        await self.scheduler.unreserve(tenant, run_id)

    async def enqueue(self, rec: RunRecord, answer: Any = NO_ANSWER) -> None:
        await self.scheduler.enqueue(rec.run_id, rec.tenant, rec.agent,
                                     None if answer is NO_ANSWER else orjson.dumps(answer))
        await self.wake_workers()

    async def wake_workers(self) -> None:
        """A run is waiting or a slot came free: workers with room claim now, not at their next poll."""
        try:
            await self.bus.publish_control(WAKE, {"wake": 1})
        except Exception:  # noqa: BLE001 - workers also poll; a lost wake only costs latency
            log.debug("wake-up not published", exc_info=True)

    async def withdraw(self, run_id: str) -> bool:
        return await self.scheduler.withdraw(run_id)

    async def _live_workers(self) -> list[list[str]]:
        """The agent lists of the workers whose announcement has not run out ("*": all);
        the entries of workers that died without saying so are dropped on the way."""
        rows = await self.ops.call(lambda: self.ops.client.hgetall(self.workers_key))
        now = time.time()
        live, dead = [], []
        for name, raw in rows.items():
            info = orjson.loads(raw)
            if info.get("until", 0) > now:
                live.append(info.get("agents") or ["*"])
            elif info.get("until", 0) < now - 3600:
                dead.append(name)
        if dead:
            await self.ops.call(lambda: self.ops.client.hdel(self.workers_key, *dead))
        return live

    async def live_agents(self) -> set[str]:
        """The agents some live worker takes ("*": a worker that takes them all)."""
        return {agent for agents in await self._live_workers() for agent in agents}

    async def unserved(self, agents: list[str]) -> list[str]:
        """The agents no live worker takes (their runs wait queued until one comes)."""
        live = await self.live_agents()
        return [] if "*" in live else [a for a in agents if a not in live]

    async def workers(self) -> dict[str, int]:
        """Live workers per agent ("*" counts workers that take every agent)."""
        out: dict[str, int] = {}
        for agents in await self._live_workers():
            for agent in agents:
                out[agent] = out.get(agent, 0) + 1
        return out

    async def position(self, rec: RunRecord) -> tuple[int, str] | None:
        return await self.scheduler.position(rec.run_id, rec.tenant, rec.agent, await self.live_agents())

    async def overview(self) -> dict[str, Any]:
        view = await self.scheduler.overview()
        view["workers"] = await self.workers()
        return view

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Tell every worker; the one that owns the run cancels it."""
        return await self.bus.publish_control(CONTROL, {"cancel": run_id, "reason": reason}) > 0

    async def depth(self) -> int:
        """Runs waiting for a worker (every tenant's)."""
        return await self.scheduler.depth()
