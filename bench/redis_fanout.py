"""Fan-out over Redis (two API processes, a worker apart) beside the memory backend, in one run.

    .venv/bin/python -m bench.redis_fanout [--clients 100,200 --events 2000 --rate 500 --repeat 3]

Prints one JSON document on stdout (progress on stderr); bench/README.md explains it.

Targets, all up for the whole run, each running ``bench/graphs.py:firehose``:

* ``memory_journal``: ``python -m server serve`` with the memory backend and its SQLite
  journal (``THOUGHTSTREAM_JOURNAL=true``, the embedded default);
* ``memory_no_journal``: the same with ``THOUGHTSTREAM_JOURNAL=false`` (memory only);
* ``redis``: a throwaway ``redis-server`` (``tests.support.RedisServer``, never 6379), two
  API processes (``serve --workers 0``) and one ``python -m server worker``, all with
  ``THOUGHTSTREAM_REDIS_URL``. The run is POSTed to API 1; the worker executes it and
  appends every event (one EVALSHA: seq, XADD, PUBLISH, expiry); each API process gets it
  over its one pub/sub connection and writes it to its own SSE clients. The clients are
  split across the two API processes (client i watches through API 1 + i % 2).

Each trial posts a gated run, connects every client (one ``bench.loadgen`` process by
default, as ``bench.fanout``), opens the gate and measures live delivery with
``bench.fanout.metrics``: delivered/s against demand (rate x clients), emit-to-receive
latency (event ``ts`` is the append time, taken by the worker for Redis, so the
cross-process figure includes the EVALSHA and the pub/sub hop), and seq violations.
For Redis it also takes ``INFO commandstats`` deltas over the delivery window (calls per
command per appended event, script-internal calls included, the bench's own probe
commands subtracted), ``PUBSUB NUMSUB`` of the run's channel, and samples ``CLIENT LIST``
every ~0.25 s while the stream flows: pub/sub connections (``sub``/``psub`` > 0 or flag
``P``) and the process that owns each connection (its socket, found through ``/proc``).
Before the trials, one short run under ``MONITOR`` attributes every command to the
process that sent it (or to the script): the worker's commands per event are its round
trips per event (``--no-monitor`` skips it). Every trial also records each server
process's CPU and its run-queue wait (``/proc/PID/task/*/schedstat``: time runnable but
waiting for a core), which tells CPU contention on a small machine from the path's own cost.
``--tap`` adds a subscriber of the bench's own to the run's channel: the latency of the
worker -> Redis -> subscriber hop alone. ``--profile DIR`` runs py-spy on every server process.

Trials rotate the target order per repeat; numbers are medians over ``--repeat``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from tests.support import ROOT, RedisServer, ServerProcess

from .fanout import median_of, metrics, percentile, start_profiler, stop_profiler
from .profile_summary import report
from .procs import LoadGenerators, cpu_seconds, write_syscalls

FIREHOSE = "firehose=bench/graphs.py:firehose"
MEM_J, MEM_NJ, REDIS, REDIS_B = "memory_journal", "memory_no_journal", "redis", "redis_batched"
TARGETS = (MEM_J, MEM_NJ, REDIS)  # the default set
# redis_batched: the same Redis topology (its own redis-server and API processes) with the
# worker started through bench/redis_batch_worker.py, an A/B of batched appends.
ALL_TARGETS = (*TARGETS, REDIS_B)
REDIS_LIKE = (REDIS, REDIS_B)
# What the bench itself sends to Redis during a window (subtracted from the deltas).
PROBE_COMMANDS = ("info", "client|list", "pubsub|numsub", "ping")


def say(msg: str) -> None:
    print(f"[redis_fanout] {msg}", file=sys.stderr, flush=True)


def runq_wait_s(pid: int) -> float:
    """Seconds a process's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


# -- Redis probes ----------------------------------------------------------------------

