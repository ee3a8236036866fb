"""Durable runs: human-in-the-loop interrupts, timeouts, checkpointers (memory and Redis)."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from tests.integration.test_redis_topology import read_sse
from tests.support import ServerProcess

APPROVAL = {"question": "What is 17 * 23 + 4?", "approve_tools": True}


@pytest.fixture(scope="module")
def server():
    with ServerProcess(env={"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "400"}) as s:
        yield s


async def wait_state(url: str, run_id: str, state: str, timeout: float = 15) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as c:
        while True:
            snap = (await c.get(f"{url}/runs/{run_id}")).json()
            if snap["status"] == state:
                return snap
            assert loop.time() < deadline, f"run never became {state}: {snap['status']}"
            await asyncio.sleep(0.05)


def submit(url: str, input: dict) -> str:
    resp = httpx.post(f"{url}/runs", json={"agent": "reflective", "input": input})
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


async def answer_and_watch(url: str, answer) -> list[dict]:
    run_id = submit(url, APPROVAL)
    watcher = asyncio.create_task(read_sse(f"{url}/runs/{run_id}/events"))
    snap = await wait_state(url, run_id, "interrupted")
    assert snap["progress"]["interrupts"][0]["tool"] == "calculator"
    resp = httpx.post(f"{url}/runs/{run_id}/resume", json={"value": answer})
    assert resp.status_code == 202, resp.text
    events, done = await asyncio.wait_for(watcher, 20)
    assert done
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


async def test_interrupt_then_approve_continues_in_the_same_log(server):
    """interrupt() parks the run; POST /resume continues it on the same SSE stream to the end."""
    events = await answer_and_watch(server.url, "yes")
    states = [e["data"]["state"] for e in events if e["ns"] == "STATUS"]
    assert states == ["queued", "running", "interrupted", "running", "succeeded"]
    intr = next(e for e in events if e["data"].get("state") == "interrupted")
    assert intr["data"]["interrupts"][0]["args"] == {"expression": "17 * 23 + 4"}
    phases = [e["data"]["phase"] for e in events if e["ns"] == "TOOL_USE"]
    assert phases == ["call", "result"]
    assert "395" in events[-2]["data"]["output"]["answer"]


async def test_interrupt_then_decline_skips_the_tool(server):
    """Answering no declines the tool call; the agent still finishes and says what it lacks."""
    events = await answer_and_watch(server.url, "no")
    assert [e["data"]["phase"] for e in events if e["ns"] == "TOOL_USE"][0] == "declined"
    assert events[-1]["data"]["state"] == "succeeded"


async def test_cancel_while_interrupted_and_resume_rules(server):
    """An interrupted run can be cancelled; resuming a run that is not interrupted is a 409."""
    run_id = submit(server.url, APPROVAL)
    await wait_state(server.url, run_id, "interrupted")
    resp = httpx.post(f"{server.url}/runs/{run_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    events, done = await read_sse(f"{server.url}/runs/{run_id}/events")
    assert done and events[-1]["data"]["state"] == "cancelled"
    resp = httpx.post(f"{server.url}/runs/{run_id}/resume", json={"value": "yes"})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "conflict"
    assert httpx.post(f"{server.url}/runs/{uuid.uuid4().hex}/resume", json={"value": 1}).status_code == 404
    assert httpx.post(f"{server.url}/runs/{run_id}/resume", content=b"{nope").status_code == 400
    assert httpx.post(f"{server.url}/runs/{run_id}/resume", json={"answer": 1}).status_code == 422


async def test_run_timeout_fails_the_run():
    """A run past its timeout ends failed with a timeout error; the server serves on."""
    env = {"THOUGHTSTREAM_RUN_TIMEOUT_S": "0.5", "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "20"}
    with ServerProcess(env=env) as s:
        run_id = submit(s.url, {"question": "What is Redis Streams?"})
        events, done = await read_sse(f"{s.url}/runs/{run_id}/events")
        assert done and events[-1]["data"]["state"] == "failed"
        assert events[-2]["ns"] == "ERROR" and events[-2]["data"]["code"] == "timeout"
        assert "timeout of 0.5 s" in events[-2]["data"]["message"]
        assert httpx.get(f"{s.url}/readyz").status_code == 200


async def test_interrupt_and_resume_across_processes_with_redis(redis_server):
    """With Redis, the resume may arrive at any API process and any worker continues the run."""
    import tempfile

    env = {"THOUGHTSTREAM_REDIS_URL": redis_server.url, "THOUGHTSTREAM_KEY_PREFIX": f"d{uuid.uuid4().hex[:6]}",
           "THOUGHTSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="ts-data-")}
    with ServerProcess("--workers", "0", env=env) as api1, ServerProcess("--workers", "0", env=env) as api2, \
            ServerProcess(command="worker", env=env) as _w:
        run_id = submit(api1.url, APPROVAL)
        watcher = asyncio.create_task(read_sse(f"{api1.url}/runs/{run_id}/events"))
        await wait_state(api2.url, run_id, "interrupted")
        assert httpx.post(f"{api2.url}/runs/{run_id}/resume", json={"value": True}).status_code == 202
        events, done = await asyncio.wait_for(watcher, 20)
        assert done and events[-1]["data"]["state"] == "succeeded"
        assert "395" in json.dumps(events[-2]["data"])


def _postgres_admin():
    try:
        import psycopg

        return psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True,
                               connect_timeout=3)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"no PostgreSQL reachable at 127.0.0.1:5432 as postgres: {exc}")


async def test_postgres_checkpointer_keeps_every_step():
    """With a postgresql:// checkpoint URL, each step of a run is checkpointed in PostgreSQL."""
    admin = _postgres_admin()
    db = f"thoughtstream_test_{uuid.uuid4().hex[:8]}"  # our own database: nothing else is touched
    admin.execute(f'CREATE DATABASE "{db}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{db}"
        with ServerProcess(env={"THOUGHTSTREAM_CHECKPOINT_URL": url}) as s:
            run_id = submit(s.url, {"question": "What is 17 * 23 + 4?"})
            events, done = await read_sse(f"{s.url}/runs/{run_id}/events")
            assert done and events[-1]["data"]["state"] == "succeeded"
        import psycopg

        with psycopg.connect(url) as conn:
            n = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s", (run_id,)).fetchone()[0]
        steps = [e for e in events if e["ns"] == "STEP"]
        assert n == len(steps) >= 5  # input, planner, tools, critic, answer
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def flaky_server():
    with ServerProcess("--agent", "flaky=tests/fixtures/flaky_graph.py:graph") as s:
        yield s


async def test_transient_errors_are_retried_with_status_events(flaky_server):
    """A node that fails transiently twice is retried with backoff and the run succeeds."""
    resp = httpx.post(f"{flaky_server.url}/runs",
                      json={"agent": "flaky", "input": {"mode": "transient", "key": uuid.uuid4().hex}})
    events, done = await read_sse(f"{flaky_server.url}/runs/{resp.json()['run_id']}/events")
    retries = [e["data"] for e in events if e["data"].get("state") == "retrying"]
    assert [r["attempt"] for r in retries] == [2, 3]
    assert all("ConnectionError" in r["reason"] and r["node"] == "call_service" for r in retries)
    assert done and events[-1]["data"]["state"] == "succeeded"
    assert events[-2]["data"]["output"]["result"] == "ok after 3 calls"


async def test_permanent_errors_fail_at_once(flaky_server):
    """A permission error is not retried: the run fails on the first attempt with the reason."""
    resp = httpx.post(f"{flaky_server.url}/runs",
                      json={"agent": "flaky", "input": {"mode": "permanent", "key": uuid.uuid4().hex}})
    events, done = await read_sse(f"{flaky_server.url}/runs/{resp.json()['run_id']}/events")
    assert not [e for e in events if e["data"].get("state") == "retrying"]
    assert done and events[-1]["data"]["state"] == "failed"
    assert events[-2]["ns"] == "ERROR" and "permission denied" in events[-2]["data"]["message"]


async def test_interrupt_and_resume_through_socketio(server):
    """A Socket.IO client answers the interrupt with resume_run and watches the run finish."""
    from tests.integration.test_socketio import Watcher

    sio = await Watcher(server.url).connect()
    try:
        ack = await sio.call("start_run", {"agent": "reflective", "input": APPROVAL})
        assert ack["ok"], ack
        run_id = ack["run_id"]
        await sio.subscribe(run_id, batch=True)
        snap = await wait_state(server.url, run_id, "interrupted")
        assert snap["progress"]["interrupts"][0]["tool"] == "calculator"
        bad = await sio.call("resume_run", {"run_id": run_id})
        assert bad["ok"] is False and bad["error"]["code"] == "bad_request"
        ack = await sio.call("resume_run", {"run_id": run_id, "value": "yes"})
        assert ack["ok"], ack
        await sio.wait_end(run_id)
        events = sio.events[run_id]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["data"]["state"] for e in events if e["ns"] == "STATUS"] == [
            "queued", "running", "interrupted", "running", "succeeded"]
        again = await sio.call("resume_run", {"run_id": run_id, "value": "yes"})
        assert again["ok"] is False and again["error"]["code"] == "conflict"
    finally:
        await sio.close()
