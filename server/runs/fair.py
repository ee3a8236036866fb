"""Fair share across tenants (DESIGN.md, "Tenancy and fair share").

Within a tenant runs start in FIFO order; across tenants with runs waiting, dispatch is
smooth weighted round-robin (nginx's): every pick adds each eligible tenant's weight to
its credit, the tenant with the most credit goes, and pays the eligible weights' sum. With
weights 3:1 and both backlogged that is a a b a | a a b a …: exactly 75 % / 25 % over
every four picks, interleaved rather than in bursts. A tenant that was idle joins with the
most credit, so a quiet tenant's first run waits for one free slot, never for a noisy
tenant's backlog. A tenant at its running cap is not eligible (its runs wait ``queued``).

``TenantPolicy`` holds the rules (the same for every backend); ``FairQueue`` applies them
in one process. The Redis scheduler (``redis_sched.py``) applies the same rules in one Lua
script, so every worker makes the same decision atomically.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .lifecycle import Dispatch

_RATE_RE = re.compile(r"^\s*(?P<n>[0-9]*\.?[0-9]+)\s*/\s*(?P<unit>s|sec|second|m|min|minute|h|hour)\s*"
                      r"(?:,\s*burst\s*=\s*(?P<burst>[0-9]+)\s*)?$")
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
# The smoothing of each tenant's mean run time (for a 429's Retry-After).
DURATION_EWMA = 0.2
# Resting tenants (queue emptied) are remembered this long, for the rejoin rule below.
REJOIN_MEMORY_S = 600.0


def parse_pairs(raw: str, what: str) -> dict[str, int]:
    """``"acme=3,beta=1"`` -> ``{"acme": 3, "beta": 1}`` (values positive integers)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{what}: {part!r} is not name=<positive integer>")
        out[name] = int(value)
    return out


@dataclass(frozen=True, slots=True)
class Rate:
    """Run creations per second with a burst, enforced by GCRA (a token bucket in one number)."""

    per_s: float
    burst: int

    @classmethod
    def parse(cls, raw: str) -> Rate | None:
        if not raw.strip():
            return None
        m = _RATE_RE.match(raw)
        if m is None:
            raise ValueError(f"tenant rate {raw!r}: expected e.g. '5/s,burst=20' or '100/min'")
        per_s = float(m["n"]) / _UNITS[m["unit"]]
        if per_s <= 0:
            raise ValueError(f"tenant rate {raw!r} must be positive")
        burst = int(m["burst"]) if m["burst"] else max(1, math.ceil(per_s))
        return cls(per_s, max(1, burst))

    @property
    def interval_s(self) -> float:
        return 1.0 / self.per_s


@dataclass(frozen=True)
class TenantPolicy:
    weights: dict[str, int] = field(default_factory=dict)
    max_running: int = 0  # per tenant; 0: no cap of its own (the workers' slots are the cap)
    max_running_overrides: dict[str, int] = field(default_factory=dict)
    max_queued: int = 0  # per tenant; 0: only the server-wide max_queued_runs
    rate: Rate | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> TenantPolicy:
        return cls(weights=parse_pairs(settings.tenant_weights, "THOUGHTSTREAM_TENANT_WEIGHTS"),
                   max_running=settings.tenant_max_running,
                   max_running_overrides=parse_pairs(settings.tenant_max_running_overrides,
                                                     "THOUGHTSTREAM_TENANT_MAX_RUNNING_OVERRIDES"),
                   max_queued=settings.tenant_max_queued,
                   rate=Rate.parse(settings.tenant_rate))

    def weight(self, tenant: str) -> int:
        return self.weights.get(tenant, 1)

    def cap(self, tenant: str) -> int:
        """The tenant's running cap, 0 for none."""
        return self.max_running_overrides.get(tenant, self.max_running)