class Probe:
    """The bench's own Redis connection: command stats, CLIENT LIST, a run's last seq."""

    def __init__(self, url: str) -> None:
        self.r = Redis.from_url(url, socket_timeout=5)
        self.own: Counter[str] = Counter()  # commands this probe sent, by commandstats name

    def _count(self, name: str) -> None:
        self.own[name] += 1

    def commandstats(self) -> dict[str, int]:
        self._count("info")
        raw = self.r.execute_command("INFO", "commandstats")
        text = raw.decode() if isinstance(raw, bytes) else raw
        out: dict[str, int] = {}
        if isinstance(text, dict):  # redis-py parsed it
            for key, val in text.items():
                out[key.removeprefix("cmdstat_")] = int(val["calls"])
            return out
        for line in text.splitlines():
            if line.startswith("cmdstat_"):
                name, fields = line[len("cmdstat_"):].split(":", 1)
                calls = dict(f.split("=", 1) for f in fields.split(","))["calls"]
                out[name] = int(calls)
        return out

    def client_list(self) -> list[dict[str, str]]:
        self._count("client|list")
        raw = self.r.execute_command("CLIENT", "LIST")
        text = raw.decode() if isinstance(raw, bytes) else raw
        if isinstance(text, list):
            return text
        return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in text.splitlines() if line]

    def numsub(self, channel: str) -> int:
        self._count("pubsub|numsub")
        res = self.r.execute_command("PUBSUB", "NUMSUB", channel)
        return int(res[1]) if res else 0

    def last_seq(self, run_id: str, prefix: str = "ts") -> int:
        self._count("hget")
        v = self.r.hget(f"{prefix}:run:{run_id}:meta", "seq")
        return int(v) if v is not None else 0

    def version(self) -> str:
        self._count("info")
        return str(self.r.info("server").get("redis_version"))


def is_pubsub(client: dict[str, str]) -> bool:
    return (int(client.get("sub", 0) or 0) > 0 or int(client.get("psub", 0) or 0) > 0
            or "P" in client.get("flags", ""))


