"""One failure, one code, whichever door: HTTP and SSE answer the status and
``{"error": {code, message}}``; a Socket.IO ack answers ``{ok: false, error}`` with the same code."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import socketio

from tests.support import ServerProcess

from .conftest import TIGHT_LOG_MAX_EVENTS


async def sio_call(url: str, event: str, payload: Any) -> Any:
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, transports=["websocket"], wait_timeout=5)
    try:
        return await sio.call(event, payload, timeout=10)
    finally:
        await sio.disconnect()


async def ended_run(http: httpx.AsyncClient, count: int) -> dict[str, Any]:
    r = await http.post("/runs", json={"agent": "ticker", "input": {"count": count, "interval_s": 0.0}})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    deadline = time.monotonic() + 20
    while True:
        snap = (await http.get(f"/runs/{run_id}")).json()
        if snap["status"] == "succeeded" and snap["last_seq"]:
            return snap
        assert time.monotonic() < deadline, snap
        await asyncio.sleep(0.05)


async def test_cursor_and_lookup_errors_match_across_transports(tight_server: ServerProcess) -> None:
    """Expired, ahead, malformed cursors and unknown runs: the same code over SSE and Socket.IO,
    never a 500, and a cursor_expired names the log's first seq on both."""
    async with httpx.AsyncClient(base_url=tight_server.url, timeout=10) as http:
        snap = await ended_run(http, 3 * TIGHT_LOG_MAX_EVENTS)
        # The terminal event follows the record's end: read the stream to it, so that the
        # bounds below are final (no cursor: it starts at what the trimmed log keeps).
        async with http.stream("GET", f"/runs/{snap['run_id']}/events") as r:
            assert r.status_code == 200
            async with asyncio.timeout(20):
                body = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert b'"state":"succeeded"' in body.replace(b" ", b""), body[-300:]
        snap = (await http.get(f"/runs/{snap['run_id']}")).json()
        run, first, last = snap["run_id"], snap["first_seq"], snap["last_seq"]
        assert first > 1
        cases = [  # (run, cursor, HTTP status, code)
            (run, 0, 410, "cursor_expired"),
            (run, last + 1, 400, "cursor_ahead"),
            (run, "abc", 400, "bad_cursor"),
            ("no-such-run", None, 404, "not_found"),
        ]
        for run_id, after, status, code in cases:
            params = {} if after is None else {"after": str(after)}
            r = await http.get(f"/runs/{run_id}/events", params=params)
            assert r.status_code == status, (after, r.text)
            http_err = r.json()["error"]
            payload: dict[str, Any] = {"run_id": run_id}
            if after is not None:
                payload["after"] = after
            ack = await sio_call(tight_server.url, "subscribe", payload)
            assert ack["ok"] is False and ack["error"]["code"] == http_err["code"] == code, (after, ack, http_err)
            if code == "cursor_expired":
                assert ack["error"]["first_seq"] == http_err["first_seq"] == first


async def test_service_errors_match_across_transports(main_server: ServerProcess) -> None:
    """Unknown agent, bad input, cancel of an ended run: the HTTP code is the ack's code."""
    async with httpx.AsyncClient(base_url=main_server.url, timeout=10) as http:
        done = await ended_run(http, 1)
        checks = [
            ("POST", "/runs", {"agent": "nope", "input": {}}, "start_run", {"agent": "nope", "input": {}}),
            ("POST", "/runs", {"agent": "ticker", "input": {"count": "many"}},
             "start_run", {"agent": "ticker", "input": {"count": "many"}}),
            ("POST", "/runs", {"agent": "ticker", "input": {}, "x": 1},
             "start_run", {"agent": "ticker", "input": {}, "x": 1}),
            ("POST", f"/runs/{done['run_id']}/cancel", None, "cancel_run", {"run_id": done["run_id"]}),
            ("POST", "/runs/nope/cancel", None, "cancel_run", {"run_id": "nope"}),
        ]
        for method, path, body, event, payload in checks:
            r = await http.request(method, path, json=body)
            assert 400 <= r.status_code < 500, r.text
            ack = await sio_call(main_server.url, event, payload)
            assert ack["ok"] is False and ack["error"]["code"] == r.json()["error"]["code"], (path, ack, r.text)
