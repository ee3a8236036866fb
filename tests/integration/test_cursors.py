"""Cursors over HTTP: late joins, bad cursors, trimmed logs (410 / reset) and the ?ns= filter."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess

from .conftest import (
    TIGHT_LOG_MAX_EVENTS,
    assert_gapless,
    is_terminal,
    make_client,
    read_stream,
    run_to_end,
)

LOG_MAX = TIGHT_LOG_MAX_EVENTS


@pytest.fixture(scope="module")
def finished_run(main_server: ServerProcess) -> dict[str, Any]:
    """A reflective run on the main server that has already ended, and its full log."""
    return run_to_end(main_server, "reflective", {"question": "What is 12 times 12, and what is SSE?"})


@pytest.fixture(scope="module")
def trimmed_server(tight_server: ServerProcess) -> ServerProcess:
    """The server whose logs keep only the last 20 events."""
    return tight_server


def error_of(resp_body: bytes | str, status: int, got: int) -> dict[str, Any]:
    assert got == status, resp_body
    body = json.loads(resp_body)
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]


# ----------------------------------------------------------------------------- late join


async def test_late_join_gets_the_whole_log_then_the_end(client: httpx.AsyncClient,
                                                         finished_run: dict[str, Any]) -> None:
    """A client connecting after the run ended gets seq 1..N, ending with the terminal STATUS, and EOF."""
    stream = await read_stream(client, f"/runs/{finished_run['run_id']}/events")
    assert stream.status_code == 200 and stream.closed_by_server
    assert_gapless(stream.events, 1)
    assert len(stream.events) > 20
    assert is_terminal(stream.events[-1]) and sum(map(is_terminal, stream.events)) == 1
    assert stream.events == finished_run["events"]


async def test_cursor_at_the_last_seq_ends_cleanly_at_once(client: httpx.AsyncClient,
                                                           finished_run: dict[str, Any]) -> None:
    """Last-Event-ID = last seq of an ended run: 200, no events, the server closes the stream right away."""
    last = finished_run["events"][-1]["seq"]
    started = time.monotonic()
    stream = await read_stream(client, f"/runs/{finished_run['run_id']}/events",
                               headers={"Last-Event-ID": str(last)}, timeout=20)
    assert stream.status_code == 200 and stream.closed_by_server
    assert stream.events == [] and stream.others == []
    # Closed by the server, not left open until the client gives up (20 s); room for a loaded machine.
    assert time.monotonic() - started < 10.0


async def test_cursor_resumes_after_the_given_seq(client: httpx.AsyncClient,
                                                  finished_run: dict[str, Any]) -> None:
    """Last-Event-ID / ?last_event_id= / ?after= = k give exactly events k+1..N; the header wins over the query."""
    run_id, events = finished_run["run_id"], finished_run["events"]
    url = f"/runs/{run_id}/events"
    by_header = await read_stream(client, url, headers={"Last-Event-ID": "7"})
    by_query = await read_stream(client, url, params={"last_event_id": "7"})
    by_alias = await read_stream(client, url, params={"after": "7"})
    both = await read_stream(client, url, headers={"Last-Event-ID": "7"}, params={"last_event_id": "2"})
    zero = await read_stream(client, url, headers={"Last-Event-ID": "0"})
    for stream in (by_header, by_query, by_alias, both):
        assert stream.events == events[7:]
    assert zero.events == events


# ----------------------------------------------------------------------------- bad cursors


@pytest.mark.parametrize("where, value", [
    ("header", "abc"),
    ("header", "-1"),
    ("header", "1.5"),
    ("query", "-3"),
    ("query", "seven"),
    ("query", "\u0663"),  # a non-ASCII digit
    ("after", "1e3"),
    ("header", "9" * 40),
])
async def test_malformed_cursor_is_400(client: httpx.AsyncClient, finished_run: dict[str, Any],
                                       where: str, value: str) -> None:
    """A cursor that is not a non-negative integer is a 400 JSON error, not a stream."""
    headers = {"Last-Event-ID": value} if where == "header" else {}
    params = {"last_event_id": value} if where == "query" else {"after": value} if where == "after" else {}
    stream = await read_stream(client, f"/runs/{finished_run['run_id']}/events", headers=headers, params=params)
    err = error_of(stream.body, 400, stream.status_code)
    assert err["code"] == "bad_cursor"
    assert "cursor" in err["message"]


async def test_cursor_past_the_end_is_400(client: httpx.AsyncClient, finished_run: dict[str, Any]) -> None:
    """A cursor beyond the log's last seq is a 400 naming the last seq."""
    last = finished_run["events"][-1]["seq"]
    stream = await read_stream(client, f"/runs/{finished_run['run_id']}/events",
                               headers={"Last-Event-ID": str(last + 1)})
    err = error_of(stream.body, 400, stream.status_code)
    assert err["code"] == "cursor_ahead"
    assert str(last) in err["message"]


