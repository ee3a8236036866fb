"""The delivery-time relevance gate: when a run ends, is its answer still the answer?

A run may name the context it answers (``{key, version}``); a LangGraph thread run
answers its thread (version: the thread's head checkpoint when it starts). When the run
ends the lifecycle asks ``decide`` for its one verdict, written with the ending itself
(one transition, so one verdict even when the context moves at that very moment):

- ``superseded``: a newer run on the same key was created after this one;
- ``stale``: the context's version moved since the run started;
- ``expired``: it ended later than ``deliver_within_s`` after it was created;
- ``fresh``: none of these.

``on_stale: hold`` keeps a non-fresh result back (``RESULT_HELD``) until
``POST /runs/{id}/deliver``. A run that ends while nobody watches it or its context (on
any process: ``presence``) goes to the context's inbox, which the next subscriber of the
context gets first (``INBOX``). Context events (runs started, verdicts, versions, delivered
results) go to the context's own bus log, so a context stream is gapless and resumable
like a run's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..runs.store import SUCCEEDED, RunRecord
from .contexts import ContextRecord, ContextStore

log = logging.getLogger(__name__)

FRESH, SUPERSEDED, STALE, EXPIRED = "fresh", "superseded", "stale", "expired"
HOLD, MARK = "hold", "mark"
RESULT_HELD = "RESULT_HELD"
INBOX = "INBOX"


class Gate:
    def __init__(self, *, contexts: ContextStore, bus: Any, presence: Any, deliver_within_s: float) -> None:
        self.contexts = contexts
        self.bus = bus
        self.presence = presence
        self.deliver_within_s = deliver_within_s

    # -- context log ----------------------------------------------------------------
    async def log_of(self, rec: ContextRecord) -> str:
        """The context's event log, opened if it is not there (a new generation if it expired)."""
        if await self.bus.bounds(rec.log_id) is None:
            bump = getattr(self.contexts, "bump_gen", None)
            if bump is not None and rec.updated_at and time.time() - rec.updated_at > 60:
                # An old context whose log expired: a new log, so no seq is reused.
                rec = ContextRecord(rec.tenant, rec.key, gen=await bump(rec.tenant, rec.key))
            await self.bus.open_log(rec.log_id)
        return rec.log_id

    async def _event(self, tenant: str, key: str, ns: str, data: dict[str, Any]) -> None:
        rec = await self.contexts.get(tenant, key)
        if rec is None:
            return
        try:
            await self.bus.append(await self.log_of(rec), ns, "gate", {"key": key, **data})
        except Exception:  # noqa: BLE001 - the decision stands; its announcement is best effort
            log.warning("context %r: %s event not written", key, ns, exc_info=True)

    # -- runs -------------------------------------------------------------------------
    async def started(self, rec: RunRecord) -> None:
        """A run with a context was created: it is the newest on its key."""
        ctx = rec.context
        if not ctx:
            return
        await self.contexts.run_started(rec.tenant, ctx["key"], rec.run_id, ctx.get("version"), rec.created_at)
        await self._event(rec.tenant, ctx["key"], "RUN_STARTED",
                          {"run_id": rec.run_id, "version": ctx.get("version")})

    async def decide(self, rec: RunRecord, *, now: float | None = None) -> dict[str, Any] | None:
        """The verdict of ``rec`` ending now (None: the run has no context)."""
        ctx = rec.context
        if not ctx:
            return None
        now = time.time() if now is None else now
        cur = await self.contexts.get(rec.tenant, ctx["key"])
        current = cur.version if cur is not None else ctx.get("version")
        age = round(now - rec.created_at, 3)
        within = float(ctx.get("deliver_within_s") or self.deliver_within_s)
        verdict: dict[str, Any] = {"key": ctx["key"], "version": ctx.get("version"),
                                   "current_version": current, "age_s": age}
        if cur is not None and cur.latest_run not in (None, rec.run_id) and cur.latest_created > rec.created_at:
            verdict.update(state=SUPERSEDED, superseded_by=cur.latest_run,
                           reason=f"run {cur.latest_run} was started on {ctx['key']!r} after this one")
        elif current != ctx.get("version"):
            verdict.update(state=STALE, reason=f"{ctx['key']!r} moved from {ctx.get('version')!r} "
                                               f"to {current!r} while this run ran")
        elif age > within:
            verdict.update(state=EXPIRED, reason=f"finished {age:g} s after it was created; "
                                                 f"it had {within:g} s to be delivered")
        else:
            verdict.update(state=FRESH, reason=f"{ctx['key']!r} is still at {current!r}")
        return verdict

    @staticmethod
    def held(rec: RunRecord, state: str, verdict: dict[str, Any] | None) -> bool:
        """Is this ending's result held back (``on_stale: hold`` and not fresh)?"""
        return (state == SUCCEEDED and verdict is not None and verdict["state"] != FRESH
                and (rec.context or {}).get("on_stale") == HOLD)

    async def watched(self, rec: RunRecord) -> bool:
        """Is anyone, on any process, watching the run or its context? Asked before the
        run's terminal event is written: a watcher reading to the end leaves right after it."""
        if await self.presence.watched(rec.run_id):
            return True
        ctx = rec.context
        cur = await self.contexts.get(rec.tenant, ctx["key"]) if ctx else None
        return cur is not None and await self.presence.watched(cur.log_id)

    async def ended(self, rec: RunRecord, *, watched: bool | None = None) -> None:
        """After the ending: announce the verdict; an unwatched ending goes to the inbox.
        ``watched``: as asked before the terminal event (the lifecycle does); None asks now."""
        ctx = rec.context
        if not ctx:
            return
        if watched is None:
            watched = await self.watched(rec)
        key = ctx["key"]
        await self.contexts.run_ended(rec.tenant, key, rec.run_id)
        held = bool((rec.delivery or {}).get("held"))
        if not watched:
            await self.contexts.add_inbox(rec.tenant, key, {
                "run_id": rec.run_id, "status": rec.status, "verdict": rec.verdict,
                "ended_at": rec.ended_at or time.time(), "held": held})
        await self._event(rec.tenant, key, "VERDICT", {"run_id": rec.run_id, "status": rec.status,
                                                       "verdict": rec.verdict, "held": held,
                                                       "unwatched": not watched})

    async def claim_delivery(self, run_id: str) -> bool:
        """True for exactly one caller per held run (concurrent delivers, any process)."""
        return await self.contexts.claim(f"deliver:{run_id}")

    async def delivered(self, rec: RunRecord, body: dict[str, Any]) -> None:
        """A held result was released: announced, and no longer waiting in the inbox."""
        if rec.context:
            await self.contexts.ack(rec.tenant, rec.context["key"], [rec.run_id])
            await self._event(rec.tenant, rec.context["key"], "RESULT", body)

    @staticmethod
    def withheld(rec: RunRecord) -> bool:
        """A held result not delivered yet: nobody reads it before ``deliver``."""
        delivery = rec.delivery or {}
        return bool(delivery.get("held")) and delivery.get("delivered_at") is None

    # -- contexts -----------------------------------------------------------------------
    async def set_version(self, tenant: str, key: str, version: str | None) -> ContextRecord:
        rec, previous = await self.contexts.set_version(tenant, key, version)
        if previous != version:
            await self._event(tenant, key, "VERSION", {"version": version, "previous": previous})
        return rec

    @staticmethod
    def view(rec: ContextRecord) -> dict[str, Any]:
        return {"key": rec.key, "version": rec.version, "updated_at": rec.updated_at,
                "runs": [{"run_id": r, "version": v} for r, v in rec.inflight.items()],
                "inbox": rec.inbox}
