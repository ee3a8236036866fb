"""The one retry policy of a Redis backend, and the connections it is handed with.

``backends.py`` opens the connections (it is the only module that creates a Redis
client) and wraps them in one ``RedisOps``; the bus, the run store and the queue get
that object and never open a connection of their own. Imported only with Redis.

It also notices when Redis forgets (DESIGN.md, "When Redis forgets"): an epoch key, set
once (SET NX, a random id) and compared after every reconnect. A Redis that restarted
from its AOF still holds it; one that came back empty does not, and every process then
says so once and tells its listeners (the bus resyncs its subscribers, a worker drops
the runs it executes), instead of carrying on as if nothing had happened.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Awaitable, Callable, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import Backoff
from .bus.base import BackendUnavailable, LogClosed

# What a Redis outage looks like from here (BusyLoadingError, a restarted Redis still
# reading its AOF, is a ConnectionError too).
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

T = TypeVar("T")
log = logging.getLogger(__name__)


class RedisOps:
    """A command client, a client for pub/sub, and ``call``: ride out an outage, then say so.

    ``client`` is pooled and shared by every command of the process. ``pubsub_client``
    never reconnects by itself: a dropped pub/sub connection must surface, because the
    bus's reconnect is what makes every live subscriber resync (contract item 3).
    """

    def __init__(self, client: Any, *, pubsub_client: Any, outage_s: float,
                 epoch_key: str | None = None) -> None:
        self.client = client
        self.pubsub_client = pubsub_client
        self.outage_s = outage_s
        # None: no epoch kept (a bus or store used alone, as the contract tests do).
        self.epoch_key = epoch_key
        self.epoch: bytes | None = None  # the id this process last saw in the epoch key
        self.losses = 0  # how often this process found Redis emptied
        self._loss_listeners: list[Callable[[], Awaitable[None]]] = []
        self._epoch_lock = asyncio.Lock()
        self._epoch_check: asyncio.Task[bool] | None = None

    # -- the epoch: did Redis lose its data? ---------------------------------------
    def on_data_lost(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Await ``listener()`` whenever Redis is found to have lost its data."""
        self._loss_listeners.append(listener)

    async def check_epoch(self) -> bool:
        """Compare the epoch key with the id this process saw; True if Redis lost its data.

        The first call adopts the epoch (setting it if Redis has none). Called at start and
        after every reconnect; a check that cannot reach Redis changes nothing (the next
        reconnect checks again).
        """
        if self.epoch_key is None:
            return False
        async with self._epoch_lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.outage_s
            backoff = Backoff(first=0.05, cap=1.0)
            while True:
                try:
                    current = await self.client.get(self.epoch_key)
                    if current is not None and current == self.epoch:
                        return False
                    if current is None:
                        # SET NX: of the processes finding it missing, one id wins; all adopt it.
                        await self.client.set(self.epoch_key, uuid.uuid4().hex, nx=True)
                        current = await self.client.get(self.epoch_key)
                    break
                except TRANSIENT:
                    # Away again, or still loading its AOF (a durable restart answers LOADING
                    # first): wait for the answer rather than miss a loss.
                    if loop.time() + backoff.next_delay > deadline:
                        return False
                    await backoff.wait()
            before, self.epoch = self.epoch, current
            if before is None:
                return False  # the first look: nothing known to lose
            self.losses += 1
            log.error("Redis lost its data (epoch %s is gone, now %s): runs in flight are lost; "
                      "run Redis with appendonly yes", before.decode(errors="replace"),
                      current.decode(errors="replace") if current else "?")
            listeners = list(self._loss_listeners)
        for listener in listeners:
            try:
                await listener()
            except Exception:  # one listener's failure must not keep the others from running
                log.exception("a listener of the Redis data loss failed")
        return True

    def reconnected(self) -> None:
        """Redis may have restarted (a command or the pub/sub connection got through after a
        drop, an append found its log gone, the queue's group vanished): check the epoch,
        one check at a time, in the background (the caller is on some command's path)."""
        if self.epoch_key is None or (self._epoch_check is not None and not self._epoch_check.done()):
            return
        self._epoch_check = asyncio.get_running_loop().create_task(self.check_epoch(),
                                                                   name="redis-epoch-check")

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (re-run it after a dropped connection) for up to ``outage_s``.

        Past that it raises BackendUnavailable (a 503, never a 500). The append
        script's LOGCLOSED refusal becomes LogClosed; other command errors pass through.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_s
        backoff = Backoff(first=0.05, cap=1.0)
        dropped = False
        while True:
            try:
                result = await op()
                if dropped:
                    self.reconnected()
                return result
            except ResponseError as exc:
                if "LOGCLOSED" in str(exc):
                    raise LogClosed("the run has ended; its log takes no more events") from None
                raise
            except TRANSIENT as exc:
                dropped = True
                if loop.time() + backoff.next_delay > deadline:
                    raise BackendUnavailable(f"redis unreachable for {self.outage_s:g}s: {exc}") from exc
                await backoff.wait()

    def register_script(self, source: str) -> Any:
        return self.client.register_script(source)

    def pubsub(self) -> Any:
        return self.pubsub_client.pubsub()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 2))
        except (*TRANSIENT, asyncio.TimeoutError):
            return False

    async def aclose(self) -> None:
        if self._epoch_check is not None:
            self._epoch_check.cancel()
            await asyncio.gather(self._epoch_check, return_exceptions=True)
        await self.pubsub_client.aclose(close_connection_pool=True)
        await self.client.aclose(close_connection_pool=True)
