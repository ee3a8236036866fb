"""api-latency: HTTP API latency while runs stream (is the event loop free?).

A probe in the driver (one keep-alive httpx client) calls two endpoints in turn every
``--probe-interval-ms``: ``health`` (the cheapest route) and ``list`` (a read of the run
store: ours ``GET /runs?limit=10``, langgraph dev ``POST /threads/search``, raw its
in-memory list). First for 2 s on an idle server, then while ``--runs`` runs of
``--events`` tokens at ``--rate``/s stream to one client each. Reported: p50/p99 of each
probe idle and loaded, and loaded p99 over idle p99.
"""

from __future__ import annotations

import threading
import time

import httpx

from ..core import Result, alternate, percentile, ratio, rounded, target_ratios, say
from ..procs import LoadGen

APPLIES = {"ours": None, "raw": None, "langgraph-dev": None}
DEFAULTS = {"runs": 20, "events": 2000, "rate": 200.0, "probe_interval_ms": 20.0, "repeat": 3}
HEADLINE = ("health_loaded_p99_ms", "list_loaded_p99_ms")
IDLE_S = 2.0


class Probe(threading.Thread):
    def __init__(self, target, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.target, self.interval_s = target, interval_s
        self.stop_evt = threading.Event()
        self.ms: dict[str, list[float]] = {name: [] for name in target.probes()}
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.target.url, timeout=30) as client:
            for method, path, body in self.target.probes().values():  # connect, warm up; untimed
                client.request(method, path, json=body)
            while not self.stop_evt.is_set():
                for name, (method, path, body) in self.target.probes().items():
                    t0 = time.perf_counter()
                    try:
                        client.request(method, path, json=body).raise_for_status()
                        self.ms[name].append((time.perf_counter() - t0) * 1000)
                    except httpx.HTTPError as exc:
                        self.errors.append(f"{name}: {exc!r}")
                    self.stop_evt.wait(self.interval_s)

    def stop(self) -> dict[str, list[float]]:
        self.stop_evt.set()
        self.join(30)
        return self.ms


def trial(target, *, runs: int, count: int, rate: float, interval_s: float, label: str) -> dict:
    probe = Probe(target, interval_s)
    probe.start()
    time.sleep(IDLE_S)
    idle = probe.stop()
    lg = LoadGen.create(target, runs, count, rate, 0.5, timeout=120 + 3 * count / rate)
    try:
        lg.wait_ready()
        probe = Probe(target, interval_s)
        probe.start()
        d = lg.collect()
        loaded = probe.stop()
    finally:
        lg.kill()
    m: dict = {}
    for name in idle:
        m[f"{name}_idle_p50_ms"] = rounded(percentile(idle[name], 0.5))
        m[f"{name}_idle_p99_ms"] = rounded(percentile(idle[name], 0.99))
        m[f"{name}_loaded_p50_ms"] = rounded(percentile(loaded[name], 0.5))
        m[f"{name}_loaded_p99_ms"] = rounded(percentile(loaded[name], 0.99))
        m[f"{name}_loaded_over_idle_p99"] = ratio(m[f"{name}_loaded_p99_ms"], m[f"{name}_idle_p99_ms"])
        m[f"{name}_probes_loaded"] = len(loaded[name])
    lat = [(r - t) * 1000 for t, r in d.pairs()]
    bad = d.incomplete(count)
    m.update({"tokens": sum(c["tokens"] for c in d.clients), "token_p99_ms": rounded(percentile(lat, 0.99)),
              "incomplete_runs": len(bad), "violations": d.violations(),
              "errors": (probe.errors + d.errors + [str(c["error"]) for c in bad if c["error"]])[:5]})
    say(f"{label:28s} health p99 {m['health_idle_p99_ms']} -> {m['health_loaded_p99_ms']}ms, "
        f"list p99 {m['list_idle_p99_ms']} -> {m['list_loaded_p99_ms']}ms, token p99 {m['token_p99_ms']}ms, "
        f"incomplete={m['incomplete_runs']}")
    return m


def run(ctx) -> Result:
    res = Result("api-latency", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    say(f"probing every {ctx.probe_interval_ms:g} ms while {ctx.runs} runs x {ctx.events} tokens at {ctx.rate:g}/s stream")
    runs = alternate(ctx.targets, ctx.repeat, lambda name, rep: trial(
        ctx.target(name), runs=ctx.runs, count=ctx.events, rate=ctx.rate,
        interval_s=ctx.probe_interval_ms / 1000, label=f"{name} #{rep + 1}"))
    res.record(runs, HEADLINE, target_ratios(runs, ctx.targets, HEADLINE), incomplete="incomplete_runs")
    return res
