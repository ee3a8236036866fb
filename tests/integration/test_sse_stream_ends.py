"""How an SSE stream ends without a task of its own per stream (server/transports/sse_response.py):
a client that stops reading is cut after SSE_SEND_TIMEOUT_S, one that leaves is forgotten at
once, and a stopping server ends every stream cleanly (the chunked body's last chunk)."""

from __future__ import annotations

import signal
import socket
import time
from typing import Iterator

import httpx
import pytest

from tests.support import ServerProcess

from .conftest import agent_flags, start_server

SEND_TIMEOUT_S = 1.0


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    s = start_server(*agent_flags({"bulk": "tests/fixtures/bulk_graph.py:bulk"}), env={
        "THOUGHTSTREAM_SSE_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S), "THOUGHTSTREAM_SSE_PING_S": "0.5",
        # The whole run stays in the log: a reader that fell behind a trimmed log would end
        # with a reset frame instead (another way out, not the one under test).
        "THOUGHTSTREAM_LOG_MAX_EVENTS": "100000"})
    try:
        yield s
    finally:
        s.stop()


def sse_subscribers(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith('thoughtstream_subscribers{transport="sse"}'):
            return float(line.split()[-1])
    raise AssertionError("no SSE subscribers gauge")


def open_stream(server: ServerProcess, run: dict, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", server.port))
    s.sendall(f"GET {run['events_url']} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    return s


def start(server: ServerProcess, body: dict) -> dict:
    r = httpx.post(server.url + "/runs", json={"agent": "bulk", "input": body})
    assert r.status_code == 202, r.text
    return r.json()


def wait_for(predicate, timeout: float) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(server: ServerProcess) -> None:
    # 40 MB at full speed: a reader with a 4 KB window that never reads fills every buffer
    # within a moment, and the server's send then waits until the timeout ends the stream.
    run = start(server, {"count": 20000, "size": 2000, "rate": 0})
    stalled = open_stream(server, run, rcvbuf=4096)
    opened = time.monotonic()  # no send of the stream's body can have blocked before this
    try:
        wait_for(lambda: sse_subscribers(server) == 1 or "SendTimeoutError" in server.output(), 10)
        wait_for(lambda: sse_subscribers(server) == 0, 30)
        # Not at once: the blocked send had its time (less a moment: it may have blocked a few
        # ms before the headers reached this process).
        assert time.monotonic() - opened >= SEND_TIMEOUT_S * 0.8
        assert "SendTimeoutError" in server.output()
    finally:
        stalled.close()


def test_a_client_that_leaves_is_forgotten_at_once_and_a_stopping_server_ends_the_rest(server: ServerProcess) -> None:
    run = start(server, {"count": 1, "size": 10, "rate": 0.001})  # one event, then ~1,000 s of nothing
    streams = [open_stream(server, run) for _ in range(3)]
    wait_for(lambda: sse_subscribers(server) == 3, 10)
    streams[0].close()
    assert wait_for(lambda: sse_subscribers(server) == 2, 5) < 2.0  # no ping needed to notice
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(10)  # not the 5 s graceful timeout's cancellation: the streams ended
    for s in streams[1:]:
        s.settimeout(5)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.endswith(b"0\r\n\r\n"), data[-200:]  # the chunked body's last chunk: a clean end
        s.close()