def socket_owners(ports: set[int], pids: dict[int, str]) -> dict[int, str]:
    """Which of our processes owns the TCP socket bound to each local port (Linux /proc)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if port in ports:
                inodes[cols[9]] = port
    out: dict[int, str] = {}
    for pid, name in pids.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                port = inodes.get(link[8:-1])
                if port is not None:
                    out[port] = name
    return out


class ClientListSampler(threading.Thread):
    """Samples CLIENT LIST while a stream flows: pub/sub connections and their owners."""

    def __init__(self, url: str, pids: dict[int, str], period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.probe = Probe(url)
        self.pids = pids
        self.period = period
        self.stop_evt = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.owner_cache: dict[int, str] = {}

    def run(self) -> None:
        while not self.stop_evt.wait(self.period):
            try:
                clients = self.probe.client_list()
            except Exception as exc:  # noqa: BLE001 - report, do not kill the bench
                self.samples.append({"error": repr(exc)})
                continue
            pubsub = [c for c in clients if is_pubsub(c)]
            ports = {int(c["addr"].rsplit(":", 1)[1]) for c in clients}
            missing = ports - set(self.owner_cache)
            if missing:
                self.owner_cache.update(socket_owners(missing, self.pids))
            owners = Counter(self.owner_cache.get(int(c["addr"].rsplit(":", 1)[1]), "other") for c in pubsub)
            all_owners = Counter(self.owner_cache.get(int(c["addr"].rsplit(":", 1)[1]), "other") for c in clients)
            self.samples.append({"pubsub": len(pubsub), "clients": len(clients),
                                 "pubsub_servers": sum(n for k, n in owners.items() if k != "bench"),
                                 "pubsub_by_process": dict(owners), "clients_by_process": dict(all_owners),
                                 "pubsub_channels_per_conn": sorted(int(c.get("sub", 0)) for c in pubsub)})

    def stop(self) -> dict[str, Any]:
        self.stop_evt.set()
        self.join(5)
        good = [s for s in self.samples if "pubsub" in s]
        if not good:
            return {"samples": 0, "errors": [s.get("error") for s in self.samples][:3]}
        busiest = max(good, key=lambda s: (s["pubsub"], s["clients"]))
        return {
            "samples": len(good),
            "pubsub_connections_min": min(s["pubsub"] for s in good),
            "pubsub_connections_max": max(s["pubsub"] for s in good),
            # the same without the bench's own (--tap): thoughtstream processes only
            "server_pubsub_connections_max": max(s["pubsub_servers"] for s in good),
            "redis_clients_max": max(s["clients"] for s in good),
            "pubsub_by_process": busiest["pubsub_by_process"],
            "redis_clients_by_process": busiest["clients_by_process"],
            "channels_per_pubsub_connection": busiest["pubsub_channels_per_conn"],
        }


class Monitor(threading.Thread):
    """``MONITOR`` on a raw socket: every command Redis runs, with who sent it.

    A line is ``+<time> [<db> <ip:port>] "CMD" ...`` for a command a client sent (one
    round trip, or part of a pipeline) and ``[<db> lua] "CMD" ...`` for one a script ran.
    Used for one short calibration run only: MONITOR costs Redis (and this thread) a line
    per command, so the measured trials do not run it.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        self.sock.sendall(b"MONITOR\r\n")
        self.stop_evt = threading.Event()
        self.by_client: Counter[tuple[str, str]] = Counter()  # (client addr or "lua", COMMAND)
        self.own_port = self.sock.getsockname()[1]

    def run(self) -> None:
        import socket

        buf = b""
        while not self.stop_evt.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                if not line.startswith(b"+") or b" [" not in line:
                    continue  # +OK
                head, _, rest = line.partition(b"] ")
                who = head.rsplit(b" ", 1)[1].decode()
                cmd = rest.split(b" ", 1)[0].strip(b'"').decode().lower()
                self.by_client[(who, cmd)] += 1

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(5)
        self.sock.close()


def calibrate_round_trips(t: Target, redis_url: str, redis_port: int, *, count: int, rate: float,
                          clients: int, procs: int, tmp: Path) -> dict[str, Any]:
    """One short run under MONITOR: commands per event each process sends, and the script's."""
    gate = tmp / f"gate-{uuid.uuid4().hex}"
    run_id = post_run(t.post_url, count, rate, gate)
    lg = LoadGenerators([u + f"/runs/{run_id}/events" for u in t.watch_urls], clients, procs, tmp, 120.0)
    probe = Probe(redis_url)
    try:
        ready_at = lg.wait_ready()
        seq0 = probe.last_seq(run_id)
        mon = Monitor(redis_port)
        mon.start()
        time.sleep(0.2)
        gate.touch()
        res = lg.collect(ready_at, time.time())
        time.sleep(0.3)
        mon.stop()
        seq1 = probe.last_seq(run_id)
    finally:
        lg.kill()
    events = max(seq1 - seq0, 1)
    probe.r.close()
    ports = {int(w.rsplit(":", 1)[1]) for w, _ in mon.by_client if w != "lua"}
    owners = socket_owners(ports, {pid: name for name, pid in t.pids.items()})
    owners[mon.own_port] = "bench"
    by_proc: dict[str, Counter[str]] = {}
    for (who, cmd), n in mon.by_client.items():
        name = "script" if who == "lua" else owners.get(int(who.rsplit(":", 1)[1]), "bench")
        if name == "bench":
            continue  # the probe's HGETs
        by_proc.setdefault(name, Counter())[cmd] += n
    bad = [c for c in res.clients if c["thoughts"] != count or not c["ended"] or c["error"]]
    return {
        "events": events,
        "clients": clients,
        "incomplete_clients": len(bad),
        # Commands a process sent per appended event: for the worker, its round trips
        # (it sends no pipelines while streaming); "script" = run inside EVALSHA, no round trip.
        "commands_per_event_by_sender": {
            name: {"total": round(sum(c.values()) / events, 3),
                   **{cmd: round(n / events, 3) for cmd, n in sorted(c.items())}}
            for name, c in sorted(by_proc.items())},
        "worker_round_trips_per_event": round(sum(by_proc.get("worker", Counter()).values()) / events, 3),
    }


