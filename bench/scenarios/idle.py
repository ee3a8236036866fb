"""idle: memory per idle connection, SSE and Socket.IO.

For each trial a fresh server (its RSS is not yet shaped by earlier connections) gets one
quiet run (a firehose whose gate never opens); 50 connections warm it up (lazy imports,
first-use caches, allocator arenas) and go; then the RSS of the server and its child
processes is read before and 2 s after ``--connections`` more connections watching that
run (SSE streams, or Socket.IO sockets subscribed to it), divided by their number.
"""

from __future__ import annotations

import time

from ..core import Result, alternate, label_ratios, say
from ..procs import LoadGen, rss_kib
from .fanout import transport_labels

APPLIES = {"ours": None, "raw": None, "langgraph-dev": None}
DEFAULTS = {"connections": 500, "repeat": 2, "transports": "sse,socketio"}
HEADLINE = ("kib_per_connection",)
WARMUP = 50


def trial(ctx, name: str, transport: str, connections: int, label: str) -> dict:
    target = ctx.fresh(name)
    try:
        run = target.new_run(1, 1.0, ctx.tmp / "never")

        def hold(n: int) -> LoadGen:
            lg = LoadGen.watch(target, run, n, transport=transport, idle=True)
            lg.wait_ready()
            return lg

        hold(WARMUP).release()
        time.sleep(1.5)
        before = rss_kib(target.pids())
        lg = hold(connections)
        time.sleep(2.0)
        after = rss_kib(target.pids())
        lg.release()
    finally:
        target.stop()
    m = {"connections": connections, "rss_before_mib": round(before / 1024, 1),
         "rss_after_mib": round(after / 1024, 1), "kib_per_connection": round((after - before) / connections, 1)}
    say(f"{label:28s} {m['kib_per_connection']} KiB per connection "
        f"(RSS {m['rss_before_mib']} -> {m['rss_after_mib']} MiB)")
    return m


def run(ctx) -> Result:
    labels = transport_labels(ctx)
    res = Result("idle", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    runs = alternate(labels, ctx.repeat, lambda label, rep: trial(
        ctx, *label.split("/"), ctx.connections, f"{label} #{rep + 1}"))
    res.record(runs, HEADLINE, label_ratios(runs, ctx.primary, HEADLINE))
    return res
