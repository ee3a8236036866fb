"""soak: many short runs with watchers coming and going; does the server's memory stay flat?

A fresh server (memory backend with its journal, the embedded default) gets ``--runs``
token-paced short runs (``--events`` tokens at ``--rate``/s each), created in waves of
``--wave`` by a load generator whose clients each POST a run and stream it over SSE, their
starts spread over ``--spread-s`` seconds. While a wave runs, watchers join and leave: a
longer run gets SSE and Socket.IO watchers that are cut off mid-stream (killed), and the
previous longer run, finished by then, is replayed in full by SSE and Socket.IO watchers
from the start (from the journal once it left memory), which must get every token once,
in order.

After each wave, once nothing runs and the watchers have gone: the server's RSS (read
from /proc, the server and its children) and its asyncio task count. Tasks come from the
server's own stats line in its log (``THOUGHTSTREAM_STATS_LOG_S``, see server/stats.py):
no endpoint exposes them. The time series of the stats line (RSS, tasks, logs and records
held) is kept too. Checks: RSS after all runs within 50 MiB of RSS after the first wave
(500 runs by default), and tasks back to their baseline (the count after the first wave,
when every lazily started task exists; the count before any run is reported too).
"""

from __future__ import annotations

import json
import threading
import time

from ..core import Result, rounded, say
from ..procs import LoadGen, rss_kib, start_target

APPLIES = {"ours": None, "raw": "the raw broadcaster keeps no runs or logs: nothing to leak or bound",
           "langgraph-dev": "reads no stats line: RSS alone would not show where tasks go"}
DEFAULTS = {"runs": 5000, "wave": 500, "events": 40, "rate": 100.0, "spread_s": 12.0}
STATS_S = 0.5
# A Socket.IO client cut off mid-stream keeps its server-side socket (and its ping task)
# until a ping goes unanswered: short pings, and a wait of that long before each sample,
# so a sample counts what stays, not what is about to go.
SIO_PING_S = 5.0
SIO_GONE_S = 2 * SIO_PING_S + 2.0
RSS_SLACK_MIB = 50.0
WATCH_COUNT, WATCH_RATE = 300, 100.0  # the watched longer runs: 3 s each


def stats_lines(target) -> list[dict]:
    out = []
    for line in target.server.output().splitlines():
        _, sep, rest = line.partition("server.stats: stats ")
        if sep:
            try:
                out.append(json.loads(rest))
            except ValueError:
                pass
    return out


