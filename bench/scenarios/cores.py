"""cores: many concurrent chat-model runs on every core (issue 14, section 4).

``--runs`` clients (default 1,000) each POST their own run of ``bench/graphs.py:chat`` (a
chat model streaming ``--events`` tokens at ``--rate``/s through LangChain's callbacks
and LangGraph's ``messages`` stream mode), starts spread over ``--spread-s`` seconds,
and stream it over SSE, the clients split over ``--loadgen-procs`` load-generator
processes. Labels, alternated trial by trial in one invocation:

* ``ours-workers``: ``serve --workers 2`` (its private redis-server, two worker processes
  executing the runs, the serve process relaying the events): every core;
* ``ours``: ``serve``, the embedded default (one process);
* ``langgraph-dev``: ``langgraph dev`` serving the same graph, ``POST /runs/stream`` with
  ``stream_mode: ["messages-tuple"]``.

Ours streams THOUGHT events from ``GET /runs/{id}/events``. Reported per label: runs
completed (every token, in order, and the stream's end), token latency (receive - the
model's emit time) p50/p99, time to first token from the POST p50/p99, server CPU-ms per
1,000 tokens (every process of the target: workers and redis-server included), tokens/s
delivered over the trial, and the load average when the trial began.
"""

from __future__ import annotations

import os
import time

from ..core import Result, alternate, percentile, ratios, rounded, say
from ..procs import LoadGen, cpu_seconds

APPLIES = {"ours": None, "langgraph-dev": None,
           "raw": "raw has no chat model: it streams the firehose schedule only (see the runs scenario)"}
DEFAULTS = {"runs": 1000, "events": 200, "rate": 50.0, "spread_s": 5.0, "repeat": 1, "loadgen_procs": 2}
HEADLINE = ("completed_runs", "token_p50_ms", "token_p99_ms", "ttft_p50_ms", "ttft_p99_ms",
            "cpu_ms_per_1k_tokens", "tokens_per_s")
TARGET_OF = {"ours-workers": "ours-workers", "ours": "ours-chat", "langgraph-dev": "langgraph-dev-chat"}


def trial(target, *, runs: int, count: int, rate: float, spread_s: float, procs: int, label: str) -> dict:
    load = os.getloadavg()
    # Generous: an overloaded target falls behind the schedule, and how far is the measurement.
    lg = LoadGen.create(target, runs, count, rate, spread_s, timeout=600 + spread_s, procs=procs)
    try:
        lg.wait_ready()
        t0 = time.time()
        cpu0 = cpu_seconds(target.pids())
        d = lg.collect()
    finally:
        lg.kill()
    cpu_s = cpu_seconds(target.pids()) - cpu0
    lat = [(r - t) * 1000 for t, r in d.pairs()]
    ttft = [(tri[2] - c["started"]) * 1000 for c, tri in zip(d.clients, d.triplets) if len(tri)]
    last = max((tri[-1] for tri in d.triplets if len(tri)), default=t0)
    tokens = sum(c["tokens"] for c in d.clients)
    bad = d.incomplete(count)
    m = {
        "runs": runs, "completed_runs": runs - len(bad), "incomplete_runs": len(bad), "tokens": tokens,
        "token_p50_ms": rounded(percentile(lat, 0.5)), "token_p99_ms": rounded(percentile(lat, 0.99)),
        "token_max_ms": rounded(max(lat)) if lat else None,
        "ttft_p50_ms": rounded(percentile(ttft, 0.5)), "ttft_p99_ms": rounded(percentile(ttft, 0.99)),
        "cpu_ms_per_1k_tokens": rounded(1e6 * cpu_s / tokens, 1) if tokens else None,
        "server_cpu_s": round(cpu_s, 2),
        "tokens_per_s": round(tokens / (last - t0), 1) if tokens and last > t0 else None,
        "trial_s": round(last - t0, 2), "loadavg_1m_at_start": round(load[0], 2),
        "loadgen_cpu_s": round(d.cpu_s, 2), "violations": d.violations(),
        "errors": (d.errors + [str(c["error"]) for c in bad if c["error"]])[:5],
    }
    say(f"{label:22s} completed={m['completed_runs']}/{runs} p50={m['token_p50_ms']}ms p99={m['token_p99_ms']}ms "
        f"ttft p50={m['ttft_p50_ms']}ms p99={m['ttft_p99_ms']}ms cpu={m['cpu_ms_per_1k_tokens']} ms/1k "
        f"{m['tokens_per_s']} tokens/s in {m['trial_s']}s (load {load[0]:.2f})")
    return m


def run(ctx) -> Result:
    res = Result("cores", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    labels = (["ours-workers", "ours"] if "ours" in ctx.targets else []) + \
        [t for t in ctx.targets if t != "ours"]
    say(f"{ctx.runs} chat runs x {ctx.events} tokens at {ctx.rate:g}/s, starting over {ctx.spread_s:g}s, "
        f"{ctx.loadgen_procs} load generators; labels {labels}")
    runs = alternate(labels, ctx.repeat, lambda label, rep: trial(
        ctx.target(TARGET_OF[label]), runs=ctx.runs, count=ctx.events, rate=ctx.rate, spread_s=ctx.spread_s,
        procs=ctx.loadgen_procs, label=f"{label} #{rep + 1}"))
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    res.record(runs, HEADLINE, {f"{a} / {b}": ratios(runs, a, b, HEADLINE) for a, b in pairs},
               incomplete="incomplete_runs")
    for label, m in res.measured.items():
        res.checks[f"{label}: all {ctx.runs} runs complete"] = m["completed_runs"] == ctx.runs
    return res
