"""Runs over HTTP: snapshots, listing and paging, idempotency, cancel, and the concurrency limit."""

from __future__ import annotations

import asyncio
import httpx
import pytest

from tests.support import ServerProcess

from .conftest import (
    all_runs,
    count_runs,
    make_client,
    read_stream,
    start_run,
    wait_finished,
    wait_status,
)


def states(events: list[dict]) -> list[str]:
    return [e["data"]["state"] for e in events if e["ns"] == "STATUS"]


# ----------------------------------------------------------------------------- snapshots


async def test_snapshot_follows_the_run_and_holds_the_result(client: httpx.AsyncClient) -> None:
    """GET /runs/{id}: queued/running while going, then succeeded with ordered timestamps, attempt 1, last_seq and the answer."""
    run = await start_run(client, "reflective", {"question": "What is 6 times 7?"})
    early = (await client.get(f"/runs/{run['run_id']}")).json()
    assert early["status"] in ("queued", "running")
    assert early["ended_at"] is None and early["result"] is None
    assert early["agent"] == "reflective" and early["input"]["question"] == "What is 6 times 7?"

    events = (await read_stream(client, run["events_url"])).events
    snap = await wait_finished(client, run["run_id"])
    assert snap["status"] == "succeeded"
    assert snap["created_at"] <= snap["started_at"] <= snap["ended_at"]
    assert snap["attempt"] == 1
    assert snap["last_seq"] == events[-1]["seq"] == len(events)
    assert snap["first_seq"] == 1
    assert snap["error"] is None
    answer = snap["result"]["answer"]
    assert isinstance(answer, str) and "42" in answer
    result_event = next(e for e in events if e["ns"] == "RESULT")
    assert result_event["data"]["output"] == snap["result"]
    assert isinstance(snap["progress"], dict)


# ----------------------------------------------------------------------------- listing


