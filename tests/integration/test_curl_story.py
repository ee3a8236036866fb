"""The README's curl story, byte for byte: start a run, watch it over SSE until the server hangs up."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx

from .conftest import TERMINAL_STATES, parse_frames, wait_finished

QUESTION = "What is 17 times 23, and what does the corpus say about server-sent events?"


async def test_post_runs_answers_202_with_location_and_links(client: httpx.AsyncClient) -> None:
    """POST /runs answers 202 at once with Location and {run_id, status: queued, events_url, room}."""
    resp = await client.post("/runs", json={"agent": "reflective", "input": {"question": QUESTION}})
    assert resp.status_code == 202, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    run_id = body["run_id"]
    assert isinstance(run_id, str) and run_id
    assert body["status"] == "queued"
    assert body["events_url"] == f"/runs/{run_id}/events"
    assert body["room"] == f"run:{run_id}"
    assert resp.headers["location"] == f"/runs/{run_id}"
    # The Location names the run itself.
    snap = await client.get(resp.headers["location"])
    assert snap.status_code == 200 and snap.json()["run_id"] == run_id
    await wait_finished(client, run_id)


async def test_sse_wire_format_of_a_whole_reflective_run(client: httpx.AsyncClient) -> None:
    """The SSE body: retry first, then id 1..N frames (id/event/data), every agent ns, one terminal STATUS last, then EOF."""
    resp = await client.post("/runs", json={"agent": "reflective", "input": {"question": QUESTION}})
    run_id = resp.json()["run_id"]
    chunks: list[bytes] = []
    async with client.stream("GET", resp.json()["events_url"]) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        async with asyncio.timeout(20):
            async for chunk in stream.aiter_raw():  # ends only when the server closes the stream
                chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw.startswith(b"retry: "), raw[:80]

    frames = parse_frames(raw)
    assert frames[0] == ["retry: 2000"]
    events = []
    for lines in frames[1:]:
        if all(line.startswith(":") for line in lines):
            continue  # keep-alive comment
        assert len(lines) == 3, f"an event frame is exactly id, event and one data line: {lines}"
        id_line, event_line, data_line = lines
        assert id_line.startswith("id: ") and event_line.startswith("event: ") and data_line.startswith("data: ")
        event = json.loads(data_line[len("data: "):])
        assert set(event) == {"run_id", "seq", "ns", "agent", "data", "ts"}
        assert id_line == f"id: {event['seq']}"
        assert event_line == f"event: {event['ns']}"
        assert event["run_id"] == run_id
        assert isinstance(event["agent"], str) and isinstance(event["data"], dict)
        assert isinstance(event["ts"], float)
        events.append(event)

    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    namespaces = Counter(e["ns"] for e in events)
    statuses = [e["data"] for e in events if e["ns"] in ("STATUS", "ERROR")]
    assert {"THOUGHT", "TOOL_USE", "CRITIC_EVAL", "RESULT", "STATUS"} <= set(namespaces), (namespaces, statuses)
    phases = {e["data"].get("phase") for e in events if e["ns"] == "TOOL_USE"}
    assert {"call", "result"} <= phases
    critic = [e for e in events if e["ns"] == "CRITIC_EVAL" and "verdict" in e["data"]]
    assert critic and all(c["data"]["verdict"] in ("approve", "revise") for c in critic)
    assert sum(e["ns"] == "RESULT" for e in events) == 1
    # `agent` is the node that emitted the event.
    assert {e["agent"] for e in events if e["ns"] == "TOOL_USE"} == {"tools"}
    assert {c["agent"] for c in critic} == {"critic"}
    assert {e["agent"] for e in events if e["ns"] == "THOUGHT"} <= {"planner", "answer"}

    terminal = [e for e in events if e["ns"] == "STATUS" and e["data"].get("state") in TERMINAL_STATES]
    assert terminal == [events[-1]], "exactly one terminal STATUS, and it is the last event"
    assert events[-1]["data"]["state"] == "succeeded"
    assert events[0]["ns"] == "STATUS" and events[0]["data"]["state"] == "queued"
    snap = (await client.get(f"/runs/{run_id}")).json()
    assert snap["last_seq"] == len(events)
