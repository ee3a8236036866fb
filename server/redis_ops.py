"""The one retry policy of a Redis backend, and the connections it is handed with.

``backends.py`` opens the connections (it is the only module that creates a Redis
client) and wraps them in one ``RedisOps``; the bus, the run store and the queue get
that object and never open a connection of their own. Imported only with Redis.
"""

from __future__ import annotations

import asyncio
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


class RedisOps:
    """A command client, a client for pub/sub, and ``call``: ride out an outage, then say so.

    ``client`` is pooled and shared by every command of the process. ``pubsub_client``
    never reconnects by itself: a dropped pub/sub connection must surface, because the
    bus's reconnect is what makes every live subscriber resync (contract item 3).
    """

    def __init__(self, client: Any, *, pubsub_client: Any, outage_s: float) -> None:
        self.client = client
        self.pubsub_client = pubsub_client
        self.outage_s = outage_s

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (re-run it after a dropped connection) for up to ``outage_s``.

        Past that it raises BackendUnavailable (a 503, never a 500). The append
        script's LOGCLOSED refusal becomes LogClosed; other command errors pass through.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_s
        backoff = Backoff(first=0.05, cap=1.0)
        while True:
            try:
                return await op()
            except ResponseError as exc:
                if "LOGCLOSED" in str(exc):
                    raise LogClosed("the run has ended; its log takes no more events") from None
                raise
            except TRANSIENT as exc:
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
        await self.pubsub_client.aclose(close_connection_pool=True)
        await self.client.aclose(close_connection_pool=True)
