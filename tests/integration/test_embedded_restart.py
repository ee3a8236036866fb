"""The embedded default survives its own restart: runs resume, logs and cursors stay valid."""

from __future__ import annotations

import asyncio
import tempfile

import httpx

from tests.integration.test_redis_topology import assert_exact, comparable, fold, read_sse
from tests.support import ServerProcess

QUESTION = {"question": "When was the Eiffel Tower built and how tall is it?"}


async def test_kill_the_embedded_server_mid_run_and_start_it_again():
    """kill -9 the single process mid-run; on start-up it resumes the run from its checkpoint,
    and a client resuming with Last-Event-ID sees the rest: folded, equal to a clean run."""
    data_dir = tempfile.mkdtemp(prefix="ts-data-")
    env = {"THOUGHTSTREAM_DATA_DIR": data_dir, "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "60"}
    first = ServerProcess(env=env).start()
    try:
        resp = httpx.post(f"{first.url}/runs", json={"agent": "reflective", "input": QUESTION})
        clean, done = await read_sse(f"{first.url}/runs/{resp.json()['run_id']}/events")
        assert done
        run_id = httpx.post(f"{first.url}/runs", json={"agent": "reflective", "input": QUESTION}).json()["run_id"]
        # Read until the run is two steps in and streaming the next one.
        part: list[dict] = []
        while not any(e["ns"] == "STEP" and e["data"]["step"] >= 1 for e in part):
            more, done = await read_sse(f"{first.url}/runs/{run_id}/events",
                                        after=part[-1]["seq"] if part else None, stop_after=5)
            part += more
            assert not done
        await asyncio.sleep(0.2)
        more, _ = await read_sse(f"{first.url}/runs/{run_id}/events", after=part[-1]["seq"], stop_after=3)
        part += more
    finally:
        first.kill()
    second = ServerProcess(env=env, port=first.port).start()
    try:
        rest, done = await read_sse(f"{second.url}/runs/{run_id}/events", after=part[-1]["seq"])
        assert done
        events = part + rest
        assert_exact(events)
        marks = [e for e in events if e["data"].get("state") == "resumed"]
        assert len(marks) == 1 and marks[0]["data"]["attempt"] == 2
        assert comparable(fold(events)) == comparable(clean)
        assert events[-1]["data"]["state"] == "succeeded"
        # The finished clean run and its log survived the restart too.
        again, done = await read_sse(f"{second.url}/runs/{clean[0]['run_id']}/events")
        assert done and again == clean
        assert httpx.get(f"{second.url}/runs/{run_id}").json()["attempt"] == 2
    finally:
        second.stop()


async def test_graceful_stop_leaves_running_runs_for_the_next_start():
    """SIGTERM mid-run does not fail the run: the next start resumes it."""
    data_dir = tempfile.mkdtemp(prefix="ts-data-")
    env = {"THOUGHTSTREAM_DATA_DIR": data_dir, "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "60"}
    first = ServerProcess(env=env).start()
    try:
        run_id = httpx.post(f"{first.url}/runs", json={"agent": "reflective", "input": QUESTION}).json()["run_id"]
        part, _ = await read_sse(f"{first.url}/runs/{run_id}/events", stop_after=20)
    finally:
        first.stop()
    second = ServerProcess(env=env, port=first.port).start()
    try:
        rest, done = await read_sse(f"{second.url}/runs/{run_id}/events", after=part[-1]["seq"])
        assert done and rest[-1]["data"]["state"] == "succeeded"
        assert_exact(part + rest)
    finally:
        second.stop()
