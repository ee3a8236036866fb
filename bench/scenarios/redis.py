"""redis: fan-out through Redis across processes against the single process, in one invocation.

``single``: ``python -m server serve`` with the memory backend. ``redis``: a throwaway
redis-server (never 6379), two API processes (``serve --workers 0``) and one
``python -m server worker``; the run is POSTed to API 1, the worker executes it and
appends every event to Redis, and each API process relays it to its own SSE clients
(client i watches through API 1 + i % 2). Both get the fanout scenario's paced trial
(``--clients`` x ``--events`` at ``--rate``/s); reported: p99 and delivered/s of each,
redis over single, and the server CPU per event (all processes, redis-server included).
Only ours has a multi-process mode: raw and langgraph dev (in-memory) have none.
"""

from __future__ import annotations

from ..core import Result, alternate, ratios, say
from .fanout import trial

NO_REDIS = "it has no multi-process mode sharing runs through Redis"
APPLIES = {"ours": None, "raw": NO_REDIS, "langgraph-dev": NO_REDIS}
DEFAULTS = {"clients": 100, "events": 2000, "rate": 500.0, "repeat": 3, "loadgen_procs": 1}
HEADLINE = ("p99_ms", "p50_ms", "delivered_eps", "server_us_per_event")
TOPOLOGIES = {"single": "ours", "redis": "ours-redis"}


def run(ctx) -> Result:
    res = Result("redis", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    say(f"{ctx.clients} clients, {ctx.events} events at {ctx.rate:g}/s: single process vs Redis (2 API + worker)")
    runs = alternate(list(TOPOLOGIES), ctx.repeat, lambda label, rep: trial(
        ctx.target(TOPOLOGIES[label]), "sse", count=ctx.events, rate=ctx.rate, clients=ctx.clients,
        procs=ctx.loadgen_procs, tmp=ctx.tmp, label=f"{label} #{rep + 1}"))
    res.record(runs, HEADLINE, {"redis / single": ratios(runs, "redis", "single", HEADLINE)})
    res.ratios["redis - single p99_ms"] = round(res.measured["redis"]["p99_ms"] - res.measured["single"]["p99_ms"], 2)
    worker = [r.get("worker_cpu_ms_per_1k_events") for r in runs.get("redis", []) if r]
    worker = sorted(w for w in worker if w is not None)
    if worker:
        res.measured["redis"]["worker_cpu_ms_per_1k_events"] = worker[len(worker) // 2]
    for label, s in res.measured.items():
        res.checks[f"{label} keeps pace (>= 90% of demand)"] = bool(
            s["delivered_eps"] and s["delivered_eps"] >= 0.9 * s["demanded_eps"])
    return res
