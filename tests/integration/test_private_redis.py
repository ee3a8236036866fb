"""``serve --workers N`` with no ``--redis-url`` (issue 14, section 4): every core, no Redis to
install. serve starts a private redis-server (Unix socket only, append-only file in the data
dir) and N worker processes on it; runs execute on the workers; it all goes when serve goes,
even by kill -9; a restart finds the runs again."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import time
from pathlib import Path

import httpx

from tests.support import ServerProcess

QUESTION = {"agent": "reflective", "input": {"question": "What is 17*23?"}}


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every live process whose parent is ``pid``."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def run_to_end(url: str) -> dict:
    res = httpx.post(url + "/runs", json=QUESTION)
    assert res.status_code == 202, res.text
    run_id = res.json()["run_id"]
    deadline = time.monotonic() + 60
    while True:
        rec = httpx.get(f"{url}/runs/{run_id}").json()
        if rec["status"] in ("succeeded", "failed", "cancelled"):
            return rec
        assert time.monotonic() < deadline, rec
        time.sleep(0.2)


def test_workers_without_a_redis_url_run_on_a_private_redis() -> None:
    data = tempfile.mkdtemp(prefix="ts-private-")
    env = {"THOUGHTSTREAM_DATA_DIR": data}
    with ServerProcess("--workers", "2", env=env) as serve:
        kids = children(serve.proc.pid)
        redis_pids = [p for p, cmd in kids.items() if "redis-server" in cmd]
        workers = [p for p, cmd in kids.items() if "server worker" in cmd]
        assert len(redis_pids) == 1 and len(workers) == 2, kids
        # Private: a Unix socket in the data dir, its directory closed to others, no TCP port.
        sock = Path(data) / "redis" / "redis.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        import redis as redis_sync

        assert redis_sync.Redis(unix_socket_path=str(sock)).config_get("port") == {"port": "0"}
        rec = run_to_end(serve.url)
        assert rec["status"] == "succeeded", rec
        assert rec.get("worker"), rec  # executed by a worker process, not by serve
        events = httpx.get(f"{serve.url}/runs/{rec['run_id']}/events", params={"format": "json"}).json()
        assert "391" in str(events)
        # kill -9: nothing is left behind (the kernel tells redis-server; workers see serve gone).
        serve.kill(signal.SIGKILL)
        wait_until(lambda: not any(alive(p) for p in (*redis_pids, *workers)), 30,
                   "redis-server and the workers outlived a killed serve")

    # The same data dir again: the append-only file brings the finished run back.
    with ServerProcess("--workers", "1", env=env) as again:
        got = httpx.get(f"{again.url}/runs/{rec['run_id']}")
        assert got.status_code == 200 and got.json()["status"] == "succeeded", got.text
        assert run_to_end(again.url)["status"] == "succeeded"
        pids = list(children(again.proc.pid))
    wait_until(lambda: not any(alive(p) for p in pids), 30, "a stopped serve left processes behind")


def test_plain_serve_is_the_embedded_default() -> None:
    """No --workers, no Redis: one process, no private redis-server and no worker (the
    re-validation of the settings once made every field look set, so `serve` alone acted
    as `serve --workers 1`)."""
    server = ServerProcess().start()
    try:
        time.sleep(0.5)  # a private Redis and its worker would be up by now
        assert children(server.proc.pid) == {}
        run_to_end(server.url)
    finally:
        server.stop()
