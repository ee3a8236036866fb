"""The open streams of this process, by credential: ended at the credential's ``exp``,
warned shortly before it, and cut when the credential is revoked.

A session is a pair of timer handles and two index entries; ending one only calls the
transport's callback (synchronously: SSE stops its subscription, Socket.IO schedules an
``auth_expired`` and a disconnect). No task per stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .caller import Caller

log = logging.getLogger(__name__)

EXPIRED, REVOKED = "auth_expired", "auth_revoked"


class Session:
    __slots__ = ("caller", "_sessions", "_on_end", "_on_expiring", "_timers", "closed")

    def __init__(self, sessions: Sessions, caller: Caller, on_end: Callable[[str], None],
                 on_expiring: Callable[[float], None] | None) -> None:
        self._sessions = sessions
        self._on_end = on_end
        self._on_expiring = on_expiring
        self._timers: list[asyncio.TimerHandle] = []
        self.closed = False
        self.caller = caller
        self._arm()

    def _arm(self) -> None:
        exp = self.caller.exp
        if exp is None:
            return
        loop = asyncio.get_running_loop()
        left = exp - time.time()
        self._timers.append(loop.call_later(max(0.0, left), self.end, EXPIRED))
        lead = self._sessions.expiring_lead_s
        if self._on_expiring is not None and left > 0:
            # With less than the lead left (a short token, a late refresh) the warning comes
            # at once, a moment after the connect completes: the client still gets its cue.
            warn_in = left - lead if left > lead else min(0.2, left / 2)
            self._timers.append(loop.call_later(warn_in, self._on_expiring, exp))

    def renew(self, caller: Caller) -> None:
        """A refreshed credential (same tenant and subject): new deadlines."""
        if self.closed:
            return
        self._sessions._unindex(self)
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self.caller = caller
        self._sessions._index(self)
        self._arm()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        self._sessions._unindex(self)

    def end(self, reason: str) -> None:
        if self.closed:
            return
        self.close()
        try:
            self._on_end(reason)
        except Exception:  # noqa: BLE001 - one stream's callback must not stop the sweep
            log.exception("ending a stream (%s) failed", reason)


class Sessions:
    def __init__(self, expiring_lead_s: float = 30.0) -> None:
        self.expiring_lead_s = expiring_lead_s
        self._by_sub: dict[str, set[Session]] = {}
        self._by_jti: dict[str, set[Session]] = {}

    def open(self, caller: Caller, on_end: Callable[[str], None],
             on_expiring: Callable[[float], None] | None = None) -> Session:
        session = Session(self, caller, on_end, on_expiring)
        self._index(session)
        return session

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_sub.values())

    def _index(self, s: Session) -> None:
        self._by_sub.setdefault(s.caller.sub, set()).add(s)
        if s.caller.jti:
            self._by_jti.setdefault(s.caller.jti, set()).add(s)

    def _unindex(self, s: Session) -> None:
        for index, key in ((self._by_sub, s.caller.sub), (self._by_jti, s.caller.jti)):
            if key is None:
                continue
            group = index.get(key)
            if group is not None:
                group.discard(s)
                if not group:
                    del index[key]

    def revoked(self, message: dict[str, Any]) -> int:
        """A revocation arrived (from this process or another): cut what it covers."""
        kind, value, at = message.get("kind"), message.get("value"), message.get("at")
        if not isinstance(value, str) or not isinstance(at, (int, float)):
            return 0
        if kind == "jti":
            hit = list(self._by_jti.get(value, ()))
        elif kind == "sub":
            hit = [s for s in self._by_sub.get(value, ()) if s.caller.iat is None or s.caller.iat <= at]
        else:
            return 0
        for s in hit:
            s.end(REVOKED)
        if hit:
            log.info("revocation of %s cut %d open stream(s)", kind, len(hit))
        return len(hit)
