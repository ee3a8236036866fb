"""watchers: connection density. 10,000 SSE watchers on one API process: 100 runs x 100
watchers, each run emitting 2 events/s.

One fresh server (memory backend with its journal, the embedded default) gets ``--runs``
gated firehose runs of ``--events`` tokens at ``--rate``/s each. ``--clients`` SSE watchers
(raw asyncio sockets, ``bench.loadgen``, split over ``--loadgen-procs`` processes; client
k watches run k % runs, so every run has clients / runs watchers) connect; once all
are READY the gates open, one run after another spread over one emission period (so the
runs' events are spread over time, not all due on the same tick), and every watcher reads
its run to the end.

10,000 connections need more file descriptors than a default soft limit of 1,024: the
driver raises its own soft RLIMIT_NOFILE before starting the server, which inherits it (a
child's limits are its parent's at fork; the server's effective limit, read from
/proc/PID/limits, is in the result), and each load generator raises its own
(``bench.clients.runner``).

Two labels, a fresh server each, alternating over ``--repeat``: ``ours/sse`` as it ships
(with its GC policy, ``server/gc_policy.py``), and ``ours/sse-default-gc``, the same server
with Python's default GC thresholds (``THOUGHTSTREAM_GC_YOUNG_THRESHOLD=0``): at 10,000
streams those promote every stream's pending wait, and full collections stop the loop for
seconds.

Reported: delivered (every watcher got every token of its run once, in order, and the
end), emit-to-receive p50/p99 of the live tokens, the server's RSS (before the watchers,
once connected, the peak while streaming, and per connection), its CPU over the streaming
window, and its asyncio tasks (the server's stats line, ``THOUGHTSTREAM_STATS_LOG_S``).
Check: all delivered and p99 <= 100 ms.
"""

from __future__ import annotations

import threading
import time
import uuid

from ..clients import raise_fd_limit
from ..core import Delivery, Result, alternate, ratios, say
from ..procs import LoadGen, RunRef, Target, cpu_seconds, rss_kib, split, start_target
from .soak import stats_lines

APPLIES = {"ours": None, "raw": "measured on ours only (issue 14, section 3); raw holds no logs to replay",
           "langgraph-dev": "measured on ours only (its dev server is not meant for 10k streams)"}
DEFAULTS = {"clients": 10000, "runs": 100, "events": 60, "rate": 2.0, "loadgen_procs": 2, "repeat": 1}
HEADLINE = ("p50_ms", "p99_ms", "server_cpu_pct", "server_rss_peak_mib")
# ours as it ships, and ours with Python's default GC policy (what it shipped with before).
LABELS: dict[str, dict[str, str]] = {
    "ours/sse": {},
    "ours/sse-default-gc": {"THOUGHTSTREAM_GC_YOUNG_THRESHOLD": "0"},
}
P99_MAX_MS = 100.0
STATS_S = 1.0
SETTLE_S = 1.0  # after READY, before the first gate: the server finishes attaching subscribers
FD_HEADROOM = 1024  # the server's own files: journal, listeners, pipes


def nofile_limit(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakRss:
    """The largest RSS of ``pids`` sampled every ``every`` s while open (a thread: /proc only)."""

    def __init__(self, pids: list[int], every: float = 0.5) -> None:
        self.pids, self.every, self.peak = pids, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pids))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def watch_many(target: Target, runs: list[RunRef], clients: int, procs: int, timeout: float) -> LoadGen:
    """``clients`` SSE watchers over ``procs`` load generators; client k of each process
    watches run k % len(runs) (each process's share is a multiple of the runs, so every
    run gets the same number of watchers)."""
    urls = [x for r in runs for x in ("--url", target.url + r.stream_url)]
    return LoadGen([[*urls, "--clients", str(n), "--timeout", str(timeout)] for n in split(clients, procs)])