class Tap(threading.Thread):
    """A bench-side subscriber to the run's channel (``--tap``): the worker -> Redis -> subscriber hop.

    Each message's ``ts`` (the worker's append time) against its receive time here gives the
    latency of the append + PUBLISH + pub/sub delivery alone, without an API process.
    It is one more pub/sub connection (reported as ``bench``), so CLIENT LIST counts it.
    """

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(daemon=True)
        self.ps = Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(channel)
        self.lat_ms: list[float] = []
        self.stop_evt = threading.Event()

    def run(self) -> None:
        import re

        ts_re = re.compile(rb'"ts":([-+.0-9eE]+)')
        while not self.stop_evt.is_set():
            msg = self.ps.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                now = time.time()
                m = ts_re.search(msg["data"])
                if m:
                    self.lat_ms.append((now - float(m.group(1))) * 1000.0)

    def stop(self) -> dict[str, Any]:
        self.stop_evt.set()
        self.join(5)
        self.ps.close()
        lat = sorted(self.lat_ms)
        return {"messages": len(lat), "p50_ms": round(percentile(lat, 0.5), 2),
                "p99_ms": round(percentile(lat, 0.99), 2), "max_ms": round(lat[-1], 2) if lat else None}


# -- targets ----------------------------------------------------------------------------

class Target:
    """Where a run is posted, the stream URL(s) its clients read, and the processes it costs."""

    def __init__(self, name: str, post_url: str, watch_urls: list[str], pids: dict[str, int],
                 api_pids: list[int]) -> None:
        self.name = name
        self.post_url = post_url
        self.watch_urls = watch_urls
        self.pids = pids  # every server-side process: name -> pid
        self.api_pids = api_pids  # the ones writing to SSE clients
        self.redis_url: str | None = None
        self.redis_port: int | None = None


