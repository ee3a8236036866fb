"""A worker's leases on its runs, kept by a thread that a stalled event loop cannot starve.

A run's lease is its queue entry in the consumer group: the worker that holds it keeps its
idle time low (XCLAIM to itself, JUSTID); another worker's reaper takes an entry idle for
longer than the lease (XAUTOCLAIM). On the event loop, that heartbeat waited behind
whatever held the loop (200 runs streaming, a node doing CPU-bound work on the loop), so a
busy worker lost runs it was executing. Here it runs in a thread of its own with its own
synchronous connection: the loop only has to hand it the entry ids (under a lock).

Takeover after a kill -9: the last renewal was at most one period before the kill, so the
entry passes the lease at most ``lease_s`` after it, and a reaper running every
``reap_period(lease_s)`` sees it at most that much later: ``lease_s * (1 + 1/8)``.

Fencing: every time a worker starts executing a run (first claim or takeover) it bumps the
run's fence (``FENCE``: the ``fence`` field of the log's meta hash, an integer that only
grows) before it reads anything of the run. The value it got is its token: a writer whose
token is below the meta's ``fence`` has lost the run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

# Renew only what is still ours. XCLAIM alone would also take back an entry another worker
# took over meanwhile (a stalled worker coming back would steal its own run back, and the
# two would execute it at once). KEYS: queue stream. ARGV: group, consumer, entry ids.
# Returns the ids another worker holds now (taken over). An id pending for nobody (acked
# while this call was on its way) is left alone; a queue that is gone altogether (Redis
# lost its data) fails the call (NOGROUP): those runs then end on the log_lost path at
# their next append, not as taken over.
RENEW = """
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    else
      table.insert(lost, id)
    end
  end
end
return lost
"""

# KEYS: the run's log meta hash. Never creates a meta that is not there (Redis lost the
# run's log: an append would then be refused as LOGLOST, and must stay so). Returns the new
# fence, 0 when the meta is gone.
FENCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'fence', 1)
"""

# A loop that has not ticked for this long is hung, not busy: stop renewing its leases so
# that its runs are taken over (a busy loop of a live worker ticks far more often).
LOOP_HUNG_S = 120.0


def reap_period(lease_s: float) -> float:
    """How often a worker looks for entries whose lease ran out (the takeover's delay)."""
    return lease_s / 8


def renew_period(lease_s: float) -> float:
    """How often the lease thread renews: four renewals per lease, so three can fail
    (Redis blip, a slow machine) before a live worker's runs are taken."""
    return lease_s / 4


class LeaseKeeper:
    """The thread that renews a worker's leases and announces the worker.

    ``entries()`` returns the entry ids the worker holds (it is called from this thread;
    the worker guards it with a lock). ``on_lost(ids)`` and ``on_nogroup()`` are called on
    the worker's loop (``call_soon_threadsafe``). ``loop_tick()`` is called by the worker's
    loop whenever it gets to run: the thread stops renewing a loop hung for LOOP_HUNG_S.
    """

    def __init__(self, client: Any, *, loop: Any, stream: str, group: str, consumer: str,
                 workers_key: str, announcement: Callable[[], bytes], lease_s: float,
                 entries: Callable[[], list[str]], on_lost: Callable[[list[str]], None],
                 on_nogroup: Callable[[], None]) -> None:
        self.client = client
        self.loop = loop
        self.stream, self.group, self.consumer = stream, group, consumer
        self.workers_key = workers_key
        self.announcement = announcement
        self.period = renew_period(lease_s)
        self.entries = entries
        self.on_lost = on_lost
        self.on_nogroup = on_nogroup
        self._renew = client.register_script(RENEW)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{consumer}", daemon=True)
        self._loop_seen = time.monotonic()
        self.renewals = 0  # rounds that reached Redis (for tests and stats)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the thread (its round in flight is bounded by the socket timeout)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def loop_tick(self) -> None:
        self._loop_seen = time.monotonic()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.period):
            stalled = time.monotonic() - self._loop_seen
            if stalled > LOOP_HUNG_S:
                log.error("worker %s: its event loop has not run for %.0fs; its leases are left "
                          "to run out, so that other workers take its runs", self.consumer, stalled)
                continue
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - Redis away, or a bug: the next round retries
                if not failing:
                    log.warning("worker %s: renewing its leases failed (%s); retrying every %.1fs",
                                self.consumer, exc, self.period)
                failing = True
            else:
                if failing:
                    log.info("worker %s: renewing its leases again", self.consumer)
                failing = False

    def beat(self) -> None:
        """One round: announce the worker, renew the entries it holds, report the lost ones."""
        from redis.exceptions import ResponseError

        self.client.hset(self.workers_key, self.consumer, self.announcement())
        ids = self.entries()
        if not ids:
            self.renewals += 1
            return
        try:
            lost = self._renew(keys=[self.stream], args=[self.group, self.consumer, *ids])
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The queue vanished: Redis lost its data. The worker's epoch check says so and
            # stops the runs that went with it; its consumer re-creates the group.
            self._call(self.on_nogroup)
            return
        self.renewals += 1
        if lost:
            self._call(self.on_lost, [i.decode() if isinstance(i, bytes) else i for i in lost])

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under us: the worker is gone
            pass
