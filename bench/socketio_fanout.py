"""Fan-out over Socket.IO (WebSocket) beside SSE, on one server, in one run; plus idle memory.

    .venv/bin/python -m bench.socketio_fanout [--clients 100 --events 2000 --rate 500 --repeat 3
                                               --idle-connections 1000]

Prints one JSON document on stdout (progress on stderr); bench/README_socketio.md explains it.

Fan-out: one ``python -m server serve`` (memory backend) runs ``bench/graphs.py:firehose``;
each trial starts a run that waits on a gate file, connects the clients (load-generator
processes: ``bench.loadgen`` for SSE, ``bench.socketio_loadgen`` for Socket.IO, both raw
asyncio sockets), then opens the gate, so latencies are of live delivery. Trials
alternate the transport order per repeat; numbers are medians. Paced: ``--rate`` events/s
(the demand is rate x clients deliveries/s). Saturation: far more than the machine can
deliver, which measures each transport's ceiling.

Idle memory: a fresh server per transport, one quiet run (a firehose that waits on a
gate that never opens), RSS of the server process before and after ``--idle-connections``
connections watching it, divided by their number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support import ROOT, ServerProcess

from .fanout import median_of, metrics
from .procs import LoadGenerators, cpu_seconds
from .socketio_loadgen import raise_fd_limit

SSE, SIO, SIOB = "sse", "socketio", "socketio_batch"
TRANSPORTS = (SSE, SIO, SIOB)


def say(msg: str) -> None:
    print(f"[socketio_fanout] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class SioLoadGenerators(LoadGenerators):
    """``bench.socketio_loadgen`` processes sharing the clients (same stdout/file contract as SSE's)."""

    def __init__(self, base_url: str, run_id: str, clients: int, procs: int, out_dir: Path, timeout: float,
                 batch: bool = False) -> None:
        self.out = [out_dir / f"sio-{i}-{time.monotonic_ns()}" for i in range(procs)]
        split = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.socketio_loadgen", "--url", base_url, "--run-id", run_id,
                 "--clients", str(n), "--timeout", str(timeout), "--out", str(out), *(["--batch"] if batch else [])],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n, out in zip(split, self.out) if n
        ]


def start_gated_run(base_url: str, count: int, rate: float, gate: Path) -> str:
    r = httpx.post(base_url + "/runs", json={"agent": "firehose", "input": {
        "count": count, "rate": rate, "gate": str(gate), "gate_timeout_s": 600}}, timeout=10)
    r.raise_for_status()
    return r.json()["run_id"]


def trial(transport: str, server: ServerProcess, *, count: int, rate: float, clients: int,
          procs: int, tmp: Path) -> dict:
    timeout = 120.0 + 3 * count / rate
    gate = tmp / f"gate-{uuid.uuid4().hex}"
    run_id = start_gated_run(server.url, count, rate, gate)
    if transport == SSE:
        lg: LoadGenerators = LoadGenerators(f"{server.url}/runs/{run_id}/events", clients, procs, tmp, timeout)
    else:
        lg = SioLoadGenerators(server.url, run_id, clients, procs, tmp, timeout, batch=transport == SIOB)
    pid = server.proc.pid
    try:
        ready_at = lg.wait_ready()
        cpu0 = cpu_seconds(pid)
        started_at = time.time()
        gate.touch()
        res = lg.collect(ready_at, started_at)
    finally:
        lg.kill()
    m = metrics(res, count=count, rate=rate, clients=clients, server_cpu_s=cpu_seconds(pid) - cpu0)
    say(f"{transport:14s} rate={rate:g} delivered={m['delivered_eps']}/s of {m['demanded_eps']:g} "
        f"p50={m['p50_ms']}ms p99={m['p99_ms']}ms max={m['max_ms']}ms viol={m['violations']} "
        f"incomplete={m['incomplete_clients']} server_cpu={m['server_cpu_pct']}% "
        f"loadgen_cpu={m['loadgen_cpu_pct']}%")
    return m


