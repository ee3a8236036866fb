"""fanout: one run, many subscribers; delivered/s and emit-to-receive latency, paced and saturated.

Each trial starts a firehose run that waits on a gate file, connects ``--clients``
(load-generator processes), opens the gate and collects: delivered/s is live tokens
received by all clients per second of the delivery window, latency is receive time minus
the graph's emit time. *paced*: ``--events`` at ``--rate``/s (demand = rate x clients);
*saturation*: ``--sat-events`` at ``--sat-rate``/s, more than one process can deliver,
which measures the ceiling. ours is measured over SSE, Socket.IO one ``event`` per event
and Socket.IO ``batch`` (``events`` lists); raw and langgraph dev over SSE.
"""

from __future__ import annotations

import time
import uuid

from ..core import NotApplicable, Result, alternate, label_ratios, ratio, say
from ..procs import TRANSPORTS, LoadGen, Target, cpu_seconds

APPLIES = {"ours": None, "raw": None, "langgraph-dev": None}
DEFAULTS = {"clients": 100, "events": 2000, "rate": 500.0, "sat_events": 5000, "sat_rate": 20000.0,
            "repeat": 3, "loadgen_procs": 1, "transports": "sse,socketio,socketio_batch"}
HEADLINE = ("delivered_eps", "p99_ms", "server_us_per_event")
SETTLE_S = 0.3  # after READY, before the gate opens: the servers finish attaching subscribers


def trial(target: Target, transport: str, *, count: int, rate: float, clients: int, procs: int,
          tmp, label: str) -> dict:
    """One gated run watched by ``clients``: the metrics of ``Delivery.stream_metrics``."""
    gate = tmp / f"gate-{uuid.uuid4().hex}"
    run = target.new_run(count, rate, gate)
    lg = LoadGen.watch(target, run, clients, transport=transport, procs=procs, timeout=120 + 3 * count / rate)
    try:
        ready_at = lg.wait_ready()
        time.sleep(SETTLE_S)
        cpu0 = cpu_seconds(target.pids())
        worker0 = cpu_seconds(target.worker_pids())
        gate.touch()
        d = lg.collect()
    finally:
        lg.kill()
    m = d.stream_metrics(count=count, rate=rate, live_after=ready_at, cpu_s=cpu_seconds(target.pids()) - cpu0)
    if target.worker_pids():
        # The run's own process: what appending each event costs (issue 14: halve it by batching).
        m["worker_cpu_ms_per_1k_events"] = round(1e6 * (cpu_seconds(target.worker_pids()) - worker0) / count, 1)
    say(f"{label:32s} delivered={m['delivered_eps']}/s of {m['demanded_eps']:g} p50={m['p50_ms']}ms "
        f"p99={m['p99_ms']}ms viol={m['violations']} incomplete={m['incomplete_clients']} "
        f"server_cpu={m['server_cpu_pct']}% loadgen_cpu={m['loadgen_cpu_pct']}%")
    return m


def transport_labels(ctx) -> list[str]:
    """``target/transport`` for every target and each of its ``--transports``; every target must
    have one (only ours speaks Socket.IO)."""
    wanted = ctx.transports.split(",")
    labels = [f"{t}/{tr}" for t in ctx.targets for tr in TRANSPORTS[t] if tr in wanted]
    for t in ctx.targets:
        if not any(label.startswith(t + "/") for label in labels):
            raise NotApplicable(f"target {t!r} has none of the transports {ctx.transports!r} "
                                f"(it has {', '.join(TRANSPORTS[t])})")
    return labels


def run(ctx) -> Result:
    labels = transport_labels(ctx)
    phases = {"paced": (ctx.events, ctx.rate)}
    if ctx.sat_events:
        phases["saturation"] = (ctx.sat_events, ctx.sat_rate)
    res = Result("fanout", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    for phase, (count, rate) in phases.items():
        say(f"{phase}: {count} events at {rate:g}/s to {ctx.clients} clients, {ctx.repeat} repeats")

        def one(label: str, rep: int) -> dict:
            name, transport = label.split("/")
            return trial(ctx.target(name), transport, count=count, rate=rate, clients=ctx.clients,
                         procs=ctx.loadgen_procs, tmp=ctx.tmp, label=f"{phase} {label} #{rep + 1}")

        runs = alternate(labels, ctx.repeat, one)
        measured = res.record(runs, HEADLINE, label_ratios(runs, ctx.primary, HEADLINE), phase=phase)
        for label, s in measured.items():
            if phase == "paced":
                res.checks[f"paced {label} keeps pace (>= 90% of demand)"] = bool(
                    s["delivered_eps"] and s["delivered_eps"] >= 0.9 * s["demanded_eps"])
    sat = res.measured.get("saturation", {})
    if "ours/sse" in sat and "ours/socketio_batch" in sat:
        r = ratio(sat["ours/socketio_batch"]["delivered_eps"], sat["ours/sse"]["delivered_eps"])
        res.checks["saturation socketio_batch delivered/s >= sse"] = {"ratio": r, "ok": bool(r and r >= 1.0)}
    return res
