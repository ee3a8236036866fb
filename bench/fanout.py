"""Fan-out benchmark: one run, many SSE subscribers; thoughtstream against a raw broadcaster.

    .venv/bin/python -m bench.fanout [--clients 100 --events 2000 --rate 500 --repeat 3]

Prints one JSON document on stdout (progress on stderr); bench/README.md explains it.
Scenario A is the real server (``python -m server serve``, memory backend) running
``bench/graphs.py:firehose``; scenario B is ``bench/raw_broadcaster.py``. Both are fed
the same events at the same rate and read by the same load generator processes
(``bench/loadgen.py``); each is measured paced (``--rate``) and saturated
(``--saturation-rate``, more than the machine can deliver). Runs alternate between
the two servers so a noisy neighbour hits both alike; results are medians over
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from contextlib import ExitStack
from typing import Any

import httpx

from tests.support import ServerProcess, wait_port

from .procs import LoadGenerators, LoadResult, blaster, cpu_seconds, raw_broadcaster, write_syscalls
from .profile_summary import report

TS = "thoughtstream"
RAW = "raw"


def say(msg: str) -> None:
    print(f"[fanout] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def metrics(res: LoadResult, *, count: int, rate: float, clients: int, server_cpu_s: float,
            server_writes: int = 0) -> dict:
    """Delivered/s, emit-to-receive latency and order checks of one trial."""
    s = res.samples
    ts, recv = s[0::2], s[1::2]
    live = [(t, r) for t, r in zip(ts, recv) if t >= res.ready_at]
    lat = sorted((r - t) * 1000.0 for t, r in live)
    first_ts = min((t for t, _ in live), default=float("nan"))
    last_ts = max((t for t, _ in live), default=float("nan"))
    last_recv = max((r for _, r in live), default=float("nan"))
    window = last_recv - first_ts
    bad = [c for c in res.clients if c["thoughts"] != count or not c["ended"] or c["error"]]
    return {
        "clients": clients,
        "events": count,
        "demanded_eps": rate * clients,
        "delivered_eps": round(len(live) / window, 1) if window > 0 else None,
        "produced_eps": round(count / (last_ts - first_ts), 1) if last_ts > first_ts else None,
        "p50_ms": round(percentile(lat, 0.50), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(lat[-1], 2) if lat else None,
        "delivery_window_s": round(window, 3),
        "received_events": len(ts),
        "live_events": len(live),
        "violations": sum(c["violations"] for c in res.clients),
        "incomplete_clients": len(bad),
        "server_cpu_pct": round(100 * server_cpu_s / window, 1) if window > 0 else None,
        "server_us_per_event": round(1e6 * server_cpu_s / len(ts), 2) if len(ts) and server_cpu_s else None,
        "loadgen_cpu_pct": round(100 * res.cpu_s / window, 1) if window > 0 else None,
        "loadgen_us_per_event": round(1e6 * res.cpu_s / len(ts), 2) if len(ts) else None,
        "reads_per_client": round(statistics.mean(c["reads"] for c in res.clients), 1) if res.clients else 0,
        "server_writes_per_client": round(server_writes / clients, 1) if server_writes else None,
        "events_per_server_write": round(len(ts) / server_writes, 2) if server_writes else None,
        "server_us_per_write": round(1e6 * server_cpu_s / server_writes, 1) if server_writes else None,
        "errors": (res.errors + [c["error"] for c in bad if c["error"]])[:5],
    }


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the server for the trial (``--profile``); None if py-spy is missing."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        say("py-spy not found (pip install py-spy): not profiling")
        return None
    proc = subprocess.Popen([exe, "record", "-p", str(pid), "--format", "raw", "--rate", "250",
                             "--nonblocking", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attach before the events flow
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def trial(target: str, base_url: str, server_pid: int, *, count: int, rate: float, clients: int,
          procs: int, tmp: Path, profile: Path | None = None) -> dict:
    timeout = 120.0 + 3 * count / rate
    if target == TS:
        gate = tmp / f"gate-{uuid.uuid4().hex}"
        r = httpx.post(base_url + "/runs", json={"agent": "firehose", "input": {
            "count": count, "rate": rate, "gate": str(gate), "gate_timeout_s": 120}}, timeout=10)
        r.raise_for_status()
        url = base_url + r.json()["events_url"]

        def start() -> None:
            gate.touch()
    else:
        url = base_url + "/events"

        def start() -> None:
            httpx.post(f"{base_url}/start?count={count}&rate={rate}", timeout=10).raise_for_status()

    lg = LoadGenerators(url, clients, procs, tmp, timeout)
    try:
        ready_at = lg.wait_ready()
        profiler = start_profiler(server_pid, profile) if profile else None
        cpu0, writes0 = cpu_seconds(server_pid), write_syscalls(server_pid)
        started_at = time.time()
        start()
        res = lg.collect(ready_at, started_at)
        stop_profiler(profiler)
    finally:
        lg.kill()
    m = metrics(res, count=count, rate=rate, clients=clients, server_cpu_s=cpu_seconds(server_pid) - cpu0,
                server_writes=write_syscalls(server_pid) - writes0)
    say(f"{target:13s} rate={rate:g} delivered={m['delivered_eps']}/s of {m['demanded_eps']:g} "
        f"p50={m['p50_ms']}ms p99={m['p99_ms']}ms max={m['max_ms']}ms viol={m['violations']} "
        f"incomplete={m['incomplete_clients']} server_cpu={m['server_cpu_pct']}% "
        f"events/write={m['events_per_server_write']} "
        f"loadgen_cpu={m['loadgen_cpu_pct']}%")
    return m


def median_of(runs: list[dict]) -> dict:
    """Per-key median over repeats (numbers); the rest from the first run."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if values and len(values) == len(runs):
            med = statistics.median(values)
            out[key] = round(med, 2) if isinstance(med, float) else med
        elif key == "errors":
            out[key] = [e for r in runs for e in r[key]][:5]
        else:
            out[key] = first
    if len(runs) > 1:
        out["delivered_eps_runs"] = [r["delivered_eps"] for r in runs]
        out["p99_ms_runs"] = [r["p99_ms"] for r in runs]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def compare(ts_runs: list[dict], raw_runs: list[dict]) -> dict:
    """Medians of each side, their ratio, and the median of the per-repeat (paired) ratios."""
    ts, raw = median_of(ts_runs), median_of(raw_runs)
    paired = [r for r in (ratio(a["delivered_eps"], b["delivered_eps"]) for a, b in zip(ts_runs, raw_runs)) if r]
    return {TS: ts, RAW: raw, "ratio_delivered": ratio(ts["delivered_eps"], raw["delivered_eps"]),
            "ratio_delivered_paired_median": round(statistics.median(paired), 3) if paired else None,
            "server_cpu_per_event_ratio": ratio(ts.get("server_us_per_event"), raw.get("server_us_per_event")),
            "p99_ms": {TS: ts["p99_ms"], RAW: raw["p99_ms"]}}


