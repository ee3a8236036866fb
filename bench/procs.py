"""The processes of a bench run: targets (ours, raw, langgraph dev, ours over Redis),
load generators, and CPU and memory read from /proc.

Targets are driven over the wire only (HTTP, SSE, Socket.IO); thoughtstream is started
with ``tests.support.ServerProcess`` (bench may use tests' helpers, tests never import
bench). Every target serves ``bench/graphs.py:firehose`` and answers the same four
questions: start a (gated) run, where its stream is, how a client creates-and-streams
a run of its own, and which API calls probe it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx

from tests.support import ROOT, RedisServer, ServerProcess, wait_workers

from .core import Delivery, NotApplicable, say

CLK_TCK = os.sysconf("SC_CLK_TCK")
FIREHOSE = "firehose=bench/graphs.py:firehose"
# The token-paced chat graph (tokens through LangChain callbacks and the messages mode).
CHAT = "chat=bench/graphs.py:chat"
LANGGRAPH_VENV = ROOT / "bench" / ".venv-langgraph"
LANGGRAPH_PACKAGES = ("langgraph-cli[inmem]", "langgraph")
TARGETS = ("ours", "raw", "langgraph-dev")
TRANSPORTS = {"ours": ("sse", "socketio", "socketio_batch"), "raw": ("sse",), "langgraph-dev": ("sse",)}


# -- /proc -----------------------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's worker or reloader processes count as its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of live processes and their descendants."""
    total = 0
    for root in pids:
        for pid in tree(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for root in pids:
        for pid in tree(root):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total


# -- processes the bench starts itself -------------------------------------------------

class Subprocess(ServerProcess):
    """A command of the bench's own (``{port}`` in argv is a free port), up when ``health`` answers;
    the log, ``stop`` and ``url`` are ServerProcess's."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        super().__init__(env=env)
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.cwd = cwd

    def start(self, health: str = "/healthz", timeout: float = 60.0) -> Subprocess:
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.argv} did not become healthy: {self.output()[-2000:]}")
            time.sleep(0.2)


# -- targets ---------------------------------------------------------------------------

@dataclass
class RunRef:
    run_id: str
    stream_url: str
    thread_id: str | None = None


class Target:
    name: str
    url: str
    sse_urls: list[str]  # the processes clients stream from (several API processes over Redis)
    def pids(self) -> list[int]:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        """The processes that execute runs, where they are not the API process (over Redis)."""
        return []

    def new_run(self, count: int, rate: float, gate: Path | None = None) -> RunRef:
        raise NotImplementedError

    def create_spec(self, count: int, rate: float) -> tuple[str, dict, bool]:
        """(URL, body, the answer is the stream) for a client that creates its own run."""
        raise NotImplementedError

    def probes(self) -> dict[str, tuple[str, str, Any]]:
        """API calls for the latency probe: name -> (method, path, JSON body)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"THOUGHTSTREAM_LOG_LEVEL": "warning", "THOUGHTSTREAM_LOG_MAX_EVENTS": "100000",
            # the bench's own many-runs scenarios: nothing waits in the queue
            "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "1000", "THOUGHTSTREAM_MAX_QUEUED_RUNS": "10000",
            **(extra or {})}


class Ours(Target):
    """``python -m server serve`` with the memory backend (and its journal, the embedded default)."""

    name = "ours"

    def __init__(self, env: dict[str, str] | None = None, agent: str = FIREHOSE, *args: str) -> None:
        self.agent = agent.split("=", 1)[0]
        self.server = ServerProcess("--agent", agent, *args, env=server_env(env)).start()
        self.url = self.server.url
        self.sse_urls = [self.url]

    def pids(self) -> list[int]:
        return [self.server.proc.pid]

    def new_run(self, count: int, rate: float, gate: Path | None = None) -> RunRef:
        body: dict[str, Any] = {"count": count, "rate": rate}
        if gate:
            body["gate"] = str(gate)
        r = httpx.post(self.url + "/runs", json={"agent": self.agent, "input": body}, timeout=30)
        r.raise_for_status()
        return RunRef(r.json()["run_id"], r.json()["events_url"])

    def create_spec(self, count: int, rate: float) -> tuple[str, dict, bool]:
        return self.url + "/runs", {"agent": self.agent, "input": {"count": count, "rate": rate}}, False

    def probes(self) -> dict[str, tuple[str, str, Any]]:
        return {"health": ("GET", "/healthz", None), "list": ("GET", "/runs?limit=10", None)}

    def stop(self) -> None:
        self.server.stop()


class OursWorkers(Ours):
    """``serve --workers 2`` with no Redis named: serve starts a private redis-server and two
    worker processes (every core of this machine); the serve process answers the API."""

    name = "ours-workers"

    def __init__(self, env: dict[str, str] | None = None, agent: str = CHAT, workers: int = 2) -> None:
        super().__init__(env, agent, "--workers", str(workers))
        deadline = time.monotonic() + 60  # until a worker takes the agent (readyz says when)
        while httpx.get(self.url + "/readyz", timeout=5).json().get("agents_without_workers"):
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"no worker took {self.agent}: {self.server.output()[-2000:]}")
            time.sleep(0.2)
        time.sleep(1.0)  # the second worker starts alongside the first

    def pids(self) -> list[int]:
        return [self.server.proc.pid]  # its tree: the workers and the private redis-server