class BenchWorkerProcess(ServerProcess):
    """``python -m <module> worker ...`` (a bench entry point wrapping the server's CLI)."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(*args, command="worker", env=env)
        self.module = module

    def start(self) -> BenchWorkerProcess:
        argv = [sys.executable, "-m", self.module, self.command, *self.args]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        return self


def post_run(base: str, count: int, rate: float, gate: Path | None) -> str:
    inp: dict[str, Any] = {"count": count, "rate": rate}
    if gate is not None:
        inp.update(gate=str(gate), gate_timeout_s=120)
    r = httpx.post(base + "/runs", json={"agent": "firehose", "input": inp}, timeout=10)
    r.raise_for_status()
    return r.json()["run_id"]


def warm_up(t: Target, tmp: Path, procs: int) -> None:
    """A short run with a few clients through every URL (lazy imports, first-use caches)."""
    run_id = post_run(t.post_url, 200, 5000.0, None)
    lg = LoadGenerators([u + f"/runs/{run_id}/events" for u in t.watch_urls], 2 * len(t.watch_urls),
                        procs, tmp, 60.0)
    try:
        ready = lg.wait_ready()
        res = lg.collect(ready, time.time())
    finally:
        lg.kill()
    bad = [c for c in res.clients if not c["ended"] or c["error"]]
    if bad or res.errors:
        raise RuntimeError(f"warm-up of {t.name} failed: {res.errors or bad[:2]}")


def trial(t: Target, *, count: int, rate: float, clients: int, procs: int, tmp: Path,
          tap: bool = False, profile: Path | None = None) -> dict:
    redis_url = t.redis_url
    timeout = 120.0 + 3 * count / rate
    gate = tmp / f"gate-{uuid.uuid4().hex}"
    run_id = post_run(t.post_url, count, rate, gate)
    lg = LoadGenerators([u + f"/runs/{run_id}/events" for u in t.watch_urls], clients, procs, tmp, timeout)
    probe = Probe(redis_url) if redis_url else None
    sampler = tapper = None
    profilers: dict[str, Any] = {}
    try:
        ready_at = lg.wait_ready()
        if tap and redis_url:
            tapper = Tap(redis_url, f"ts:run:{run_id}:live")
            tapper.start()
        if profile is not None:
            profilers = {name: start_profiler(pid, profile / f"{t.name}-{clients}-{name}.txt")
                         for name, pid in t.pids.items() if name != "redis"}
        if probe is not None:
            stats0, seq0 = probe.commandstats(), probe.last_seq(run_id)
            sampler = ClientListSampler(redis_url, {**{pid: name for name, pid in t.pids.items()},
                                                    os.getpid(): "bench"})
            sampler.start()
        cpu0 = {name: cpu_seconds(pid) for name, pid in t.pids.items()}
        # (not the load generators: they exit, and their /proc entries go, before the window ends)
        wait0 = {name: runq_wait_s(pid) for name, pid in t.pids.items()}
        writes0 = sum(write_syscalls(pid) for pid in t.api_pids)
        started_at = time.time()
        gate.touch()
        numsub = None
        if probe is not None:
            time.sleep(0.5)
            numsub = probe.numsub(f"ts:run:{run_id}:live")
        res = lg.collect(ready_at, started_at)
        cpu1 = {name: cpu_seconds(pid) for name, pid in t.pids.items()}
        wait1 = {name: runq_wait_s(pid) for name, pid in t.pids.items()}
        writes = sum(write_syscalls(pid) for pid in t.api_pids) - writes0
    finally:
        for prof in profilers.values():
            stop_profiler(prof)
        lg.kill()
        if sampler is not None and sampler.is_alive():
            clist = sampler.stop()
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
    m = metrics(res, count=count, rate=rate, clients=clients, server_cpu_s=sum(cpu.values()),
                server_writes=writes)
    window = m["delivery_window_s"] or float("nan")
    m["cpu_pct_by_process"] = {name: round(100 * s / window, 1) for name, s in cpu.items()}
    # Runnable but not running (waiting for a core), ms per second of the delivery window:
    # how much the machine's CPU contention delays each process.
    m["runq_wait_ms_per_s"] = {name: round(1000 * (wait1[name] - wait0[name]) / window, 1) for name in wait0}
    m["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if tapper is not None:
        m["tap"] = tapper.stop()
    for name in profilers:
        out = profile / f"{t.name}-{clients}-{name}.txt"
        if out.exists():
            out.with_suffix(".summary").write_text(report(out, top=30) + "\n")
    if probe is not None:
        time.sleep(0.3)  # the worker's last commands after the terminal event (ack, record)
        seq1 = probe.last_seq(run_id)  # before the snapshot: both HGETs fall in the window
        stats1 = probe.commandstats()
        m["redis"] = redis_costs(stats0, stats1, probe.own, seq1 - seq0, numsub, clist)
        probe.r.close()
    r = m.get("redis", {})
    say(f"{t.name:17s} clients={clients} delivered={m['delivered_eps']}/s of {m['demanded_eps']:g} "
        f"p50={m['p50_ms']}ms p99={m['p99_ms']}ms max={m['max_ms']}ms viol={m['violations']} "
        f"incomplete={m['incomplete_clients']} cpu={m['cpu_pct_by_process']} runq_wait={m['runq_wait_ms_per_s']} "
        + (f"evalsha/ev={r['evalsha_per_event']} cmds/ev={r['commands_per_event']} "
           f"numsub={r['channel_subscribers']} "
           f"pubsub_conns={r['client_list'].get('pubsub_connections_max')} "
           f"{r['client_list'].get('pubsub_by_process')} "
           f"redis_conns={r['client_list'].get('redis_clients_by_process')}" if r else "")
        + (f" tap={m['tap']}" if "tap" in m else ""))
    return m


def redis_costs(before: dict[str, int], after: dict[str, int], own: Counter[str], events: int,
                numsub: int | None, clist: dict[str, Any]) -> dict[str, Any]:
    """Per appended event: Redis calls by command (script-internal ones included), round trips."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    for name, n in own.items():  # the probe's own commands inside the window
        if name in delta:
            delta[name] -= n
    # The two commandstats snapshots are themselves INFO calls; the after-one counts the before-one.
    delta = {k: v for k, v in delta.items() if v > 0 and k not in PROBE_COMMANDS}
    ev = max(events, 1)
    evalsha = delta.get("evalsha", 0)
    return {
        "events_in_window": events,
        "evalsha_per_event": round(evalsha / ev, 3),
        "commands_per_event": round(sum(delta.values()) / ev, 3),
        "commands_per_event_by_command": {k: round(v / ev, 3) for k, v in sorted(delta.items())},
        "calls_in_window": dict(sorted(delta.items())),
        "publish_per_event": round(delta.get("publish", 0) / ev, 3),
        "channel_subscribers": numsub,  # connections subscribed to the run's channel
        "pubsub_messages_per_event": round(delta.get("publish", 0) / ev * (numsub or 0), 3),
        "client_list": clist,
    }