def loadgen_capacity(clients: int, count: int, procs: int, tmp: Path) -> dict:
    """What the load generators cost per event when the 'server' costs (almost) nothing."""
    server = blaster(tmp, clients, count).start(health=None)
    try:
        wait_port(server.port)
        lg = LoadGenerators(server.url + "/events", clients, procs, tmp, 120.0)
        try:
            ready_at = lg.wait_ready()
            res = lg.collect(ready_at, time.time())
        finally:
            lg.kill()
    finally:
        server.stop()
    m = metrics(res, count=count, rate=1e9, clients=clients, server_cpu_s=0.0)
    us = m["loadgen_us_per_event"]
    est = round(1e6 / us) if us else None
    say(f"loadgen: blaster delivered {m['delivered_eps']} events/s at loadgen_cpu={m['loadgen_cpu_pct']}%, "
        f"{us} us/event: one core would take ~{est} events/s")
    return {"procs": procs, "blaster_delivered_eps": m["delivered_eps"], "cpu_pct": m["loadgen_cpu_pct"],
            "us_per_event": us, "capacity_eps_per_core": est, "incomplete_clients": m["incomplete_clients"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fan-out benchmark: thoughtstream vs a raw Starlette SSE broadcaster.")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--events", type=int, default=2000, help="events per run, paced scenario")
    p.add_argument("--rate", type=float, default=500.0, help="events/s per run, paced scenario")
    p.add_argument("--saturation-rate", type=float, default=20000.0)
    p.add_argument("--saturation-events", type=int, default=5000)
    p.add_argument("--no-saturation", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="medians over this many runs")
    p.add_argument("--loadgen-procs", type=int, default=0,
                   help="load-generator processes sharing the clients (default: 1 on a machine with "
                        "<= 2 cores, where a second one only takes CPU from the server; else 2)")
    p.add_argument("--no-capacity-check", action="store_true", help="skip measuring the load generator's cost")
    p.add_argument("--json-out", type=Path, help="also write the JSON here")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the thoughtstream server (repeatable), e.g. "
                        "THOUGHTSTREAM_JOURNAL=false")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy each server during each trial; collapsed stacks and summaries go to DIR "
                        "(sampling costs the server some throughput: do not compare with unprofiled numbers)")
    args = p.parse_args(argv)
    if args.loadgen_procs <= 0:
        args.loadgen_procs = 1 if (os.cpu_count() or 1) <= 2 else 2
    bad = [kv for kv in args.server_env if "=" not in kv]
    if bad:
        p.error(f"--server-env takes KEY=VALUE, got {bad}")
    args.server_env_dict = dict(kv.split("=", 1) for kv in args.server_env)
    return args