async def test_list_is_newest_first_filters_by_status_and_pages(client: httpx.AsyncClient) -> None:
    """GET /runs: newest first; ?status= filters; ?limit= pages via next_before without gaps or repeats."""
    ok = [await start_run(client, "echo", {"text": f"run {i}"}) for i in range(3)]
    bad = await start_run(client, "failing", {"reason": "listing"})
    for run in (*ok, bad):
        await wait_finished(client, run["run_id"])

    everything = await all_runs(client)
    ids = [r["run_id"] for r in everything]
    mine = [r["run_id"] for r in (*ok, bad)]
    assert [i for i in ids if i in mine] == mine[::-1], "newest first"
    created = [r["created_at"] for r in everything]
    assert created == sorted(created, reverse=True)

    first = await client.get("/runs", params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert [r["run_id"] for r in page["runs"]] == ids[:2]
    assert page["next_before"] == page["runs"][-1]["created_at"]
    paged: list[str] = []
    params: dict = {"limit": 2}
    while True:
        page = (await client.get("/runs", params=params)).json()
        assert len(page["runs"]) <= 2
        paged += [r["run_id"] for r in page["runs"]]
        if page["next_before"] is None:
            break
        params["before"] = page["next_before"]
    assert paged == ids

    failed = (await client.get("/runs", params={"status": "failed", "limit": 200})).json()["runs"]
    assert bad["run_id"] in [r["run_id"] for r in failed]
    assert all(r["status"] == "failed" for r in failed)
    succeeded = (await client.get("/runs", params={"status": "succeeded", "limit": 200})).json()["runs"]
    assert {r["run_id"] for r in ok} <= {r["run_id"] for r in succeeded}
    assert bad["run_id"] not in {r["run_id"] for r in succeeded}
    assert all(r["status"] == "succeeded" for r in succeeded)


# ----------------------------------------------------------------------------- idempotency


async def test_idempotency_key_returns_the_same_run_once(client: httpx.AsyncClient) -> None:
    """Same Idempotency-Key and body: the same run_id and one run; same key, other body: 409 and no run."""
    key = {"Idempotency-Key": f"test-idem-{id(client)}"}
    payload = {"agent": "echo", "input": {"text": "only once"}}
    before = await count_runs(client)
    first = await client.post("/runs", json=payload, headers=key)
    second = await client.post("/runs", json=payload, headers=key)
    assert first.status_code == 202 and second.status_code == 202
    assert first.json()["run_id"] == second.json()["run_id"]
    assert first.json()["created"] is True and second.json()["created"] is False
    assert await count_runs(client) == before + 1

    other = await client.post("/runs", json={"agent": "echo", "input": {"text": "something else"}}, headers=key)
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "conflict"
    assert "Idempotency-Key" in other.json()["error"]["message"]
    assert await count_runs(client) == before + 1

    # A different key is a different run.
    third = await client.post("/runs", json=payload, headers={"Idempotency-Key": key["Idempotency-Key"] + "-2"})
    assert third.status_code == 202 and third.json()["run_id"] != first.json()["run_id"]
    # The one run executed once: one queued and one running STATUS.
    events = (await read_stream(client, first.json()["events_url"])).events
    assert states(events) == ["queued", "running", "succeeded"]


# ----------------------------------------------------------------------------- cancel


async def test_cancel_a_running_run_ends_it_cancelled(client: httpx.AsyncClient) -> None:
    """POST /cancel on a running run: 200 with status cancelled, and its SSE stream ends with STATUS cancelled."""
    run = await start_run(client, "ticker", {"count": 200, "interval_s": 0.05})  # 10 s if left alone
    watcher = asyncio.create_task(read_stream(client, run["events_url"]))
    await wait_status(client, run["run_id"], "running")
    await asyncio.sleep(0.3)  # let it tick a few times
    resp = await client.post(f"/runs/{run['run_id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    async with asyncio.timeout(5):
        stream = await watcher
    events = stream.events
    assert stream.closed_by_server
    ticks = [e for e in events if e["ns"] == "TICK"]
    assert 0 < len(ticks) < 100
    assert states(events) == ["queued", "running", "cancelled"]
    assert events[-1]["ns"] == "STATUS" and events[-1]["data"]["state"] == "cancelled"
    assert events[-1]["data"]["error"]["code"] == "cancelled"
    assert not [e for e in events if e["ns"] == "RESULT"]
    snap = (await client.get(f"/runs/{run['run_id']}")).json()
    assert snap["status"] == "cancelled" and snap["ended_at"] is not None and snap["result"] is None
    assert snap["last_seq"] == events[-1]["seq"]
    # Cancelled is final.
    again = await client.post(f"/runs/{run['run_id']}/cancel")
    assert again.status_code == 409


# ----------------------------------------------------------------------------- the concurrency limit


@pytest.fixture(scope="module")
def serial_server(tight_server: ServerProcess) -> ServerProcess:
    """The server that executes one run at a time (its logs keep 20 events: these runs stay below)."""
    return tight_server


async def test_queued_runs_wait_can_be_cancelled_and_start_in_turn(serial_server: ServerProcess) -> None:
    """MAX_CONCURRENT_RUNS=1: a second run stays queued; cancelled there it never runs; a third starts when the first ends."""
    async with make_client(serial_server) as client:
        first = await start_run(client, "ticker", {"count": 8, "interval_s": 0.3})
        await wait_status(client, first["run_id"], "running")
        second = await start_run(client, "ticker", {"count": 2, "interval_s": 0.01})
        third = await start_run(client, "ticker", {"count": 2, "interval_s": 0.01})
        await asyncio.sleep(0.3)
        assert (await client.get(f"/runs/{second['run_id']}")).json()["status"] == "queued"
        assert (await client.get(f"/runs/{third['run_id']}")).json()["status"] == "queued"

        resp = await client.post(f"/runs/{second['run_id']}/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "cancelled"
        assert (await client.get(f"/runs/{first['run_id']}")).json()["status"] == "running"
        assert (await client.get(f"/runs/{third['run_id']}")).json()["status"] == "queued"

        # The cancelled queued run's stream: queued, then cancelled, and it ends.
        second_events = (await read_stream(client, second["events_url"], timeout=5)).events
        assert states(second_events) == ["queued", "cancelled"]
        assert [e["ns"] for e in second_events] == ["STATUS", "STATUS"]

        first_snap = await wait_finished(client, first["run_id"])
        assert first_snap["status"] == "succeeded"
        third_snap = await wait_finished(client, third["run_id"])
        assert third_snap["status"] == "succeeded"
        assert third_snap["started_at"] >= first_snap["ended_at"]

        # The cancelled one never ran, even after the queue drained past it.
        second_snap = (await client.get(f"/runs/{second['run_id']}")).json()
        assert second_snap["status"] == "cancelled"
        assert second_snap["attempt"] == 0 and second_snap["started_at"] is None
        assert second_snap["last_seq"] == 2
        third_events = (await read_stream(client, third["events_url"])).events
        assert states(third_events) == ["queued", "running", "succeeded"]
