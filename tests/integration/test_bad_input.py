"""Every bad request gets the right status, a JSON {"error": {code, message}} body, and changes nothing."""

from __future__ import annotations

from typing import Any, AsyncIterator

import httpx
import pytest

from .conftest import count_runs, read_stream, start_run, wait_finished

BIG = "x" * 10_240  # the main server takes bodies of at most 2048 bytes


def body(agent: Any = "reflective", input: Any = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"agent": agent, "input": {"question": "What is 1 plus 1?"} if input is None else input}
    out.update(extra)
    return out


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length: the server must count as it reads."""
    for i in range(0, len(data), 1024):
        yield data[i:i + 1024]


# (id, method, path, request kwargs, status, error code or None, text the message must contain)
CASES: list[tuple[str, str, str, dict[str, Any], int, str | None, str]] = [
    ("malformed-json", "POST", "/runs", {"content": b'{"agent": "reflective", '}, 400, "malformed_json", "JSON"),
    ("empty-body", "POST", "/runs", {"content": b""}, 400, "malformed_json", "JSON"),
    ("body-is-array", "POST", "/runs", {"json": [body()]}, 422, "invalid_request", "body"),
    ("body-is-null", "POST", "/runs", {"json": None, "content": b"null"}, 422, "invalid_request", "body"),
    ("agent-not-string", "POST", "/runs", {"json": body(agent=42)}, 422, "invalid_request", "agent"),
    ("agent-empty", "POST", "/runs", {"json": body(agent="")}, 422, "invalid_request", "agent"),
    ("agent-missing", "POST", "/runs", {"json": {"input": {"question": "hi"}}}, 422, "invalid_request", "agent"),
    ("unknown-agent", "POST", "/runs", {"json": body(agent="no-such-agent")}, 404, "not_found", "no-such-agent"),
    ("input-not-object", "POST", "/runs", {"json": body(input="hi")}, 422, "invalid_request", "input"),
    ("metadata-not-object", "POST", "/runs", {"json": body(metadata=[1])}, 422, "invalid_request", "metadata"),
    ("extra-top-level-key", "POST", "/runs", {"json": body(priority=1)}, 422, "invalid_request", "priority"),
    ("question-empty", "POST", "/runs", {"json": body(input={"question": ""})}, 422, "invalid_input",
     "input.question"),
    ("question-missing", "POST", "/runs", {"json": body(input={})}, 422, "invalid_input", "input.question"),
    ("question-not-string", "POST", "/runs", {"json": body(input={"question": 7})}, 422, "invalid_input",
     "input.question"),
    ("max-rounds-99", "POST", "/runs", {"json": body(input={"question": "q", "max_rounds": 99})}, 422,
     "invalid_input", "input.max_rounds"),
    ("extra-input-key", "POST", "/runs", {"json": body(input={"question": "q", "colour": "red"})}, 422,
     "invalid_input", "input.colour"),
    ("user-graph-missing-field", "POST", "/runs", {"json": body(agent="echo", input={})}, 422, "invalid_input",
     "input.text"),
    ("user-graph-wrong-type", "POST", "/runs", {"json": body(agent="echo", input={"text": ["a"]})}, 422,
     "invalid_input", "input.text"),
    ("timeout-not-number", "POST", "/runs", {"json": body(metadata={"timeout_s": "soon"})}, 422,
     "invalid_request", "metadata.timeout_s"),
    ("timeout-negative", "POST", "/runs", {"json": body(metadata={"timeout_s": -1})}, 422,
     "invalid_request", "metadata.timeout_s"),
    ("body-too-large", "POST", "/runs", {"json": body(input={"question": BIG})}, 413, "body_too_large", "2048"),
    ("body-too-large-chunked", "POST", "/runs", {"content": "chunked"}, 413, "body_too_large", "2048"),
    ("idempotency-key-too-long", "POST", "/runs", {"json": body(), "headers": {"Idempotency-Key": "k" * 300}},
     400, "bad_idempotency_key", "Idempotency-Key"),
    ("unknown-run", "GET", "/runs/nope", {}, 404, "not_found", "nope"),
    ("unknown-run-events", "GET", "/runs/nope/events", {}, 404, "not_found", "nope"),
    ("unknown-run-cancel", "POST", "/runs/nope/cancel", {}, 404, "not_found", "nope"),
    ("list-bad-status", "GET", "/runs?status=done", {}, 400, "bad_status", "status"),
    ("list-limit-not-int", "GET", "/runs?limit=ten", {}, 400, "bad_query", "limit"),
    ("list-limit-zero", "GET", "/runs?limit=0", {}, 400, "bad_query", "limit"),
    ("list-limit-too-big", "GET", "/runs?limit=100000", {}, 400, "bad_query", "limit"),
    ("list-before-not-number", "GET", "/runs?before=yesterday", {}, 400, "bad_query", "before"),
]


@pytest.mark.parametrize("method, path, kwargs, status, code, mentions",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
async def test_bad_request_is_a_clear_error_and_changes_nothing(
        client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any],
        status: int, code: str | None, mentions: str) -> None:
    """Each bad request: the listed status, a JSON error naming the problem, no 500, and no run created."""
    kwargs = dict(kwargs)
    if kwargs.get("content") == "chunked":
        kwargs["content"] = chunked(b'{"agent": "reflective", "input": {"question": "' + BIG.encode() + b'"}}')
    if kwargs.get("json") is None:
        kwargs.pop("json", None)
    before = await count_runs(client)
    resp = await client.request(method, path, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert mentions in error["message"], error
    assert await count_runs(client) == before


async def test_cancel_of_a_finished_run_is_409_and_changes_nothing(client: httpx.AsyncClient) -> None:
    """Cancelling a run that already ended is a 409; the run keeps its status and its log is unchanged."""
    run = await start_run(client, "echo", {"text": "done already"})
    snap = await wait_finished(client, run["run_id"])
    assert snap["status"] == "succeeded"
    before = await count_runs(client)
    resp = await client.post(f"/runs/{run['run_id']}/cancel")
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "conflict" and "succeeded" in error["message"]
    after = (await client.get(f"/runs/{run['run_id']}")).json()
    assert after["status"] == "succeeded" and after["last_seq"] == snap["last_seq"]
    assert await count_runs(client) == before
    events = (await read_stream(client, run["events_url"])).events
    assert [e["data"].get("state") for e in events if e["ns"] == "STATUS"] == ["queued", "running", "succeeded"]
