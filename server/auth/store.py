"""What authentication keeps between requests: stream tickets and revocations.

In one process both live in memory; with Redis they live in Redis, so a ticket minted by
one API process opens a stream on another, and a revocation reaches every process (over
the bus's control channel) and outlives restarts. ``backends.py`` picks one.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

import orjson

from .. import redis_keys

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], Any]
REVOKED = "auth_revoked"  # the control channel revocations travel on
# Revocations also go to a capped log, read again after a pub/sub reconnect: a revocation
# announced while a process was disconnected still cuts its streams when it is back.
RECENT_KEEP = 1000
RECENT_WINDOW_S = 3600.0


class AuthStore(Protocol):
    async def put_ticket(self, digest: str, body: dict[str, Any], ttl_s: float) -> None: ...

    async def get_ticket(self, digest: str) -> dict[str, Any] | None: ...

    async def revoke(self, kind: str, value: str, at: float, keep_s: float) -> None:
        """Record a revocation (``kind`` is ``sub`` or ``jti``) and tell every process."""
        ...

    async def revoked_at(self, sub: str, jti: str | None) -> tuple[float | None, float | None]:
        """When ``sub`` and ``jti`` were last revoked (None: never, or long enough ago)."""
        ...

    async def on_revoke(self, listener: Listener) -> None:
        """Call ``listener({kind, value, at})`` for every revocation, from any process."""
        ...


class _Expiring:
    """A dict whose entries vanish after their deadline (checked on read, swept on write)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Any]] = {}
        self._writes = 0

    def put(self, key: str, value: Any, ttl_s: float) -> None:
        now = time.monotonic()
        self._items[key] = (now + ttl_s, value)
        self._writes += 1
        if self._writes % 256 == 0:
            for k in [k for k, (dl, _) in self._items.items() if dl <= now]:
                del self._items[k]

    def get(self, key: str) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._items[key]
            return None
        return item[1]


class MemoryAuthStore:
    def __init__(self) -> None:
        self._tickets = _Expiring()
        self._revoked = _Expiring()
        self._listeners: list[Listener] = []

    async def put_ticket(self, digest: str, body: dict[str, Any], ttl_s: float) -> None:
        self._tickets.put(digest, body, ttl_s)

    async def get_ticket(self, digest: str) -> dict[str, Any] | None:
        return self._tickets.get(digest)

    async def revoke(self, kind: str, value: str, at: float, keep_s: float) -> None:
        self._revoked.put(f"{kind}:{value}", at, keep_s)
        for listener in list(self._listeners):
            listener({"kind": kind, "value": value, "at": at})

    async def revoked_at(self, sub: str, jti: str | None) -> tuple[float | None, float | None]:
        return self._revoked.get(f"sub:{sub}"), (self._revoked.get(f"jti:{jti}") if jti else None)

    async def on_revoke(self, listener: Listener) -> None:
        self._listeners.append(listener)


class RedisAuthStore:
    """Tickets and revocations as Redis keys with TTLs; revocations announced on the bus."""

    def __init__(self, ops: Any, bus: Any, *, prefix: str) -> None:
        self._ops = ops
        self._bus = bus
        # The control plane's slot: a revocation's key and its log change in one MULTI.
        self._prefix = f"{redis_keys.control(prefix)}:auth"

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    async def put_ticket(self, digest: str, body: dict[str, Any], ttl_s: float) -> None:
        key, raw, ms = self._key("ticket", digest), orjson.dumps(body), max(1, int(ttl_s * 1000))
        await self._ops.call(lambda: self._ops.client.set(key, raw, px=ms))

    async def get_ticket(self, digest: str) -> dict[str, Any] | None:
        key = self._key("ticket", digest)
        raw = await self._ops.call(lambda: self._ops.client.get(key))
        return orjson.loads(raw) if raw else None

    async def revoke(self, kind: str, value: str, at: float, keep_s: float) -> None:
        key, ms = self._key("revoked", kind, value), max(1, int(keep_s * 1000))
        message = {"kind": kind, "value": value, "at": at}
        log_key = self._key("revocations")

        async def write() -> None:
            async with self._ops.client.pipeline(transaction=True) as p:
                p.set(key, repr(at), px=ms)
                p.xadd(log_key, {"m": orjson.dumps(message)}, maxlen=RECENT_KEEP, approximate=True)
                await p.execute()

        await self._ops.call(write)
        await self._bus.publish_control(REVOKED, message)

    async def recent(self, since_s: float = RECENT_WINDOW_S) -> list[dict[str, Any]]:
        """The revocations of the last ``since_s`` seconds, oldest first."""
        start = f"{int((time.time() - since_s) * 1000)}-0"
        rows = await self._ops.call(lambda: self._ops.client.xrange(self._key("revocations"), start, "+"))
        return [orjson.loads(fields[b"m"]) for _id, fields in rows if b"m" in fields]

    async def revoked_at(self, sub: str, jti: str | None) -> tuple[float | None, float | None]:
        keys = [self._key("revoked", "sub", sub)]
        if jti:
            keys.append(self._key("revoked", "jti", jti))
        raw = await self._ops.call(lambda: self._ops.client.mget(keys))
        values = [float(v) if v is not None else None for v in raw]
        return values[0], (values[1] if jti else None)

    async def on_revoke(self, listener: Listener) -> None:
        async def hear(message: dict[str, Any]) -> None:
            if not message.get("resync"):
                listener(message)
                return
            try:  # back from a disconnect: apply what was announced meanwhile (idempotent)
                for missed in await self.recent():
                    listener(missed)
            except Exception:  # noqa: BLE001 - Redis may be away again; the next reconnect retries
                log.warning("revocations not re-read after a reconnect", exc_info=True)

        await self._bus.on_control(REVOKED, hear)
