"""Processes of a bench run: the raw broadcaster, the blaster, load generators, CPU time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import ROOT, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc), 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def write_syscalls(pid: int) -> int:
    """write(2)-family syscalls a process made so far (Linux /proc/PID/io), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscw:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Subprocess:
    """``python -m <module> ...`` from the repo root, output to a log file."""

    def __init__(self, *argv: str, log_dir: Path, log_name: str) -> None:
        self.port = free_port()
        self.argv = [sys.executable, "-m", *[a.replace("{port}", str(self.port)) for a in argv]]
        self.log_path = log_dir / f"{log_name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, health: str | None = "/healthz", timeout: float = 30.0) -> Subprocess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if health:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.argv} exited: {self.log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(self.url + health, timeout=0.5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.argv} did not become healthy")
                time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def raw_broadcaster(log_dir: Path) -> Subprocess:
    """The ceiling, served like thoughtstream: uvicorn with its defaults (uvloop, httptools)."""
    return Subprocess("uvicorn", "bench.raw_broadcaster:app", "--host", "127.0.0.1",
                      "--port", "{port}", "--log-level", "warning", log_dir=log_dir, log_name="raw")


def blaster(log_dir: Path, clients: int, count: int) -> Subprocess:
    return Subprocess("bench.blaster", "--port", "{port}", "--clients", str(clients),
                      "--count", str(count), "--per-write", "20", log_dir=log_dir, log_name="blaster")


@dataclass
class LoadResult:
    ready_at: float  # when the last client of the last process was connected
    started_at: float
    samples: array  # float64 pairs: ts, recv (THOUGHT events)
    clients: list[dict]
    cpu_s: float  # CPU seconds the load generators used
    wall_s: float
    errors: list[str] = field(default_factory=list)


class LoadGenerators:
    """``procs`` load-generator processes sharing ``clients`` SSE connections to ``url``.

    ``url`` may be a list (the same run through several API processes): each process then
    spreads its clients over the URLs round-robin.
    """

    def __init__(self, url: str | list[str], clients: int, procs: int, out_dir: Path, timeout: float) -> None:
        self.out = [out_dir / f"lg-{i}-{time.monotonic_ns()}" for i in range(procs)]
        split = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        url_args = [a for u in ([url] if isinstance(url, str) else url) for a in ("--url", u)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", *url_args, "--clients", str(n),
                 "--timeout", str(timeout), "--out", str(out)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n, out in zip(split, self.out) if n
        ]

    def wait_ready(self) -> float:
        """Block until every process reports all its clients connected; returns that time."""
        times = []
        for p in self.procs:
            line = p.stdout.readline().split() if p.stdout else []
            if not line or line[0] != "READY":
                self.kill()
                err = p.stderr.read() if p.stderr else ""
                raise RuntimeError(f"load generator failed to connect: {line} {err[-2000:]}")
            times.append(float(line[1]))
        return max(times)

    def collect(self, ready_at: float, started_at: float) -> LoadResult:
        cpu = 0.0
        errors = []
        for p in self.procs:
            line = p.stdout.readline().strip() if p.stdout else ""
            if line != "DONE":
                errors.append(f"load generator said {line!r}: {p.stderr.read()[-2000:] if p.stderr else ''}")
            p.wait(30)
        wall = time.time() - started_at
        samples = array("d")
        clients: list[dict] = []
        for out in self.out[:len(self.procs)]:
            try:
                with open(f"{out}.bin", "rb") as f:
                    samples.frombytes(f.read())
                result = json.loads(Path(f"{out}.json").read_text())
                clients += result["clients"]
                cpu += result["cpu_s"]
            except OSError as exc:
                errors.append(str(exc))
            for suffix in (".bin", ".json"):
                Path(f"{out}{suffix}").unlink(missing_ok=True)
        return LoadResult(ready_at, started_at, samples, clients, cpu, wall, errors)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