def trial(ctx, label: str, rep: int) -> dict:
    clients, n_runs, count, rate = ctx.clients, ctx.runs, ctx.events, ctx.rate
    target = start_target(ctx.primary, env={"THOUGHTSTREAM_STATS_LOG_S": str(STATS_S), **LABELS[label]})
    try:
        pid = target.pids()[0]
        say(f"{label} #{rep + 1}: server pid {pid}, RLIMIT_NOFILE {nofile_limit(pid)}; {n_runs} runs x {count} "
            f"tokens at {rate:g}/s, {clients} watchers over {ctx.loadgen_procs} load generators")
        gates = [ctx.tmp / f"gate-{uuid.uuid4().hex}" for _ in range(n_runs)]
        refs = [target.new_run(count, rate, g) for g in gates]
        time.sleep(1.0)
        rss_before = rss_kib(target.pids())
        t_connect = time.time()
        lg = watch_many(target, refs, clients, ctx.loadgen_procs, timeout=180 + 2 * count / rate)
        try:
            ready_at = lg.wait_ready()
            connect_s = ready_at - t_connect
            time.sleep(SETTLE_S)
            rss_connected = rss_kib(target.pids())
            say(f"{clients} watchers connected in {connect_s:.1f} s; RSS {rss_before / 1024:.1f} -> "
                f"{rss_connected / 1024:.1f} MiB")
            cpu0 = cpu_seconds(target.pids())
            with PeakRss(target.pids()) as peak:
                for g in gates:  # spread over one period: the runs out of phase
                    g.touch()
                    time.sleep(1.0 / rate / n_runs)
                d: Delivery = lg.collect()
                cpu_s = cpu_seconds(target.pids()) - cpu0
        finally:
            lg.kill()
        tasks = [s.get("tasks") for s in stats_lines(target) if isinstance(s.get("tasks"), int)]
        m = d.stream_metrics(count=count, rate=rate, live_after=ready_at, cpu_s=cpu_s)
        m.update({
            "runs": n_runs, "watchers_per_run": clients // n_runs, "events_per_run": count,
            "delivered_all": m["incomplete_clients"] == 0 and m["violations"] == 0,
            "complete_clients": len(d.clients) - m["incomplete_clients"],
            "connect_s": round(connect_s, 1),
            "server_rss_before_mib": round(rss_before / 1024, 1),
            "server_rss_connected_mib": round(rss_connected / 1024, 1),
            "server_rss_peak_mib": round(peak.peak / 1024, 1),
            "server_kib_per_connection": round((rss_connected - rss_before) / clients, 1),
            "server_tasks_peak": max(tasks) if tasks else None,
            "server_nofile_limit": nofile_limit(pid),
        })
    finally:
        target.stop()
    say(f"{label} #{rep + 1}: delivered_all={m['delivered_all']} ({m['complete_clients']}/{clients} complete, "
        f"viol={m['violations']}) p50={m['p50_ms']}ms p99={m['p99_ms']}ms max={m['max_ms']}ms "
        f"RSS peak {m['server_rss_peak_mib']} MiB server_cpu={m['server_cpu_pct']}% "
        f"loadgen_cpu={m['loadgen_cpu_pct']}% tasks peak {m['server_tasks_peak']}")
    return m


def run(ctx) -> Result:
    res = Result("watchers", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    res.config["labels"] = LABELS
    raise_fd_limit(ctx.clients + FD_HEADROOM)  # the servers started by the trials inherit it
    runs = alternate(list(LABELS), ctx.repeat, lambda label, rep: trial(ctx, label, rep))
    measured = res.record(runs, HEADLINE, {"ours/sse / ours/sse-default-gc": ratios(runs, "ours/sse", "ours/sse-default-gc", HEADLINE)})
    for label, m in measured.items():
        res.checks[f"{label}: every watcher got every token once, in order, and the end"] = m["delivered_all"]
        res.checks[f"{label}: p99 emit-to-receive <= {P99_MAX_MS:g} ms"] = bool(
            m["p99_ms"] is not None and m["p99_ms"] <= P99_MAX_MS)
    return res
