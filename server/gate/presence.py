"""Who is watching: is anyone, on any process, subscribed to a run or a context right now?

The delivery gate asks this when a run ends: a result that lands in an empty room goes
to its context's inbox. Every subscription (SSE, Socket.IO, the LangGraph protocol: they
all read through ``bus.subscribe``) enters the room of what it reads and leaves it when
it closes.

With Redis the rooms are sorted sets shared by every process: one member per watcher,
scored with the time it stops counting unless refreshed. Each process refreshes its own
watchers every ``refresh_s``, so a process that dies (no leave ever sent) stops counting
within ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..redis_ops import RedisOps

log = logging.getLogger(__name__)


class MemoryPresence:
    """One process: a counter per room."""

    def __init__(self) -> None:
        self._rooms: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._live: set[tuple[str, int]] = set()

    async def enter(self, room: str) -> tuple[str, int]:
        self._rooms[room] += 1
        token = (room, next(self._ids))
        self._live.add(token)
        return token

    def leave_soon(self, token: tuple[str, int]) -> None:
        """Leave now, without awaiting (callable from a clean-up being cancelled)."""
        if token not in self._live:
            return  # left already: never count another watcher out
        self._live.discard(token)
        self._rooms[token[0]] -= 1
        if self._rooms[token[0]] <= 0:
            del self._rooms[token[0]]

    async def leave(self, token: tuple[str, int]) -> None:
        if token not in self._live:
            return  # left already: never count another watcher out
        self._live.discard(token)
        room = token[0]
        self._rooms[room] -= 1
        if self._rooms[room] <= 0:
            del self._rooms[room]

    async def watched(self, room: str) -> bool:
        return self._rooms.get(room, 0) > 0

    async def aclose(self) -> None:
        return None


class RedisPresence:
    def __init__(self, ops: RedisOps, *, prefix: str, process: str, ttl_s: float = 30.0,
                 refresh_s: float = 10.0) -> None:
        self.ops = ops
        self.prefix = prefix
        self.process = process
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self._mine: dict[tuple[str, int], str] = {}  # token -> member
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._leaving: set[asyncio.Task[None]] = set()

    def key(self, room: str) -> str:
        return f"{self.prefix}:presence:{room}"

    async def __aenter__(self) -> RedisPresence:
        self._task = asyncio.create_task(self._refresh_forever(), name="presence-refresh")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def enter(self, room: str) -> tuple[str, int]:
        token = (room, next(self._ids))
        member = f"{self.process}:{token[1]}"
        self._mine[token] = member
        try:
            await self._put({room: [member]})
        except Exception:  # noqa: BLE001 - a watcher is never refused for this; the refresh retries
            log.debug("presence of %s not recorded yet", room, exc_info=True)
        except BaseException:
            # Cancelled (the client left while entering): nobody holds the token to leave
            # with, so leave here; the ZADD may have landed, and the refresh would keep it.
            self.leave_soon(token)
            raise
        return token

    def leave_soon(self, token: tuple[str, int]) -> None:
        """Leave without awaiting: the removal is a task this presence owns (a clean-up being
        cancelled cannot cut it short)."""
        if token not in self._mine:
            return
        task = asyncio.get_running_loop().create_task(self.leave(token), name="presence-leave")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def leave(self, token: tuple[str, int]) -> None:
        member = self._mine.pop(token, None)
        if member is None:
            return
        try:
            await self.ops.call(lambda: self.ops.client.zrem(self.key(token[0]), member))
        except Exception:  # noqa: BLE001 - it stops counting at its expiry anyway
            log.debug("presence leave of %s not recorded", token[0], exc_info=True)

    async def watched(self, room: str) -> bool:
        if self._leaving:  # this process's own leaves in flight land first
            await asyncio.gather(*list(self._leaving), return_exceptions=True)

        async def op() -> int:
            async with self.ops.client.pipeline(transaction=True) as p:
                p.zremrangebyscore(self.key(room), "-inf", time.time())
                p.zcard(self.key(room))
                _, count = await p.execute()
            return int(count)

        return await self.ops.call(op) > 0

    async def _put(self, rooms: dict[str, list[str]]) -> None:
        until = time.time() + self.ttl_s

        async def op() -> None:
            async with self.ops.client.pipeline(transaction=False) as p:
                for room, members in rooms.items():
                    p.zadd(self.key(room), {m: until for m in members})
                    p.expire(self.key(room), int(self.ttl_s) + 5)
                await p.execute()

        await self.ops.call(op)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            rooms: dict[str, list[str]] = {}
            for (room, _), member in list(self._mine.items()):
                rooms.setdefault(room, []).append(member)
            if rooms:
                try:
                    await self._put(rooms)
                except Exception:  # noqa: BLE001 - next round
                    log.debug("presence refresh failed", exc_info=True)
                await self._forget_left(rooms)

    async def _forget_left(self, rooms: dict[str, list[str]]) -> None:
        """A watcher that left while the refresh was on its way: its ZREM may have landed
        before the refresh's ZADD put it back for another ``ttl_s``. Remove it again."""
        live = set(self._mine.values())
        gone = {room: [m for m in members if m not in live] for room, members in rooms.items()}
        gone = {room: members for room, members in gone.items() if members}
        if not gone:
            return

        async def op() -> None:
            async with self.ops.client.pipeline(transaction=False) as p:
                for room, members in gone.items():
                    p.zrem(self.key(room), *members)
                await p.execute()

        try:
            await self.ops.call(op)
        except Exception:  # noqa: BLE001 - they stop counting at their expiry anyway
            log.debug("presence clean-up after a refresh failed", exc_info=True)
