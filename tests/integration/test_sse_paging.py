"""A long replay over SSE is written in pages: whole frames, at most ``WRITE_MAX`` bytes a write.

A finished run of thousands of BULK events (``tests/fixtures/bulk_graph.py``) is replayed
from the start, from its log in memory and from the journal on disk. It must arrive whole
and in order; its body must come in many pieces, none bigger than the bound (httpx's
``aiter_raw``), and each of the server's writes — one HTTP chunk each, read off a raw
socket — must hold only whole frames and be no bigger than the bound, unless it is a
single frame that is bigger by itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Iterator

import pytest

from server.transports.sse import WRITE_MAX
from tests.support import ServerProcess

from .conftest import TERMINAL_STATES, make_client, start_server, wait_finished

COUNT = 6000  # BULK events of the long run: ~2 MB of frames, a few dozen writes
SIZE = 200
ID_LINE = re.compile(rb"^id: (\d+)$", re.M)


@pytest.fixture(scope="module", params=["memory", "journal"])
def paging_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``memory``: a finished log stays in memory; ``journal``: it leaves for the journal at once."""
    env = {"THOUGHTSTREAM_LOG_MAX_EVENTS": str(4 * COUNT)}
    if request.param == "journal":
        env["THOUGHTSTREAM_FINISHED_LOGS_MAX_EVENTS"] = "0"
    server = start_server("--agent", "bulk=tests/fixtures/bulk_graph.py:bulk", env=env)
    try:
        yield server
    finally:
        server.stop()


async def finished_bulk_run(server: ServerProcess, count: int, size: int) -> str:
    async with make_client(server) as client:
        resp = await client.post("/runs", json={"agent": "bulk", "input": {"count": count, "size": size}})
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["run_id"]
        snap = await wait_finished(client, run_id, timeout=60)
        assert snap["status"] == "succeeded", snap
        return run_id