class OursOverRedis(Ours):
    """A throwaway redis-server, two API processes (``--workers 0``) and one worker process."""

    name = "ours-redis"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.agent = FIREHOSE.split("=", 1)[0]
        self.redis = RedisServer().start()
        shared = server_env({"THOUGHTSTREAM_REDIS_URL": self.redis.url,
                             "THOUGHTSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="bench-redis-"), **(env or {})})
        self.procs = [ServerProcess("--agent", FIREHOSE, "--workers", "0", env=shared) for _ in range(2)]
        self.procs.append(ServerProcess("--agent", FIREHOSE, command="worker", env=shared))
        try:
            for p in self.procs:
                p.start()
            wait_workers(self.redis, 1)
        except BaseException:
            self.stop()
            raise
        self.server = self.procs[0]
        self.url = self.server.url
        self.sse_urls = [p.url for p in self.procs[:2]]

    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs] + [self.redis.proc.pid]

    def worker_pids(self) -> list[int]:
        return [self.procs[2].proc.pid]

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.redis.stop()


class Raw(Target):
    """``bench/raw_broadcaster.py`` under uvicorn with its defaults (uvloop, httptools), as ours runs."""

    name = "raw"

    def __init__(self) -> None:
        self.proc = Subprocess([sys.executable, "-m", "uvicorn", "bench.raw_broadcaster:app", "--host",
                                "127.0.0.1", "--port", "{port}", "--log-level", "warning"]).start()
        self.url = self.proc.url
        self.sse_urls = [self.url]

    def pids(self) -> list[int]:
        return [self.proc.proc.pid]

    def new_run(self, count: int, rate: float, gate: Path | None = None) -> RunRef:
        r = httpx.post(self.url + "/runs", json={"count": count, "rate": rate,
                                                 **({"gate": str(gate)} if gate else {})}, timeout=30)
        r.raise_for_status()
        return RunRef(r.json()["run_id"], r.json()["events_url"])

    def create_spec(self, count: int, rate: float) -> tuple[str, dict, bool]:
        return self.url + "/runs", {"count": count, "rate": rate}, False

    def probes(self) -> dict[str, tuple[str, str, Any]]:
        return {"health": ("GET", "/healthz", None), "list": ("GET", "/runs", None)}

    def stop(self) -> None:
        self.proc.stop()


def langgraph_venv(install: bool) -> Path:
    """``bench/.venv-langgraph`` with ``langgraph-cli[inmem]``; created on first use with ``install``."""
    exe = LANGGRAPH_VENV / "bin" / "langgraph"
    if exe.exists():
        return exe
    if not install:
        raise NotApplicable(f"{exe} is missing: rerun with --install-langgraph (installs "
                            f"{' '.join(LANGGRAPH_PACKAGES)} from PyPI into {LANGGRAPH_VENV})")
    say(f"installing {' '.join(LANGGRAPH_PACKAGES)} into {LANGGRAPH_VENV} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(LANGGRAPH_VENV)], check=True)
    subprocess.run([str(LANGGRAPH_VENV / "bin" / "pip"), "install", "-q", *LANGGRAPH_PACKAGES], check=True)
    return exe


class LangGraphDev(Target):
    """LangGraph's own dev server (``langgraph dev``, in-memory runtime) serving the same graph."""

    name = "langgraph-dev"

    def __init__(self, install: bool = False, graphs: dict[str, str] | None = None,
                 assistant: str = "firehose", stream_mode: Sequence[str] = ("custom",)) -> None:
        self.assistant, self.stream_mode = assistant, list(stream_mode)
        exe = langgraph_venv(install)
        conf_dir = Path(tempfile.mkdtemp(prefix="bench-langgraph-"))
        (conf_dir / "langgraph.json").write_text(json.dumps({
            "dependencies": ["."], "graphs": graphs or {"firehose": str(ROOT / "bench" / "graphs.py") + ":firehose"}}))
        self.proc = Subprocess(
            [str(exe), "dev", "--config", str(conf_dir / "langgraph.json"), "--host", "127.0.0.1",
             "--port", "{port}", "--no-browser", "--no-reload", "--n-jobs-per-worker", "1000",
             "--server-log-level", "WARNING"], cwd=conf_dir,
            env={"LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false",
                 "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LOG_LEVEL": "WARNING"}).start(health="/ok", timeout=120)
        self.url = self.proc.url
        self.sse_urls = [self.url]

    def pids(self) -> list[int]:
        return [self.proc.proc.pid]

    def new_run(self, count: int, rate: float, gate: Path | None = None) -> RunRef:
        inp: dict[str, Any] = {"count": count, "rate": rate}
        if gate:
            inp["gate"] = str(gate)
        with httpx.Client(base_url=self.url, timeout=30) as c:
            tid = c.post("/threads", json={}).raise_for_status().json()["thread_id"]
            r = c.post(f"/threads/{tid}/runs", json={
                "assistant_id": "firehose", "input": inp, "stream_mode": ["custom"],
                "stream_resumable": True}).raise_for_status()
        rid = r.json()["run_id"]
        return RunRef(rid, f"/threads/{tid}/runs/{rid}/stream?stream_mode=custom", tid)

    def create_spec(self, count: int, rate: float) -> tuple[str, dict, bool]:
        return self.url + "/runs/stream", {"assistant_id": self.assistant, "input": {"count": count, "rate": rate},
                                           "stream_mode": self.stream_mode}, True

    def probes(self) -> dict[str, tuple[str, str, Any]]:
        return {"health": ("GET", "/ok", None), "list": ("POST", "/threads/search", {"limit": 10})}

    def stop(self) -> None:
        self.proc.stop()


def start_target(name: str, *, install_langgraph: bool = False, env: dict[str, str] | None = None) -> Target:
    say(f"starting {name}")
    if name == "ours":
        return Ours(env)
    if name == "ours-redis":
        return OursOverRedis(env)
    if name == "raw":
        return Raw()
    if name == "langgraph-dev":
        return LangGraphDev(install_langgraph)
    # The chat graph (scenario cores): embedded, every core, and langgraph dev's messages-tuple.
    if name == "ours-chat":
        return Ours(env, CHAT)
    if name == "ours-workers":
        return OursWorkers(env)
    if name == "langgraph-dev-chat":
        return LangGraphDev(install_langgraph, {"chat": str(ROOT / "bench" / "graphs.py") + ":chat"},
                            "chat", ["messages-tuple"])
    raise ValueError(name)


# -- load generators -------------------------------------------------------------------

def split(n: int, parts: int) -> list[int]:
    return [k for k in (n // parts + (1 if i < n % parts else 0) for i in range(parts)) if k]


class LoadGen:
    """Load-generator processes (``bench.loadgen`` for SSE, ``bench.socketio_loadgen`` for
    Socket.IO) sharing ``clients`` connections; READY/DONE on their stdout."""

    def __init__(self, argv_for: list[list[str]], *, transport: str = "sse", idle: bool = False) -> None:
        module = "bench.loadgen" if transport == "sse" else "bench.socketio_loadgen"
        self.idle = idle
        self.out = [str(Path(tempfile.gettempdir()) / f"bench-lg-{uuid.uuid4().hex}") for _ in argv_for]
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", module, *argv, *(["--idle"] if idle else ["--out", out])],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for argv, out in zip(argv_for, self.out)]

    @classmethod
    def watch(cls, target: Target, run: RunRef, clients: int, *, transport: str = "sse", procs: int = 1,
              timeout: float = 300.0, idle: bool = False, last_event_id: str | None = None) -> LoadGen:
        """``clients`` watching one run, SSE spread over the target's API processes, or Socket.IO."""
        argv = []
        for n in split(clients, procs):
            if transport == "sse":
                a = [x for u in target.sse_urls for x in ("--url", u + run.stream_url)]
                if last_event_id is not None:
                    a += ["--last-event-id", last_event_id]
            else:
                a = ["--url", target.url, "--run-id", run.run_id, *(["--batch"] if transport == "socketio_batch" else [])]
            argv.append([*a, "--clients", str(n), "--timeout", str(timeout)])
        return cls(argv, transport=transport, idle=idle)

    @classmethod
    def create(cls, target: Target, runs: int, count: int, rate: float, spread_s: float,
               timeout: float, procs: int = 1) -> LoadGen:
        """``runs`` clients creating and streaming a run each, over ``procs`` processes (each
        spreads its own starts over ``spread_s``: together they arrive evenly)."""
        url, body, in_response = target.create_spec(count, rate)
        return cls([["--create", url, "--body", json.dumps(body), "--clients", str(n), "--spread",
                     str(spread_s), "--timeout", str(timeout), *(["--stream-in-response"] if in_response else [])]
                    for n in split(runs, procs)])

    def wait_ready(self) -> float:
        """Block until every process reports its clients connected; returns that time."""
        times = []
        for p in self.procs:
            line = p.stdout.readline().split() if p.stdout else []
            if not line or line[0] != "READY" or (self.idle and int(line[2]) == 0):
                self.kill()
                raise RuntimeError(f"load generator failed to connect: {line} {p.stderr.read()[-2000:]}")
            times.append(float(line[1]))
        return max(times)

    def collect(self) -> Delivery:
        parts, errors = [], []
        for p, out in zip(self.procs, self.out):
            line = p.stdout.readline().strip() if p.stdout else ""
            if line != "DONE":
                errors.append(f"load generator said {line!r}: {p.stderr.read()[-1000:]}")
            p.wait(30)
            try:
                parts.append(Delivery.load(out))
            except OSError as exc:
                errors.append(repr(exc))
        d = Delivery.merge(parts)
        d.errors += errors
        return d

    def release(self) -> None:
        """Idle clients: close stdin, they disconnect and exit."""
        for p in self.procs:
            p.stdin.close()
        for p in self.procs:
            p.wait(30)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
