"""``serve --workers N``: worker processes owned by the API process, restarted if they die."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import orjson

from .backoff import Backoff
from .config import Settings

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as THOUGHTSTREAM_* variables, so a child reads the same object."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        key = f"THOUGHTSTREAM_{name.upper()}"
        env[key] = value if isinstance(value, str) else orjson.dumps(value).decode()
    return env


# Tells a worker which process supervises it: it stops when that process is gone.
SUPERVISOR_PID_ENV = "TS_SUPERVISOR_PID"


class WorkerProcesses:
    """Starts ``python -m server worker`` N times; a watcher thread restarts the dead ones."""

    def __init__(self, settings: Settings, count: int, restart_delay_s: float = 1.0) -> None:
        self.settings = settings
        self.count = count
        self.restart_delay_s = restart_delay_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        # Per slot: a worker that dies at once again and again (a bad agent, Redis away)
        # is restarted ever more slowly instead of every second.
        self._backoff: list[Backoff] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **settings_env(self.settings), SUPERVISOR_PID_ENV: str(os.getpid())}
        return subprocess.Popen([sys.executable, "-m", "server", "worker"], env=env)

    def __enter__(self) -> WorkerProcesses:
        self.procs = [self._spawn() for _ in range(self.count)]
        self._started = [time.monotonic()] * self.count
        self._backoff = [Backoff(first=self.restart_delay_s, cap=30 * self.restart_delay_s)
                         for _ in range(self.count)]
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is None or self._stop.is_set():
                    continue
                if time.monotonic() - self._started[i] > 60:
                    self._backoff[i].reset()  # it ran a good while: this is a fresh failure
                delay = self._backoff[i].step()
                log.warning("worker process %d exited with %s; restarting in %.1fs", proc.pid,
                            proc.returncode, delay)
                if self._stop.wait(delay):
                    return
                self.procs[i] = self._spawn()
                self._started[i] = time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