def summarize_redis(runs: list[dict]) -> dict[str, Any]:
    """Medians of the Redis numbers over repeats."""
    rs = [r["redis"] for r in runs if "redis" in r]
    if not rs:
        return {}
    out: dict[str, Any] = {}
    for key in ("events_in_window", "evalsha_per_event", "commands_per_event",
                "publish_per_event", "channel_subscribers",
                "pubsub_messages_per_event"):
        vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        out[key] = statistics.median(vals) if vals else None
    names = sorted({k for r in rs for k in r["commands_per_event_by_command"]})
    out["commands_per_event_by_command"] = {
        k: round(statistics.median(r["commands_per_event_by_command"].get(k, 0.0) for r in rs), 3)
        for k in names}
    cls = [r["client_list"] for r in rs if r["client_list"].get("samples")]
    if cls:
        out["client_list"] = {
            "samples": sum(c["samples"] for c in cls),
            "pubsub_connections_min": min(c["pubsub_connections_min"] for c in cls),
            "pubsub_connections_max": max(c["pubsub_connections_max"] for c in cls),
            "server_pubsub_connections_max": max(c["server_pubsub_connections_max"] for c in cls),
            "redis_clients_max": max(c["redis_clients_max"] for c in cls),
            "pubsub_by_process": cls[-1]["pubsub_by_process"],
            "redis_clients_by_process": cls[-1]["redis_clients_by_process"],
            "channels_per_pubsub_connection": cls[-1]["channels_per_pubsub_connection"],
            "redis_clients_max_runs": [c["redis_clients_max"] for c in cls],
            "redis_clients_by_process_runs": [c["redis_clients_by_process"] for c in cls],
        }
    return out


def summarize(runs: list[dict]) -> dict:
    med = median_of([{k: v for k, v in r.items() if k not in ("redis", "tap")} for r in runs])
    if "tap" in runs[0]:
        med["tap"] = {k: statistics.median(r["tap"][k] for r in runs) for k in ("p50_ms", "p99_ms")}
        med["tap"]["runs"] = [r["tap"] for r in runs]
    for key in ("cpu_pct_by_process", "runq_wait_ms_per_s"):
        med[key] = {k: round(statistics.median(r[key][k] for r in runs if k in r[key]), 1) for k in runs[0][key]}
    if "redis" in runs[0]:
        med["redis"] = summarize_redis(runs)
    return med