async def raw_chunks(server: ServerProcess, path: str, headers: dict[str, str]) -> tuple[list[bytes], bytes]:
    """GET ``path`` on a raw socket: the HTTP chunks of the body (one per server write), and the head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
    writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    try:
        async with asyncio.timeout(30):
            status_head = await reader.readuntil(b"\r\n\r\n")
            assert status_head.startswith(b"HTTP/1.1 200"), status_head
            assert b"chunked" in status_head.lower(), status_head
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    return chunks, status_head
                chunks.append(await reader.readexactly(size))
                assert await reader.readexactly(2) == b"\r\n"
    finally:
        writer.close()


def events_of(body: bytes) -> list[dict[str, Any]]:
    out = []
    for block in body.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"id" in lines:
            event = json.loads(lines[b"data"])
            assert int(lines[b"id"]) == event["seq"] and lines[b"event"].decode() == event["ns"]
            out.append(event)
    return out


def assert_whole_and_in_order(events: list[dict[str, Any]], first_seq: int = 1) -> None:
    assert [e["seq"] for e in events] == list(range(first_seq, first_seq + len(events)))
    bulk = [e["data"]["i"] for e in events if e["ns"] == "BULK"]
    assert bulk and bulk == list(range(bulk[0], COUNT))
    assert events[-1]["ns"] == "STATUS" and events[-1]["data"]["state"] in TERMINAL_STATES
    assert sum(1 for e in events if e["ns"] == "STATUS" and e["data"].get("state") in TERMINAL_STATES) == 1


def assert_paged(chunks: list[bytes]) -> None:
    """Every write holds whole frames, and none is over the bound unless it is one frame."""
    for k, chunk in enumerate(chunks):
        assert chunk.endswith(b"\n\n"), f"write {k} ends inside a frame: {chunk[-80:]!r}"
        assert chunk.startswith((b"id: ", b"retry: ", b"event: ", b": ")), f"write {k} starts inside a frame"
        if len(chunk) > WRITE_MAX:
            assert chunk.count(b"\nid: ") == 0 and chunk.count(b"id: ") == 1, (
                f"write {k} is {len(chunk)} bytes, over {WRITE_MAX}, and holds several frames")


async def test_a_long_replay_arrives_whole_in_order_and_in_bounded_pieces(paging_server: ServerProcess) -> None:
    run_id = await finished_bulk_run(paging_server, COUNT, SIZE)
    path = f"/runs/{run_id}/events"

    # httpx, as a client would read it: the body in pieces, none bigger than the bound.
    pieces: list[bytes] = []
    async with make_client(paging_server) as client:
        async with client.stream("GET", path, headers={"Last-Event-ID": "0"}) as resp:
            assert resp.status_code == 200
            async for piece in resp.aiter_raw():
                pieces.append(piece)
    body = b"".join(pieces)
    assert len(body) > 8 * WRITE_MAX
    assert len(pieces) >= len(body) // WRITE_MAX
    assert max(map(len, pieces)) <= WRITE_MAX
    events = events_of(body)
    assert len([e for e in events if e["ns"] == "BULK"]) == COUNT
    assert_whole_and_in_order(events)

    # The server's writes themselves (one HTTP chunk each): whole frames, within the bound.
    chunks, _ = await raw_chunks(paging_server, path, {"Last-Event-ID": "0"})
    assert len(chunks) >= len(body) // WRITE_MAX
    assert_paged(chunks)
    assert max(map(len, chunks)) <= WRITE_MAX
    assert events_of(b"".join(chunks)) == events
    # The first write carries the stream's head, then events come in pages, not in one piece.
    assert chunks[0].startswith(b"retry: ")
    assert sum(1 for c in chunks if b"id: " in c) >= len(body) // WRITE_MAX


async def test_a_cursor_mid_log_and_a_filter_page_the_same_way(paging_server: ServerProcess) -> None:
    run_id = await finished_bulk_run(paging_server, COUNT, SIZE)
    path = f"/runs/{run_id}/events"
    chunks, _ = await raw_chunks(paging_server, path, {"Last-Event-ID": "1234"})
    assert_paged(chunks)
    assert max(map(len, chunks)) <= WRITE_MAX
    events = events_of(b"".join(chunks))
    assert events[0]["seq"] == 1235
    assert_whole_and_in_order(events, 1235)

    chunks, _ = await raw_chunks(paging_server, path + "?ns=BULK", {})
    assert_paged(chunks)
    events = events_of(b"".join(chunks))
    assert {e["ns"] for e in events[:-1]} == {"BULK"} and len(events) == COUNT + 1
    assert [e["data"]["i"] for e in events[:-1]] == list(range(COUNT))
    assert events[-1]["data"]["state"] == "succeeded"


async def test_a_frame_bigger_than_the_bound_goes_alone_and_whole(paging_server: ServerProcess) -> None:
    big = 3 * WRITE_MAX // 2
    run_id = await finished_bulk_run(paging_server, 6, big)
    chunks, _ = await raw_chunks(paging_server, f"/runs/{run_id}/events", {})
    assert_paged(chunks)
    assert sum(1 for c in chunks if len(c) > WRITE_MAX) == 6  # each BULK frame alone
    events = events_of(b"".join(chunks))
    assert [e["data"]["i"] for e in events if e["ns"] == "BULK"] == list(range(6))
    assert all(len(e["data"]["pad"]) == big for e in events if e["ns"] == "BULK")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_a_watcher_from_the_start_of_a_live_run_gets_it_all_in_order(paging_server: ServerProcess) -> None:
    """History and live in one stream: paged replay, then the live batches, no gap, no duplicate."""
    async with make_client(paging_server) as client:
        resp = await client.post("/runs", json={"agent": "bulk", "input": {"count": COUNT, "size": SIZE,
                                                                           "rate": 20000}})
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["run_id"]
        await asyncio.sleep(0.1)  # some history first, the rest live
        pieces: list[bytes] = []
        async with client.stream("GET", f"/runs/{run_id}/events") as stream:
            assert stream.status_code == 200
            async with asyncio.timeout(60):
                async for piece in stream.aiter_raw():
                    pieces.append(piece)
    assert max(map(len, pieces)) <= WRITE_MAX
    events = events_of(b"".join(pieces))
    assert_whole_and_in_order(events)
    assert len([e for e in events if e["ns"] == "BULK"]) == COUNT


def test_the_bound_is_tens_of_kib() -> None:
    assert 16 * 1024 <= WRITE_MAX <= 64 * 1024