def idle_memory(transport: str, connections: int, tmp: Path) -> dict:
    """RSS growth of a fresh server per idle connection watching one quiet run."""
    server = ServerProcess("--agent", "firehose=bench/graphs.py:firehose",
                           env={"THOUGHTSTREAM_LOG_LEVEL": "warning"}).start()
    try:
        run_id = start_gated_run(server.url, 1, 1.0, tmp / f"never-{uuid.uuid4().hex}")
        pid = server.proc.pid

        def hold(n: int) -> subprocess.Popen[str]:
            p = subprocess.Popen(
                [sys.executable, "-m", "bench.socketio_idle", "--transport", transport, "--url", server.url,
                 "--run-id", run_id, "--clients", str(n)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = p.stdout.readline().split() if p.stdout else []
            if not line or line[0] != "READY" or int(line[2]) != n:
                p.kill()
                raise RuntimeError(f"idle clients failed: {line} {p.stderr.read()[-2000:] if p.stderr else ''}")
            return p

        def release(p: subprocess.Popen[str]) -> None:
            p.stdin.close()
            p.wait(30)

        # Warm up (lazy imports, first-use caches, allocator arenas), then measure.
        release(hold(50))
        time.sleep(1.5)
        before = rss_kib(pid)
        holder = hold(connections)
        time.sleep(2.0)
        after = rss_kib(pid)
        release(holder)
        time.sleep(1.0)
        after_close = rss_kib(pid)
    finally:
        server.stop()
    out = {"connections": connections, "rss_before_mib": round(before / 1024, 1),
           "rss_after_mib": round(after / 1024, 1), "rss_after_close_mib": round(after_close / 1024, 1),
           "kib_per_connection": round((after - before) / connections, 1)}
    say(f"idle {transport:9s} {connections} connections: {out['kib_per_connection']} KiB each "
        f"(RSS {out['rss_before_mib']} -> {out['rss_after_mib']} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--events", type=int, default=2000, help="events per run, paced scenario")
    p.add_argument("--rate", type=float, default=500.0, help="events/s per run, paced scenario")
    p.add_argument("--saturation-rate", type=float, default=20000.0)
    p.add_argument("--saturation-events", type=int, default=5000)
    p.add_argument("--no-saturation", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="medians over this many runs")
    p.add_argument("--loadgen-procs", type=int, default=1, help="load-generator processes sharing the clients")
    p.add_argument("--idle-connections", type=int, default=1000)
    p.add_argument("--no-idle", action="store_true")
    p.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    raise_fd_limit(2 * args.idle_connections + 1024)  # the servers inherit it

    scenarios: list[tuple[str, int, float]] = [("paced", args.events, args.rate)]
    if not args.no_saturation:
        scenarios.append(("saturation", args.saturation_events, args.saturation_rate))
    results: dict[str, dict[str, list[dict]]] = {name: {t: [] for t in TRANSPORTS} for name, _, _ in scenarios}
    env = {"THOUGHTSTREAM_LOG_LEVEL": "warning",
           "THOUGHTSTREAM_LOG_MAX_EVENTS": str(max(10_000, max(c for _, c, _ in scenarios) + 100))}
    doc: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "config": {"clients": args.clients, "events": args.events, "rate": args.rate,
                   "saturation_events": args.saturation_events, "saturation_rate": args.saturation_rate,
                   "repeat": args.repeat, "loadgen_procs": args.loadgen_procs,
                   "idle_connections": 0 if args.no_idle else args.idle_connections},
    }
    with tempfile.TemporaryDirectory(prefix="bench-sio-") as tmp_s:
        tmp = Path(tmp_s)
        server = ServerProcess("--agent", "firehose=bench/graphs.py:firehose", env=env).start()
        try:
            for rep in range(args.repeat):
                order = list(TRANSPORTS) if rep % 2 == 0 else list(reversed(TRANSPORTS))
                for name, count, rate in scenarios:
                    say(f"repeat {rep + 1}/{args.repeat}: {name} ({count} events at {rate:g}/s, {args.clients} clients)")
                    for transport in order:
                        results[name][transport].append(trial(
                            transport, server, count=count, rate=rate, clients=args.clients,
                            procs=args.loadgen_procs, tmp=tmp))
        finally:
            server.stop()
        for name, _, _ in scenarios:
            med = {t: median_of(results[name][t]) for t in TRANSPORTS}
            doc[name] = {**med, "p99_ms": {t: med[t]["p99_ms"] for t in TRANSPORTS}}
            for t in (SIO, SIOB):
                a, b = med[t]["delivered_eps"], med[SSE]["delivered_eps"]
                doc[name][f"{t}_over_sse_delivered"] = round(a / b, 3) if a and b else None
        if not args.no_idle:
            doc["idle"] = {t: idle_memory(t, args.idle_connections, tmp) for t in (SSE, SIO)}
    doc["goals"] = {
        "socketio_within_2x_of_sse": all((doc[n]["socketio_over_sse_delivered"] or 0) >= 0.5 for n, _, _ in scenarios),
        "socketio_batch_within_2x_of_sse": all((doc[n]["socketio_batch_over_sse_delivered"] or 0) >= 0.5
                                               for n, _, _ in scenarios),
        "no_violations": all(doc[n][t]["violations"] == 0 and doc[n][t]["incomplete_clients"] == 0
                             for n, _, _ in scenarios for t in TRANSPORTS),
    }
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