# -- main -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fan-out over Redis (2 API processes + a worker) vs the memory backend.")
    p.add_argument("--clients", default="100,200", help="comma-separated client counts (each one a scenario)")
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--repeat", type=int, default=1, help="medians over this many runs")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated, from {','.join(ALL_TARGETS)} (default: {','.join(TARGETS)})")
    p.add_argument("--loadgen-procs", type=int, default=0,
                   help="load-generator processes (default 1 on <= 2 cores, else 2)")
    p.add_argument("--tap", action="store_true",
                   help="also subscribe to the run's channel from the bench: latency of the worker -> Redis -> "
                        "subscriber hop alone (adds one pub/sub connection, shown as 'bench')")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy every server process (not redis-server) during each trial; raw stacks and "
                        "summaries in DIR (costs throughput: do not compare with unprofiled numbers)")
    p.add_argument("--no-monitor", action="store_true",
                   help="skip the short MONITOR run that attributes commands to the processes sending them")
    p.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    args.target_list = [t for t in args.targets.split(",") if t]
    unknown = set(args.target_list) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}")
    if args.loadgen_procs <= 0:
        args.loadgen_procs = 1 if (os.cpu_count() or 1) <= 2 else 2
    return args


def start_targets(stack: ExitStack, args: argparse.Namespace, tmp: Path) -> dict[str, Target]:
    common = {
        "THOUGHTSTREAM_LOG_LEVEL": "warning",
        "THOUGHTSTREAM_LOG_MAX_EVENTS": str(max(10_000, args.events + 100)),
    }
    targets: dict[str, Target] = {}
    for name, journal in ((MEM_J, "true"), (MEM_NJ, "false")):
        if name not in args.target_list:
            continue
        srv = stack.enter_context(ServerProcess("--agent", FIREHOSE, env={
            **common, "THOUGHTSTREAM_JOURNAL": journal, "THOUGHTSTREAM_DATA_DIR": str(tmp / name)}))
        targets[name] = Target(name, srv.url, [srv.url], {"server": srv.proc.pid}, [srv.proc.pid])
    for name in REDIS_LIKE:
        if name not in args.target_list:
            continue
        redis = RedisServer().start()
        stack.callback(redis.stop)
        env = {**common, "THOUGHTSTREAM_REDIS_URL": redis.url}
        api1 = stack.enter_context(ServerProcess("--agent", FIREHOSE, "--workers", "0", env={
            **env, "THOUGHTSTREAM_DATA_DIR": str(tmp / f"{name}-api1")}))
        api2 = stack.enter_context(ServerProcess("--agent", FIREHOSE, "--workers", "0", env={
            **env, "THOUGHTSTREAM_DATA_DIR": str(tmp / f"{name}-api2")}))
        worker_env = {**env, "THOUGHTSTREAM_DATA_DIR": str(tmp / f"{name}-worker")}
        if name == REDIS:
            worker: ServerProcess = ServerProcess("--agent", FIREHOSE, command="worker", env=worker_env)
        else:
            worker = BenchWorkerProcess("bench.redis_batch_worker", "--agent", FIREHOSE, env=worker_env)
        stack.enter_context(worker)
        pids = {"api1": api1.proc.pid, "api2": api2.proc.pid, "worker": worker.proc.pid,
                "redis": redis.proc.pid}
        targets[name] = Target(name, api1.url, [api1.url, api2.url], pids, [api1.proc.pid, api2.proc.pid])
        targets[name].redis_url = redis.url
        targets[name].redis_port = redis.port
    return targets