def quiet_stats(target, timeout: float = 120.0) -> dict:
    """The first stats line written after nothing runs, nothing is queued and every live
    log has ended, and the connections have had time to close."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = (stats_lines(target) or [{}])[-1]
        if last.get("runner_running") == 0 and last.get("runner_queued") == 0 and last.get("bus_logs_live") == 0:
            time.sleep(SIO_GONE_S)  # watchers' sockets close, their tasks with them
            seen = len(stats_lines(target))
            while len(stats_lines(target)) <= seen:
                time.sleep(STATS_S / 2)
            return stats_lines(target)[-1]
        time.sleep(STATS_S)
    raise TimeoutError(f"the server did not go quiet within {timeout}s: {last}")


class Watchers(threading.Thread):
    """Watchers joining and leaving while a wave runs (see the module's docstring)."""

    def __init__(self, target, stop: threading.Event, previous) -> None:
        super().__init__(daemon=True)
        self.target, self.stop_event = target, stop
        self.previous = previous  # a finished watched run, to replay
        self.cut = self.replayed = self.bad = 0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.round()
        except Exception as exc:  # reported, and the soak goes on
            self.errors.append(repr(exc))

    def round(self) -> None:
        t = self.target
        run = t.new_run(WATCH_COUNT, WATCH_RATE)
        # Join a live run, leave it mid-stream (the connection just drops).
        leaving = [LoadGen.watch(t, run, 4, transport="sse"), LoadGen.watch(t, run, 2, transport="socketio_batch")]
        for lg in leaving:
            lg.wait_ready()
        time.sleep(1.0)
        for lg in leaving:
            lg.kill()
        self.cut += 6
        # Replay a finished one whole, from its start.
        if self.previous is not None:
            replays = [LoadGen.watch(t, self.previous, 2, transport="sse", timeout=60),
                       LoadGen.watch(t, self.previous, 1, transport="socketio", timeout=60)]
            for lg in replays:
                try:
                    lg.wait_ready()
                    d = lg.collect()
                    bad = d.incomplete(WATCH_COUNT)
                    self.bad += len(bad) + d.violations()
                    self.errors += d.errors[:2] + [str(c["error"]) for c in bad if c["error"]][:2]
                    self.replayed += len(d.clients)
                finally:
                    lg.kill()
        self.previous = run
        time.sleep(0.5)


def run(ctx) -> Result:
    res = Result("soak", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    target = start_target(ctx.primary, env={"THOUGHTSTREAM_STATS_LOG_S": str(STATS_S),
                                            "THOUGHTSTREAM_SOCKETIO_PING_INTERVAL_S": str(SIO_PING_S),
                                            "THOUGHTSTREAM_SOCKETIO_PING_TIMEOUT_S": str(SIO_PING_S)})
    ctx.stack.callback(target.stop)
    say(f"{ctx.runs} runs of {ctx.events} tokens at {ctx.rate:g}/s in waves of {ctx.wave} "
        f"(spread over {ctx.spread_s:g}s), watchers joining and leaving")
    initial = quiet_stats(target)
    samples, previous = [], None
    watch = {"cut_off": 0, "replayed": 0, "bad_replays": 0, "errors": []}
    done = 0
    while done < ctx.runs:
        n = min(ctx.wave, ctx.runs - done)
        stop = threading.Event()
        watchers = Watchers(target, stop, previous)
        watchers.start()
        lg = LoadGen.create(target, n, ctx.events, ctx.rate, ctx.spread_s,
                            timeout=300 + ctx.spread_s + 3 * ctx.events / ctx.rate)
        try:
            lg.wait_ready()
            d = lg.collect()
        finally:
            lg.kill()
            stop.set()
            watchers.join(120)
        previous = watchers.previous
        watch["cut_off"] += watchers.cut
        watch["replayed"] += watchers.replayed
        watch["bad_replays"] += watchers.bad
        watch["errors"] = (watch["errors"] + watchers.errors)[:5]
        done += n
        bad = d.incomplete(ctx.events)
        st = quiet_stats(target)
        s = {"runs": done, "rss_mib": round(rss_kib(target.pids()) / 1024, 1), "tasks": st["tasks"],
             "incomplete_runs": len(bad), "violations": d.violations(),
             "logs_finished_in_memory": st.get("bus_logs_finished"),
             "finished_events_in_memory": st.get("bus_finished_events"),
             "records_in_memory": st.get("store_records"),
             "errors": (d.errors + [str(c["error"]) for c in bad if c["error"]])[:3]}
        samples.append(s)
        say(f"after {done:5d} runs: RSS {s['rss_mib']} MiB, tasks {s['tasks']}, finished logs in memory "
            f"{s['logs_finished_in_memory']} ({s['finished_events_in_memory']} events), records "
            f"{s['records_in_memory']}, incomplete {s['incomplete_runs']}, watchers cut {watch['cut_off']} "
            f"replayed {watch['replayed']} bad {watch['bad_replays']}")
    first, last = samples[0], samples[-1]
    series = stats_lines(target)
    step = max(1, len(series) // 200)  # about 200 points of the stats line over time
    res.measured = {ctx.primary: {
        "rss_mib_first_wave": first["rss_mib"], "rss_mib_end": last["rss_mib"],
        "rss_growth_mib": rounded(last["rss_mib"] - first["rss_mib"], 1),
        "tasks_before_runs": initial["tasks"], "tasks_baseline": first["tasks"], "tasks_end": last["tasks"],
        "incomplete_runs": sum(s["incomplete_runs"] for s in samples),
        "violations": sum(s["violations"] for s in samples),
        "watchers": watch,
        "after_each_wave": samples,
        "stats_over_time": [{"t": i * STATS_S, "rss_mib": rounded((x.get("rss_kib") or 0) / 1024, 1),
                             "tasks": x["tasks"], "logs_live": x.get("bus_logs_live"),
                             "logs_finished": x.get("bus_logs_finished"), "records": x.get("store_records"),
                             "running": x.get("runner_running")}
                            for i, x in enumerate(series) if i % step == 0],
    }}
    res.checks = {
        f"RSS after {last['runs']} runs within {RSS_SLACK_MIB:g} MiB of RSS after {first['runs']}":
            last["rss_mib"] - first["rss_mib"] <= RSS_SLACK_MIB,
        "tasks back to their baseline": last["tasks"] <= first["tasks"],
        "every run complete and in order": sum(s["incomplete_runs"] + s["violations"] for s in samples) == 0,
        "every replay of a finished run complete and in order": watch["bad_replays"] == 0 and watch["replayed"] > 0,
    }
    res.notes.append(f"RSS from /proc (server and children); tasks from the server's stats line "
                     f"(THOUGHTSTREAM_STATS_LOG_S={STATS_S:g}), samples taken once nothing runs and "
                     f"{SIO_GONE_S:g}s more (Socket.IO pings every {SIO_PING_S:g}s notice cut-off clients)")
    res.notes.append("tasks include the server's max_concurrent_runs run workers (1000 under the bench)")
    return res
