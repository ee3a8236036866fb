"""The LangGraph protocol at the HTTP level: the encodings the official SDKs do not send
but other clients (and langgraph-api) use, and bad input getting a clear error."""

from __future__ import annotations

import httpx
import orjson

from tests.support import ServerProcess


def sse_events(text: str) -> list[tuple[str | None, str, object]]:
    """(id, event, data) of each frame of an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            out.append((fields.get("id"), fields["event"], orjson.loads(fields["data"])))
    return out


async def finished_run(client: httpx.AsyncClient) -> tuple[str, str, list]:
    thread = (await client.post("/threads", json={})).json()["thread_id"]
    resp = await client.post(f"/threads/{thread}/runs/stream", json={
        "assistant_id": "echo", "input": {"text": "one two three"}, "stream_mode": ["custom", "updates"]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-location"].startswith(f"/threads/{thread}/runs/")
    frames = sse_events(resp.text)
    return thread, frames[0][2]["run_id"], frames


async def test_a_join_takes_stream_mode_as_a_json_array(client: httpx.AsyncClient) -> None:
    thread, run, frames = await finished_run(client)
    url = f"/threads/{thread}/runs/{run}/stream"
    listed = await client.get(url, params={"stream_mode": '["custom","updates"]'}, headers={"Last-Event-ID": "-1"})
    repeated = await client.get(url, params=[("stream_mode", "custom"), ("stream_mode", "updates")],
                                headers={"Last-Event-ID": "-1"})
    assert listed.status_code == repeated.status_code == 200
    assert sse_events(listed.text) == sse_events(repeated.text) == frames
    assert {e for _, e, _ in frames} == {"metadata", "custom", "updates", "end"}


async def test_bad_join_input_is_a_clear_error_and_changes_nothing(client: httpx.AsyncClient) -> None:
    thread, run, frames = await finished_run(client)
    url = f"/threads/{thread}/runs/{run}/stream"
    for params, headers, status in [
        ({"stream_mode": '["custom"'}, {}, 422),
        ({"stream_mode": "nonsense"}, {}, 422),
        ({}, {"Last-Event-ID": "x1"}, 400),
        ({}, {"Last-Event-ID": "3.x"}, 400),
        ({}, {"Last-Event-ID": "99999"}, 400),  # past the run's end
    ]:
        resp = await client.get(url, params=params, headers=headers)
        assert resp.status_code == status, (params, headers, resp.text)
        assert resp.json()["error"]["code"]
    assert (await client.get(f"/threads/{thread}/runs/nope/stream")).status_code == 404
    assert (await client.get(f"/threads/nope/runs/{run}/stream")).status_code == 404
    again = await client.get(url, headers={"Last-Event-ID": "-1"}, params={"stream_mode": ["custom", "updates"]})
    assert sse_events(again.text) == frames


async def test_bad_run_bodies_are_422_naming_the_field(client: httpx.AsyncClient, main_server: ServerProcess) -> None:
    thread = (await client.post("/threads", json={})).json()["thread_id"]
    for body, field in [({}, "assistant_id"), ({"assistant_id": 3}, "assistant_id"),
                        ({"assistant_id": "echo", "stream_mode": "sideways"}, "stream_mode"),
                        ({"assistant_id": "echo", "multitask_strategy": "maybe"}, "multitask_strategy"),
                        ({"assistant_id": "echo", "command": {"jump": 1}}, "command")]:
        resp = await client.post(f"/threads/{thread}/runs", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert field in resp.json()["error"]["message"] or resp.json()["error"].get("field", "").startswith(field)
    assert (await client.post(f"/threads/{thread}/runs", json={"assistant_id": "nobody"})).status_code == 404
    assert (await client.get(f"/threads/{thread}/runs")).json() == []


async def test_a_quiet_run_stream_carries_langgraphs_heartbeat(client: httpx.AsyncClient) -> None:
    """A run silent for 2 s: its stream keeps the connection alive with ``: heartbeat``
    comments (every THOUGHTSTREAM_SSE_PING_S, 0.5 s here), then ends as usual."""
    thread = (await client.post("/threads", json={})).json()["thread_id"]
    lines: list[str] = []
    async with client.stream("POST", f"/threads/{thread}/runs/stream", json={
            "assistant_id": "napper", "input": {"nap_s": 2}, "stream_mode": ["custom"]}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            lines.append(line)
    assert lines.count(": heartbeat") >= 2, lines
    events = sse_events("\n".join(lines) + "\n")
    assert [e for _, e, _ in events] == ["metadata", "custom", "end"], events
    assert events[1][2] == {"ns": "WOKE", "slept_s": 2}