def compare(res: dict[str, dict], runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Redis p99 minus each single-process p99: of the medians, and the median of paired differences."""
    out: dict[str, Any] = {}
    for rt in REDIS_LIKE:
        if rt not in res:
            continue
        for mem in (MEM_J, MEM_NJ):
            if mem not in res:
                continue
            paired = [a["p99_ms"] - b["p99_ms"] for a, b in zip(runs[rt], runs[mem])]
            out[f"{rt}_minus_{mem}_p99_ms"] = round(res[rt]["p99_ms"] - res[mem]["p99_ms"], 2)
            out[f"{rt}_minus_{mem}_p99_ms_paired_median"] = round(statistics.median(paired), 2)
            out[f"{rt}_over_{mem}_delivered"] = (round(res[rt]["delivered_eps"] / res[mem]["delivered_eps"], 3)
                                                 if res[mem]["delivered_eps"] else None)
    return out


def goals(doc: dict, args: argparse.Namespace) -> dict[str, Any]:
    g: dict[str, Any] = {}
    for n in args.client_counts:
        sc = doc["scenarios"][str(n)]
        for t in args.target_list:
            m = sc[t]
            g[f"{n}_{t}_keeps_pace"] = bool(m["delivered_eps"] and m["delivered_eps"] >= 0.9 * m["demanded_eps"])
        for rt in REDIS_LIKE:
            if rt not in sc:
                continue
            for mem in (MEM_J, MEM_NJ):
                if mem in sc:
                    g[f"{n}_{rt}_p99_within_10ms_of_{mem}"] = sc["compare"][f"{rt}_minus_{mem}_p99_ms"] <= 10
            cl = sc[rt].get("redis", {}).get("client_list", {})
            g[f"{n}_{rt}_pubsub_connections_max"] = cl.get("pubsub_connections_max")
    g["no_violations"] = all(doc["scenarios"][str(n)][t]["violations"] == 0
                             and doc["scenarios"][str(n)][t]["incomplete_clients"] == 0
                             for n in args.client_counts for t in args.target_list)
    return g


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()
    doc: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in load],
                    "busy_at_start": load[0] > (os.cpu_count() or 1) * 0.5},
        "config": {"clients": args.client_counts, "events": args.events, "rate": args.rate,
                   "repeat": args.repeat, "targets": args.target_list, "loadgen_procs": args.loadgen_procs},
    }
    t0 = time.monotonic()
    results: dict[int, dict[str, list[dict]]] = {n: {t: [] for t in args.target_list} for n in args.client_counts}
    with tempfile.TemporaryDirectory(prefix="bench-redis-fanout-") as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        targets = start_targets(stack, args, tmp)
        for t in targets.values():
            if t.redis_url:
                p = Probe(t.redis_url)
                doc["machine"]["redis_version"] = p.version()
                p.r.close()
        for t in targets.values():
            warm_up(t, tmp, args.loadgen_procs)
        say(f"servers up and warm in {time.monotonic() - t0:.1f}s")
        for name in REDIS_LIKE:
            if name in targets and not args.no_monitor:
                t = targets[name]
                doc.setdefault("redis_round_trips", {})[name] = calibrate_round_trips(
                    t, t.redis_url, t.redis_port, count=1000, rate=args.rate, clients=20,
                    procs=args.loadgen_procs, tmp=tmp)
                say(f"MONITOR calibration of {name}: {doc['redis_round_trips'][name]}")
        for rep in range(args.repeat):
            order = list(args.target_list)
            k = rep % len(order)
            order = order[k:] + order[:k]  # rotate who goes first
            for n in args.client_counts:
                say(f"repeat {rep + 1}/{args.repeat}: {n} clients, {args.events} events at {args.rate:g}/s, "
                    f"order {order}")
                for name in order:
                    prof = None
                    if args.profile:
                        prof = args.profile / f"r{rep + 1}"
                        prof.mkdir(parents=True, exist_ok=True)
                    results[n][name].append(trial(
                        targets[name], count=args.events, rate=args.rate, clients=n,
                        procs=args.loadgen_procs, tmp=tmp, tap=args.tap, profile=prof))
    doc["scenarios"] = {}
    for n in args.client_counts:
        sc: dict[str, Any] = {t: summarize(results[n][t]) for t in args.target_list}
        sc["compare"] = compare(sc, results[n])
        doc["scenarios"][str(n)] = sc
    doc["goals"] = goals(doc, args)
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["machine"]["wall_s"] = round(time.monotonic() - t0, 1)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
