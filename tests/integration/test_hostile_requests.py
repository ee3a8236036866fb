"""Hostile requests get a 4xx in the API's error shape, never a 5xx, and change nothing."""

from __future__ import annotations

import socket
from typing import Iterator

import httpx
import pytest

from tests.support import ServerProcess

from .conftest import agent_flags, start_server, wait_finished

MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def roomy_server() -> Iterator[ServerProcess]:
    """Bodies up to 1 MiB, so a deeply nested document reaches the JSON parser."""
    server = start_server(*agent_flags({"echo": "tests/fixtures/echo_graph.py:graph"}),
                          env={"THOUGHTSTREAM_MAX_BODY_BYTES": str(MAX_BODY)})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def finished(roomy_server: ServerProcess) -> str:
    with httpx.Client(base_url=roomy_server.url) as c:
        run_id = c.post("/runs", json={"agent": "echo", "input": {"text": "hi"}}).json()["run_id"]
    import asyncio

    async def wait() -> None:
        async with httpx.AsyncClient(base_url=roomy_server.url) as c:
            await wait_finished(c, run_id)

    asyncio.run(wait())
    return run_id


def runs_count(server: ServerProcess) -> int:
    return len(httpx.get(server.url + "/runs", params={"limit": 100}).json()["runs"])


def raw(server: ServerProcess, request: bytes) -> bytes:
    """Send bytes no well-behaved client library would, and read the status line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        return s.recv(4096)


def assert_error(res: httpx.Response, status: int, code: str) -> None:
    assert res.status_code == status, res.text
    assert res.json()["error"]["code"] == code, res.text


def test_json_nested_100000_deep_is_400(roomy_server: ServerProcess) -> None:
    """A document nested 100,000 deep is refused by the parser's depth limit, not by a crash."""
    deep = b'{"agent":"echo","input":{"text":"hi","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    assert len(deep) < MAX_BODY
    before = runs_count(roomy_server)
    res = httpx.post(roomy_server.url + "/runs", content=deep, headers={"content-type": "application/json"})
    assert_error(res, 400, "malformed_json")
    assert runs_count(roomy_server) == before


def test_a_body_that_never_ends_is_413(roomy_server: ServerProcess) -> None:
    """A chunked body that keeps coming is cut at the limit, not read forever."""
    def endless() -> Iterator[bytes]:
        yield b'{"agent":"echo","input":{"text":"'
        for _ in range(64 * 1024):  # up to 64 MiB: far past the limit, never sent in full
            yield b"a" * 1024

    before = runs_count(roomy_server)
    res = httpx.post(roomy_server.url + "/runs", content=endless(),
                     headers={"content-type": "application/json"}, timeout=30)
    assert_error(res, 413, "body_too_large")
    assert runs_count(roomy_server) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_a_wrong_content_type_is_415(roomy_server: ServerProcess, content_type: str) -> None:
    """A JSON API says so when the body is declared as something else."""
    before = runs_count(roomy_server)
    res = httpx.post(roomy_server.url + "/runs", content=b'{"agent":"echo","input":{"text":"hi"}}',
                     headers={"content-type": content_type})
    assert_error(res, 415, "unsupported_media_type")
    assert runs_count(roomy_server) == before


def test_json_with_a_charset_is_accepted(roomy_server: ServerProcess) -> None:
    res = httpx.post(roomy_server.url + "/runs", content=b'{"agent":"echo","input":{"text":"hi"}}',
                     headers={"content-type": "application/json; charset=utf-8"})
    assert res.status_code == 202, res.text


@pytest.mark.parametrize("cursor", ["123456789012345678901234567890", "-1", "-0", "+3", "1e3", "0x10",
                                    "1.0", "٣", "9" * 300])
@pytest.mark.parametrize("where", ["header", "query"])
def test_huge_negative_or_foreign_cursors_are_400(roomy_server: ServerProcess, finished: str,
                                                  cursor: str, where: str) -> None:
    """Cursors of 30 digits, negative, or not plain ASCII digits: 400 bad_cursor."""
    url = f"{roomy_server.url}/runs/{finished}/events"
    if where == "header":
        if not cursor.isascii():
            pytest.skip("httpx sends ASCII header values only; covered by the query form")
        res = httpx.get(url, headers={"Last-Event-ID": cursor})
    else:
        res = httpx.get(url, params={"last_event_id": cursor})
    assert_error(res, 400, "bad_cursor")


@pytest.mark.parametrize("value", [b"1\x01\x02", b"1\x7f", b"\x00", b"1\x1b[2J"])
def test_control_bytes_in_last_event_id_are_400(roomy_server: ServerProcess, finished: str,
                                                 value: bytes) -> None:
    """Control bytes in the cursor header never reach the handler as a cursor."""
    reply = raw(roomy_server, f"GET /runs/{finished}/events HTTP/1.1\r\nHost: t\r\n".encode()
                + b"Last-Event-ID: " + value + b"\r\nConnection: close\r\n\r\n")
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]


def test_utf8_in_last_event_id_is_400(roomy_server: ServerProcess, finished: str) -> None:
    reply = raw(roomy_server, f"GET /runs/{finished}/events HTTP/1.1\r\nHost: t\r\n".encode()
                + "Last-Event-ID: 1é".encode() + b"\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
