"""runs: many concurrent token-paced runs, one subscriber each, like users of a real model.

``--runs`` clients each create their own run of ``--events`` tokens at ``--rate``
tokens/s (a chat model's pace), their starts spread over ``--spread-s`` seconds like
arriving users, and stream it: POST /runs then GET its events (ours, raw), or
``POST /runs/stream`` whose answer is the stream (langgraph dev). Measured: the
server's CPU per 1,000 delivered tokens (all its processes), token latency (receive
time - the graph's emit time) p50/p99, time to first token from the client's POST
(p50/p99 over runs).
"""

from __future__ import annotations

from ..core import Result, alternate, percentile, rounded, target_ratios, say
from ..procs import LoadGen, cpu_seconds

APPLIES = {"ours": None, "raw": None, "langgraph-dev": None}
DEFAULTS = {"runs": 50, "events": 300, "rate": 50.0, "spread_s": 2.0, "repeat": 3}
HEADLINE = ("cpu_ms_per_1k_events", "token_p99_ms", "ttft_p50_ms", "ttft_p99_ms")


def trial(target, *, runs: int, count: int, rate: float, spread_s: float, label: str) -> dict:
    lg = LoadGen.create(target, runs, count, rate, spread_s, timeout=120 + 3 * count / rate + spread_s)
    try:
        lg.wait_ready()
        cpu0 = cpu_seconds(target.pids())
        d = lg.collect()
    finally:
        lg.kill()
    cpu_s = cpu_seconds(target.pids()) - cpu0
    lat = [(r - t) * 1000 for t, r in d.pairs()]
    ttft = [(tri[2] - c["started"]) * 1000 for c, tri in zip(d.clients, d.triplets) if len(tri)]
    tokens = sum(c["tokens"] for c in d.clients)
    bad = d.incomplete(count)
    m = {
        "runs": runs, "tokens": tokens,
        "cpu_ms_per_1k_events": rounded(1e6 * cpu_s / tokens, 1) if tokens else None,
        "server_cpu_s": round(cpu_s, 2),
        "token_p50_ms": rounded(percentile(lat, 0.5)), "token_p99_ms": rounded(percentile(lat, 0.99)),
        "ttft_p50_ms": rounded(percentile(ttft, 0.5)), "ttft_p99_ms": rounded(percentile(ttft, 0.99)),
        "violations": d.violations(), "incomplete_runs": len(bad),
        "errors": (d.errors + [str(c["error"]) for c in bad if c["error"]])[:5],
    }
    say(f"{label:28s} cpu={m['cpu_ms_per_1k_events']} ms/1k tokens p99={m['token_p99_ms']}ms "
        f"ttft p50={m['ttft_p50_ms']}ms p99={m['ttft_p99_ms']}ms incomplete={m['incomplete_runs']}")
    return m


def run(ctx) -> Result:
    res = Result("runs", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    say(f"{ctx.runs} runs x {ctx.events} tokens at {ctx.rate:g}/s, starting over {ctx.spread_s:g}s")
    runs = alternate(ctx.targets, ctx.repeat, lambda name, rep: trial(
        ctx.target(name), runs=ctx.runs, count=ctx.events, rate=ctx.rate, spread_s=ctx.spread_s,
        label=f"{name} #{rep + 1}"))
    res.record(runs, HEADLINE, target_ratios(runs, ctx.targets, HEADLINE), incomplete="incomplete_runs")
    return res
