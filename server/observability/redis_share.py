"""Each process's metrics snapshot in Redis, so any API process serves every process's.

Every ``interval_s`` a process writes its snapshot (``exposition.snapshot``) to
``{prefix}:metrics:proc:{process}`` with a TTL of a few intervals, and adds its name to
the set ``{prefix}:metrics:procs``. A scrape reads the set and the snapshots; a name
whose snapshot expired (its process stopped or died) leaves the set. Redis's own
expiry decides what is stale, so the machines' clocks need not agree.

Best effort: a write that fails (Redis away) is skipped, not retried, and the next one
carries the counts anyway (they are totals, not increments).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from .exposition import snapshot
from .metrics import Metrics

log = logging.getLogger(__name__)


class RedisMetricsShare:
    """Publishes this process's snapshot; reads the others' (``peers``)."""

    def __init__(self, ops: Any, metrics: Metrics, *, prefix: str, interval_s: float) -> None:
        self._ops = ops
        self.metrics = metrics
        self.interval_s = interval_s
        self.ttl_ms = int((3 * interval_s + 2) * 1000)
        self.index_key = f"{prefix}:metrics:procs"
        self._prefix = prefix
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def key(self, process: str) -> str:
        return f"{self._prefix}:metrics:proc:{process}"

    async def __aenter__(self) -> RedisMetricsShare:
        await self.publish()  # seen at once, not one interval after start
        self._task = asyncio.create_task(self._publish_forever(), name="metrics-publisher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        # The last counts stay readable for the TTL: a scrape right after a worker stops
        # still sees the runs it ended.
        await self.publish()

    async def publish(self) -> None:
        payload = orjson.dumps(snapshot(self.metrics))
        try:
            async with self._ops.client.pipeline(transaction=False) as p:
                p.set(self.key(self.metrics.process), payload, px=self.ttl_ms)
                p.sadd(self.index_key, self.metrics.process)
                p.pexpire(self.index_key, self.ttl_ms)
                await p.execute()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - best effort, see the module docstring
            if not self._failing:
                log.warning("metrics snapshot not published (%s: %s); retrying every %gs",
                            type(exc).__name__, exc, self.interval_s)
            self._failing = True
            return
        if self._failing:
            log.info("metrics snapshots published again")
        self._failing = False

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.publish()

    async def peers(self) -> list[dict[str, Any]]:
        """The other live processes' snapshots."""
        client = self._ops.client
        names = sorted(n.decode() for n in await client.smembers(self.index_key))
        names = [n for n in names if n != self.metrics.process]
        if not names:
            return []
        raws = await client.mget([self.key(n) for n in names])
        gone = [n for n, raw in zip(names, raws) if raw is None]
        if gone:
            await client.srem(self.index_key, *gone)
        return [orjson.loads(raw) for raw in raws if raw is not None]