# ----------------------------------------------------------------------------- trimmed logs


@pytest.fixture(scope="module")
def trimmed_run(trimmed_server: ServerProcess) -> dict[str, Any]:
    """A finished reflective run on the trimmed server (far more than 20 events)."""
    run = run_to_end(trimmed_server, "reflective", {"question": "What is 3 plus 4, and what is Redis?"})
    snap = run["snapshot"]
    assert snap["status"] == "succeeded"
    assert snap["last_seq"] > 3 * LOG_MAX, snap
    return {"run_id": run["run_id"], "last_seq": snap["last_seq"], "first_seq": snap["first_seq"]}


async def test_cursor_older_than_the_retained_log_is_410(trimmed_server: ServerProcess,
                                                         trimmed_run: dict[str, Any]) -> None:
    """A cursor before the retained window gets 410 with a message saying where the log now starts."""
    first = trimmed_run["last_seq"] - LOG_MAX + 1
    assert trimmed_run["first_seq"] == first
    async with make_client(trimmed_server) as client:
        for cursor in ("1", "5", str(first - 2)):
            stream = await read_stream(client, f"/runs/{trimmed_run['run_id']}/events",
                                       headers={"Last-Event-ID": cursor})
            err = error_of(stream.body, 410, stream.status_code)
            assert err["code"] == "cursor_expired"
            assert err["first_seq"] == first
            assert "older than the retained log" in err["message"] and str(first) in err["message"]
        # The cursor right before the window is still fine: nothing is lost from it.
        stream = await read_stream(client, f"/runs/{trimmed_run['run_id']}/events",
                                   headers={"Last-Event-ID": str(first - 1)})
        assert stream.status_code == 200
        assert_gapless(stream.events, first)
        assert stream.others == []


async def test_no_cursor_on_a_trimmed_log_starts_with_reset(trimmed_server: ServerProcess,
                                                            trimmed_run: dict[str, Any]) -> None:
    """No cursor on a trimmed log: an `event: reset` frame naming first_seq, then exactly the retained events."""
    first = trimmed_run["last_seq"] - LOG_MAX + 1
    async with make_client(trimmed_server) as client:
        async with client.stream("GET", f"/runs/{trimmed_run['run_id']}/events") as resp:
            assert resp.status_code == 200
            raw = await resp.aread()
        stream = await read_stream(client, f"/runs/{trimmed_run['run_id']}/events")
    text = raw.decode()
    reset_at, first_event_at = text.find("event: reset"), text.find("\nid: ")
    assert 0 < reset_at < first_event_at, text[:300]
    assert len(stream.others) == 1
    name, data = stream.others[0]
    assert name == "reset"
    reset = json.loads(data)
    assert reset["first_seq"] == first and reset["reason"] == "log_trimmed"
    assert len(stream.events) == LOG_MAX
    assert_gapless(stream.events, first)
    assert is_terminal(stream.events[-1])


# ----------------------------------------------------------------------------- ns filter


async def test_ns_filter_keeps_only_those_namespaces_and_the_terminal(client: httpx.AsyncClient,
                                                                      finished_run: dict[str, Any]) -> None:
    """?ns=THOUGHT,TOOL_USE: only those ns plus the terminal STATUS, with their original seqs as ids."""
    events = finished_run["events"]
    stream = await read_stream(client, f"/runs/{finished_run['run_id']}/events",
                               params={"ns": "THOUGHT,TOOL_USE"})
    assert stream.status_code == 200 and stream.closed_by_server
    expected = [e for e in events if e["ns"] in ("THOUGHT", "TOOL_USE") or is_terminal(e)]
    assert stream.events == expected
    assert {e["ns"] for e in stream.events} == {"THOUGHT", "TOOL_USE", "STATUS"}
    assert len(stream.events) < len(events)
    # ids are the original seqs, so they jump where other namespaces were left out.
    assert any(b["seq"] - a["seq"] > 1 for a, b in zip(stream.events, stream.events[1:]))

    # A filter combines with a cursor.
    cursor = expected[len(expected) // 2]["seq"]
    resumed = await read_stream(client, f"/runs/{finished_run['run_id']}/events",
                                params={"ns": "THOUGHT,TOOL_USE"}, headers={"Last-Event-ID": str(cursor)})
    assert resumed.events == [e for e in expected if e["seq"] > cursor]


@pytest.mark.parametrize("ns", [",,", "THOUGHT,bad name", "x" * 65])
async def test_bad_ns_filter_is_400(client: httpx.AsyncClient, finished_run: dict[str, Any], ns: str) -> None:
    """A malformed ?ns= list is a 400 JSON error."""
    stream = await read_stream(client, f"/runs/{finished_run['run_id']}/events", params={"ns": ns})
    err = error_of(stream.body, 400, stream.status_code)
    assert err["code"] == "bad_ns"
