"""Integration fixtures: real ``python -m server serve`` processes on free ports, and SSE helpers.

One main server is shared by the whole session (it serves ``reflective`` plus the test graphs);
modules that need other settings start their own server once per module.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import pytest
from httpx_sse import aconnect_sse, connect_sse

from tests.support import ServerProcess

TERMINAL_STATES = {"succeeded", "failed", "cancelled"}

# Every user graph the main server serves, as --agent flags (paths are relative to the repo root,
# which is the server's working directory).
TEST_AGENTS = {
    "echo": "tests/fixtures/echo_graph.py:graph",
    "failing": "tests/fixtures/failing_graph.py:graph",
    "ticker": "tests/integration/graphs.py:ticker",
    "napper": "tests/integration/graphs.py:napper",
    "research": "examples/04_custom_graph.py:graph",
}
MAIN_ENV = {
    "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "500",
    "THOUGHTSTREAM_SSE_PING_S": "0.5",
    "THOUGHTSTREAM_MAX_BODY_BYTES": "2048",
}


def agent_flags(agents: dict[str, str]) -> list[str]:
    flags: list[str] = []
    for name, spec in agents.items():
        flags += ["--agent", f"{name}={spec}"]
    return flags


def start_server(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(*args, env=env).start()


@pytest.fixture(scope="session")
def main_server() -> Iterator[ServerProcess]:
    """The shared server: reflective + echo/failing/ticker/napper/research; pings every 0.5 s; 2 KB bodies."""
    server = start_server(*agent_flags(TEST_AGENTS), env=MAIN_ENV)
    try:
        yield server
    finally:
        server.stop()


TIGHT_LOG_MAX_EVENTS = 20


@pytest.fixture(scope="session")
def tight_server() -> Iterator[ServerProcess]:
    """A constrained server: one run at a time, logs trimmed to the last 20 events, fast tokens."""
    server = start_server(*agent_flags({"ticker": TEST_AGENTS["ticker"]}), env={
        "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "1",
        "THOUGHTSTREAM_LOG_MAX_EVENTS": str(TIGHT_LOG_MAX_EVENTS),
        "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "1000",
    })
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(main_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(main_server) as c:
        yield c


def make_client(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(20.0, connect=5.0))


# ----------------------------------------------------------------------------- API helpers


async def start_run(client: httpx.AsyncClient, agent: str, input: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """POST /runs and insist on 202; returns the body."""
    resp = await client.post("/runs", json={"agent": agent, "input": input}, **kw)
    assert resp.status_code == 202, resp.text
    return resp.json()


async def wait_status(client: httpx.AsyncClient, run_id: str, want: Callable[[str], bool] | set[str] | str,
                      timeout: float = 20.0) -> dict[str, Any]:
    """Poll GET /runs/{id} until its status satisfies ``want``; returns the snapshot."""
    check = want if callable(want) else (lambda s: s in want) if isinstance(want, set) else (lambda s: s == want)
    deadline = time.monotonic() + timeout
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = await client.get(f"/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        snap = resp.json()
        if check(snap["status"]):
            return snap
        await asyncio.sleep(0.03)
    raise AssertionError(f"run {run_id} did not reach {want!r} in {timeout}s; last snapshot {snap}")


async def wait_finished(client: httpx.AsyncClient, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    return await wait_status(client, run_id, TERMINAL_STATES, timeout)


async def all_runs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every run GET /runs lists, following next_before pages."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        resp = await client.get("/runs", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        rows += page["runs"]
        if page["next_before"] is None:
            return rows
        params["before"] = page["next_before"]


async def count_runs(client: httpx.AsyncClient) -> int:
    return len(await all_runs(client))


# ----------------------------------------------------------------------------- SSE helpers


def is_terminal(event: dict[str, Any]) -> bool:
    return event["ns"] == "STATUS" and event["data"].get("state") in TERMINAL_STATES


@dataclass
class Stream:
    """What one SSE connection delivered."""

    status_code: int
    headers: httpx.Headers
    events: list[dict[str, Any]] = field(default_factory=list)  # decoded data: of id'd frames
    others: list[tuple[str, str]] = field(default_factory=list)  # (event, data) of frames without id
    closed_by_server: bool = False
    body: bytes = b""  # the error body when status_code != 200


async def read_stream(client: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None,
                      params: dict[str, Any] | None = None, timeout: float = 20.0) -> Stream:
    """Read an SSE stream to its end (the server closes it after the terminal event).

    Checks per frame that ``id:`` equals the JSON seq and ``event:`` equals its ns.
    """
    async with aconnect_sse(client, "GET", url, headers=dict(headers or {}), params=params) as source:
        resp = source.response
        out = Stream(resp.status_code, resp.headers)
        if resp.status_code != 200:
            out.body = await resp.aread()
            return out
        async with asyncio.timeout(timeout):
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue  # retry-only frame, or the decoder's echo of a ping comment
                event = json.loads(sse.data)
                if "seq" not in event:
                    out.others.append((sse.event, sse.data))
                    continue
                assert sse.id == str(event["seq"]), f"id {sse.id!r} != seq {event['seq']}"
                assert sse.event == event["ns"], f"event {sse.event!r} != ns {event['ns']!r}"
                out.events.append(event)
        out.closed_by_server = True
    return out


async def full_log(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """The whole log of a run, read with no cursor (after the run ended)."""
    stream = await read_stream(client, f"/runs/{run_id}/events")
    assert stream.status_code == 200, stream.body
    return stream.events


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def assert_gapless(events: list[dict[str, Any]], first: int = 1) -> None:
    got = seqs(events)
    assert got == list(range(first, first + len(got))), f"seqs not gapless from {first}: {got}"


def parse_frames(raw: bytes) -> list[list[str]]:
    """Split a raw SSE body into frames (lists of lines), whatever the line ending."""
    text = raw.decode().replace("\r\n", "\n").replace("\r", "\n")
    return [block.split("\n") for block in text.split("\n\n") if block.strip("\n")]


# ----------------------------------------------------------------------------- sync helpers (for module fixtures)


def run_to_end(server: ServerProcess, agent: str, input: dict[str, Any],
               timeout: float = 30.0) -> dict[str, Any]:
    """Start a run, wait for its end; returns {run_id, snapshot, events} (events read with no cursor)."""
    with httpx.Client(base_url=server.url, timeout=20.0) as client:
        resp = client.post("/runs", json={"agent": agent, "input": input})
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["run_id"]
        deadline = time.monotonic() + timeout
        while True:
            snap = client.get(f"/runs/{run_id}").json()
            if snap["status"] in TERMINAL_STATES:
                break
            assert time.monotonic() < deadline, f"run {run_id} did not end: {snap}"
            time.sleep(0.05)
        events = []
        with connect_sse(client, "GET", f"/runs/{run_id}/events") as source:
            assert source.response.status_code == 200
            for sse in source.iter_sse():
                if sse.data and sse.id:
                    events.append(json.loads(sse.data))
        return {"run_id": run_id, "snapshot": snap, "events": events}