class Refused(Exception):
    """A run creation the tenant's limits refuse: 429 ``code`` with a computed Retry-After."""

    def __init__(self, code: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def queue_full(tenant: str, queued: int, limit: int, mean_run_s: float, running_cap: int) -> Refused:
    """Retry-After from the tenant's state: the time its queue takes to get below the
    limit at its observed run time and the slots it may use at once."""
    excess = queued - limit + 1
    wait = mean_run_s * excess / max(1, running_cap)
    return Refused("tenant_queue_full", f"tenant {tenant!r} already has {queued} runs queued "
                   f"(the limit is {limit})", max(1.0, wait))


def rate_limited(tenant: str, rate: Rate, wait_s: float) -> Refused:
    return Refused("rate_limited", f"tenant {tenant!r} may create {rate.per_s:g} runs per second "
                   f"(burst {rate.burst})", max(0.001, wait_s))


def gcra(tat: float | None, now: float, rate: Rate) -> tuple[float | None, float]:
    """One GCRA step: (the new theoretical arrival time if allowed else None, wait if refused)."""
    t = max(tat or now, now) + rate.interval_s
    allowed_until = now + rate.interval_s * rate.burst
    if t <= allowed_until:
        return t, 0.0
    return None, t - allowed_until


@dataclass(eq=False)
class Waiting:
    dispatch: Dispatch
    tenant: str
    agent: str
    since: float  # time.time() when it was queued (for queue age and queued seconds)


class FairQueue:
    """The runs waiting in this process, dispatched by ``TenantPolicy``; ``get()`` waits
    for the next one a free slot may take. Slots are given back with ``release``."""

    def __init__(self, policy: TenantPolicy) -> None:
        self.policy = policy
        self._waiting: dict[str, deque[Waiting]] = {}
        self._running: dict[str, int] = {}
        self._slots: dict[str, tuple[str, str]] = {}  # run id -> (tenant, agent) holding a slot
        self._credit: dict[str, float] = {}  # tenants with runs waiting
        # A tenant whose queue emptied: (its credit then, picks so far then, monotonic time).
        self._resting: dict[str, tuple[float, int, float]] = {}
        self._picks = 0
        self._mean_s: dict[str, float] = {}
        self._tat: dict[str, float] = {}
        self._reserved: dict[str, set[str]] = {}  # admitted creations not queued yet
        # Slots waiting in get(), oldest first. A change wakes one, not all: with the bench's
        # 1,000 slots an Event woke 1,000 tasks per run start and end (one pick each, all but
        # one failing), ~1M task steps for 1,000 runs. A waiter whose pick succeeds wakes the
        # next (another item may be pickable too); the chain stops at the first failed pick.
        self._waiters: deque[asyncio.Future[None]] = deque()

    # ------------------------------------------------------------ admission

    def admit(self, tenant: str, run_id: str = "", now: float | None = None) -> None:
        """Raise ``Refused`` if the tenant's queue cap or creation rate says no; else count the
        creation and hold ``run_id`` a place in the queue until ``put`` (or ``unreserve``), so
        concurrent creations cannot all pass the same check."""
        policy = self.policy
        queued = len(self._waiting.get(tenant, ())) + len(self._reserved.get(tenant, ()))
        if policy.max_queued and queued >= policy.max_queued:
            raise queue_full(tenant, queued, policy.max_queued, self.mean_run_s(tenant),
                             policy.cap(tenant) or max(1, self._running.get(tenant, 0)))
        if policy.rate is not None:
            new_tat, wait = gcra(self._tat.get(tenant), now or time.monotonic(), policy.rate)
            if new_tat is None:
                raise rate_limited(tenant, policy.rate, wait)
            self._tat[tenant] = new_tat
        if policy.max_queued and run_id:
            self._reserved.setdefault(tenant, set()).add(run_id)

    def unreserve(self, tenant: str, run_id: str) -> None:
        """The creation ``admit`` let through did not happen after all."""
        held = self._reserved.get(tenant)
        if held is not None:
            held.discard(run_id)
            if not held:
                del self._reserved[tenant]

    def mean_run_s(self, tenant: str) -> float:
        if tenant in self._mean_s:
            return self._mean_s[tenant]
        if self._mean_s:
            return sum(self._mean_s.values()) / len(self._mean_s)
        return 1.0

    # ------------------------------------------------------------ queueing

    def put(self, item: Waiting) -> None:
        self.unreserve(item.tenant, item.dispatch.run_id)  # its held place becomes a real one
        queue = self._waiting.get(item.tenant)
        if queue is None:
            queue = self._waiting[item.tenant] = deque()
        if not queue:
            self._credit[item.tenant] = self._join_credit(item.tenant)
        queue.append(item)
        self._notify()

    def _join_credit(self, tenant: str) -> float:
        """A tenant that had nothing waiting comes back with the credit it would have if it
        had been waiting all along (its credit when it left, plus its weight for every pick
        since), but never more than just above the most credit any other tenant could reach
        at the next pick. So a quiet tenant goes at the next free slot, and one that keeps a
        single run waiting (submitting the next the moment the last starts) earns nothing
        it would not have earned with a backlog."""
        others = [t for t in self._credit if t != tenant]
        top = max((self._credit[t] for t in others), default=0.0)
        ceiling = top + max((self.policy.weight(t) for t in others), default=0)
        rest = self._resting.pop(tenant, None)
        if rest is None or time.monotonic() - rest[2] >= REJOIN_MEMORY_S:
            return ceiling
        credit, picks_then, _ = rest
        return min(ceiling, credit + (self._picks - picks_then) * self.policy.weight(tenant))

    def withdraw(self, run_id: str) -> bool:
        """Take a waiting run out (it was cancelled while queued)."""
        for tenant, queue in self._waiting.items():
            for item in queue:
                if item.dispatch.run_id == run_id:
                    queue.remove(item)
                    if not queue:
                        self._idle(tenant)
                    return True
        return False

    def _idle(self, tenant: str) -> None:
        self._waiting.pop(tenant, None)
        credit = self._credit.pop(tenant, None)
        if credit is not None:
            now = time.monotonic()
            self._resting[tenant] = (credit, self._picks, now)
            if len(self._resting) > 1024:  # forget the long gone
                self._resting = {t: r for t, r in self._resting.items() if now - r[2] < REJOIN_MEMORY_S}

    def pick(self) -> Waiting | None:
        """The next run to start, by the policy; None if nothing may start now."""
        eligible = [t for t, q in self._waiting.items() if q and self._has_slot(t)]
        if not eligible:
            return None
        total = 0
        best: str | None = None
        for t in eligible:
            w = self.policy.weight(t)
            total += w
            self._credit[t] = self._credit.get(t, 0.0) + w
            if best is None or self._credit[t] > self._credit[best]:
                best = t
        assert best is not None
        self._credit[best] -= total
        self._picks += 1
        queue = self._waiting[best]
        item = queue.popleft()
        if not queue:
            self._idle(best)
        self._running[best] = self._running.get(best, 0) + 1
        self._slots[item.dispatch.run_id] = (best, item.agent)
        return item

    def _has_slot(self, tenant: str) -> bool:
        cap = self.policy.cap(tenant)
        return cap == 0 or self._running.get(tenant, 0) < cap

    async def get(self) -> Waiting:
        while True:
            item = self.pick()
            if item is not None:
                self._notify()
                return item
            # No await between the failed pick and queueing the waiter: a put or release
            # cannot slip in between, so no wake-up is lost.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._notify()  # woken, then cancelled: the wake-up goes to the next slot
                elif waiter in self._waiters:  # _notify drops cancelled ones it meets
                    self._waiters.remove(waiter)
                raise

    def release(self, run_id: str, duration_s: float | None = None) -> bool:
        """Give a run's slot back (every ending: success, failure, cancel, timeout, interrupt)."""
        slot = self._slots.pop(run_id, None)
        if slot is None:
            return False
        tenant = slot[0]
        left = self._running.get(tenant, 0) - 1
        if left > 0:
            self._running[tenant] = left
        else:
            self._running.pop(tenant, None)
        if duration_s is not None and duration_s >= 0:
            old = self._mean_s.get(tenant)
            self._mean_s[tenant] = duration_s if old is None else old + DURATION_EWMA * (duration_s - old)
        self._notify()
        return True

    def _notify(self) -> None:
        """Wake the oldest waiting slot (see ``_waiters``)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # ------------------------------------------------------------ the operator's view

    def depth(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def position(self, run_id: str, tenant: str) -> tuple[int, str] | None:
        """(1-based place among its tenant's waiting runs, why it waits), or None."""
        for i, item in enumerate(self._waiting.get(tenant, ())):
            if item.dispatch.run_id == run_id:
                cap = self.policy.cap(tenant)
                running = self._running.get(tenant, 0)
                if cap and running >= cap:
                    why = f"tenant {tenant!r} is at its running cap ({running}/{cap})"
                elif i:
                    why = f"behind {i} earlier run(s) of tenant {tenant!r}"
                else:
                    why = "waiting for a free run slot"
                return i + 1, why
        return None

    def overview(self, now: float | None = None) -> dict[str, Any]:
        now = now or time.time()
        tenants: dict[str, Any] = {}
        for tenant in {*self._waiting, *self._running}:
            queue = self._waiting.get(tenant, deque())
            by_agent: dict[str, dict[str, int]] = {}
            for item in queue:
                by_agent.setdefault(item.agent, {"queued": 0, "running": 0})["queued"] += 1
            for slot_tenant, agent in self._slots.values():
                if slot_tenant == tenant:
                    by_agent.setdefault(agent, {"queued": 0, "running": 0})["running"] += 1
            tenants[tenant] = {"queued": len(queue), "running": self._running.get(tenant, 0),
                               "cap": self.policy.cap(tenant) or None, "weight": self.policy.weight(tenant),
                               "oldest_age_s": (now - queue[0].since) if queue else None,
                               "by_agent": by_agent}
        return {"tenants": tenants}

