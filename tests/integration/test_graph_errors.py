"""A graph that raises: the run fails with an ERROR event and a terminal STATUS; the server carries on."""

from __future__ import annotations

import httpx

from tests.fixtures.failing_graph import FAILURE_MESSAGE

from .conftest import assert_gapless, is_terminal, read_stream, start_run, wait_finished


async def test_exception_in_a_node_fails_the_run_not_the_server(client: httpx.AsyncClient) -> None:
    """A node raising gives ERROR {code, message} then exactly one terminal STATUS failed; the next run succeeds."""
    run = await start_run(client, "failing", {"reason": "the test asked"})
    stream = await read_stream(client, run["events_url"])
    events = stream.events
    assert stream.closed_by_server
    assert_gapless(events)
    assert [e["ns"] for e in events if e["ns"] == "NOTE"] == ["NOTE"]  # the first node ran
    errors = [e for e in events if e["ns"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["data"]["code"] == "RuntimeError"
    assert errors[0]["data"]["message"] == f"{FAILURE_MESSAGE}: the test asked"
    assert events[-1]["seq"] == errors[0]["seq"] + 1
    assert is_terminal(events[-1]) and sum(map(is_terminal, events)) == 1
    assert events[-1]["data"]["state"] == "failed"
    assert events[-1]["data"]["error"]["message"] == errors[0]["data"]["message"]
    assert not [e for e in events if e["ns"] == "RESULT"]

    snap = await wait_finished(client, run["run_id"])
    assert snap["status"] == "failed"
    assert snap["error"] == {"code": "RuntimeError", "message": f"{FAILURE_MESSAGE}: the test asked"}
    assert snap["result"] is None and snap["ended_at"] is not None

    # The server is still healthy and runs the next graph to success.
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    after = await start_run(client, "echo", {"text": "still alive"})
    next_events = (await read_stream(client, after["events_url"])).events
    assert next_events[-1]["data"]["state"] == "succeeded"