def run_trials(args: argparse.Namespace, scenarios: list[tuple[str, int, float]], tmp: Path) -> dict:
    """Both servers up once; every scenario on both, alternating which goes first."""
    results: dict[str, dict[str, list[dict]]] = {name: {TS: [], RAW: []} for name, _, _ in scenarios}
    env = {
        "THOUGHTSTREAM_LOG_LEVEL": "warning",
        # no trimming mid-run, whatever --events says
        "THOUGHTSTREAM_LOG_MAX_EVENTS": str(max(10_000, max(c for _, c, _ in scenarios) + 100)),
        # its own data dir: nothing the server keeps on disk lands in the repo or meets other servers
        "THOUGHTSTREAM_DATA_DIR": str(tmp / "data"),
        **args.server_env_dict,
    }
    with ExitStack() as stack:
        ts_server = stack.enter_context(ServerProcess("--agent", "firehose=bench/graphs.py:firehose", env=env))
        raw_server = raw_broadcaster(tmp).start()
        stack.callback(raw_server.stop)
        servers = {TS: (ts_server.url, ts_server.proc.pid), RAW: (raw_server.url, raw_server.proc.pid)}
        for rep in range(args.repeat):
            order = [TS, RAW] if rep % 2 == 0 else [RAW, TS]
            for name, count, rate in scenarios:
                say(f"repeat {rep + 1}/{args.repeat}: {name} ({count} events at {rate:g}/s, {args.clients} clients)")
                for target in order:
                    url, pid = servers[target]
                    prof = args.profile / f"{target}-{name}-{rep + 1}.txt" if args.profile else None
                    results[name][target].append(trial(
                        target, url, pid, count=count, rate=rate, clients=args.clients,
                        procs=args.loadgen_procs, tmp=tmp, profile=prof))
                    if prof is not None and prof.exists():
                        prof.with_suffix(".summary").write_text(report(prof, top=30) + "\n")
    return results


def goals(doc: dict, scenarios: list[tuple[str, int, float]]) -> dict:
    def keeps_pace(m: dict) -> bool:
        return bool(m["delivered_eps"] and m["delivered_eps"] >= 0.9 * m["demanded_eps"])

    paced_ts, paced_raw = doc["paced"][TS], doc["paced"][RAW]
    return {
        "keeps_pace": keeps_pace(paced_ts),
        "p99_le_50ms": bool(paced_ts["p99_ms"] <= 50.0),
        "saturation_ratio_ge_0.8": bool("saturation" in doc and (doc["saturation"]["ratio_delivered"] or 0) >= 0.8),
        # The same checks on the ceiling: when raw misses them too, the machine was too busy to judge.
        "raw_keeps_pace": keeps_pace(paced_raw),
        "raw_p99_le_50ms": bool(paced_raw["p99_ms"] <= 50.0),
        "no_violations": all(doc[n][t]["violations"] == 0 and doc[n][t]["incomplete_clients"] == 0
                             for n, _, _ in scenarios for t in (TS, RAW)),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios: list[tuple[str, int, float]] = [("paced", args.events, args.rate)]
    if not args.no_saturation:
        scenarios.append(("saturation", args.saturation_events, args.saturation_rate))
    load1 = os.getloadavg()
    doc: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in load1],
                    # other work competing for the cores: trust ratios more than absolute numbers
                    "busy_at_start": load1[0] > (os.cpu_count() or 1) * 0.5},
        "config": {"clients": args.clients, "events": args.events, "rate": args.rate,
                   "saturation_events": args.saturation_events, "saturation_rate": args.saturation_rate,
                   "repeat": args.repeat, "loadgen_procs": args.loadgen_procs,
                   "server_env": args.server_env_dict},
    }
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp_s:
        tmp = Path(tmp_s)
        if not args.no_capacity_check:
            doc["loadgen"] = loadgen_capacity(args.clients, max(c for _, c, _ in scenarios),
                                              args.loadgen_procs, tmp)
        results = run_trials(args, scenarios, tmp)
    for name, _, _ in scenarios:
        doc[name] = compare(results[name][TS], results[name][RAW])
    doc["goals"] = goals(doc, scenarios)
    if doc.get("loadgen", {}).get("capacity_eps_per_core"):
        top = max((doc[n][t]["delivered_eps"] or 0) for n, _, _ in scenarios for t in (TS, RAW))
        cap = doc["loadgen"]["capacity_eps_per_core"] * args.loadgen_procs
        doc["loadgen"]["headroom_vs_best_server"] = round(cap / top, 2) if top else None
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
