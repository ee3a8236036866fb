"""Bounded memory, counted (not timed): after many finished runs the memory bus holds no
finished logs beyond its bound, and every finished run is still whole over SSE — from the
start, from the middle, from its last seq — with 410 for a cursor older than what is kept
and 400 past the end, from memory or from the journal, and again after a restart.

What the bus holds is read from the server's own stats line (THOUGHTSTREAM_STATS_LOG_S),
the operator's view, not a test-only door.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx
import pytest

from tests.support import ServerProcess

from .conftest import TEST_AGENTS, agent_flags, assert_gapless, is_terminal, make_client, read_stream, wait_finished

LOG_MAX = 30  # events a log keeps (THOUGHTSTREAM_LOG_MAX_EVENTS)
FINISHED_MAX = 60  # finished events kept in memory (THOUGHTSTREAM_FINISHED_LOGS_MAX_EVENTS)
SHORT, LONG = 8, 40  # TICKs per run: a short log is whole, a long one is trimmed to LOG_MAX
RUNS = 24


def server(data_dir: str, **env: str) -> ServerProcess:
    return ServerProcess(*agent_flags({"ticker": TEST_AGENTS["ticker"]}), env={
        "THOUGHTSTREAM_DATA_DIR": data_dir,
        "THOUGHTSTREAM_LOG_MAX_EVENTS": str(LOG_MAX),
        "THOUGHTSTREAM_FINISHED_LOGS_MAX_EVENTS": str(FINISHED_MAX),
        "THOUGHTSTREAM_STATS_LOG_S": "0.1",
        "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "4",
        **env,
    })


def stats_lines(srv: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in srv.output().splitlines():
        _, sep, rest = line.partition("server.stats: stats ")
        if sep:
            out.append(json.loads(rest))
    return out


def quiet_stats(srv: ServerProcess, timeout: float = 15.0) -> dict[str, Any]:
    """The first stats line written after this call that shows nothing running."""
    seen = len(stats_lines(srv))
    deadline = time.monotonic() + timeout
    while True:
        lines = stats_lines(srv)
        for st in lines[seen:]:
            if st["runner_running"] == 0 and st["runner_queued"] == 0 and st["bus_logs_live"] == 0:
                return st
        seen = len(lines)
        assert time.monotonic() < deadline, f"the server did not go quiet: {lines[-1:]}"
        time.sleep(0.1)


async def run_all(client: httpx.AsyncClient) -> list[str]:
    ids = []
    for k in range(RUNS):
        count = LONG if k % 6 == 0 else SHORT
        resp = await client.post("/runs", json={"agent": "ticker", "input": {"count": count, "interval_s": 0}})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["run_id"])
    for run_id in ids:
        await wait_finished(client, run_id)
    return ids


async def check_readable(client: httpx.AsyncClient, run_id: str, whole: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Every cursor rule on one finished run; returns its log as read with no cursor."""
    snap = (await client.get(f"/runs/{run_id}")).json()
    first, last = snap["first_seq"], snap["last_seq"]
    assert first is not None and last is not None, snap
    stream = await read_stream(client, f"/runs/{run_id}/events", timeout=10)
    assert stream.status_code == 200 and stream.closed_by_server
    events = stream.events
    assert_gapless(events, first)
    assert events[-1]["seq"] == last and is_terminal(events[-1]) and sum(map(is_terminal, events)) == 1
    if whole is not None:
        assert events == whole  # the same bytes' worth, wherever it is read from
    if first == 1:  # a whole log: from 0 is the same
        zero = await read_stream(client, f"/runs/{run_id}/events", headers={"Last-Event-ID": "0"})
        assert zero.events == events
    else:
        assert last - first + 1 == LOG_MAX
        assert stream.others and stream.others[0][0] == "reset"  # no cursor, trimmed start: said so
        for stale in ("0", str(first - 2)):
            resp = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": stale})
            assert resp.status_code == 410 and resp.json()["error"]["code"] == "cursor_expired", resp.text
        oldest = await read_stream(client, f"/runs/{run_id}/events", headers={"Last-Event-ID": str(first - 1)})
        assert oldest.events == events
    mid = (first + last) // 2
    tail = await read_stream(client, f"/runs/{run_id}/events", headers={"Last-Event-ID": str(mid)})
    assert tail.events == [e for e in events if e["seq"] > mid]
    at_end = await read_stream(client, f"/runs/{run_id}/events", headers={"Last-Event-ID": str(last)}, timeout=5)
    assert at_end.status_code == 200 and at_end.closed_by_server and at_end.events == []
    ahead = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": str(last + 1)})
    assert ahead.status_code == 400 and ahead.json()["error"]["code"] == "cursor_ahead", ahead.text
    return events


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("bounded"))


@pytest.fixture(scope="module")
def journaled(data_dir: str) -> Iterator[ServerProcess]:
    srv = server(data_dir).start()
    try:
        yield srv
    finally:
        srv.stop()


def assert_bounded(stats: dict[str, Any]) -> None:
    assert stats["bus_logs_live"] == 0, stats
    assert stats["bus_finished_events"] <= FINISHED_MAX, stats
    # Runs of 12+ events, at most FINISHED_MAX of them in memory: a handful of logs, not RUNS.
    assert stats["bus_logs_finished"] <= FINISHED_MAX // (SHORT + 4), stats
    assert stats["runner_running"] == 0 and stats["bus_journal_readers"] == 0, stats


async def test_finished_logs_leave_memory_and_stay_readable_across_a_restart(journaled: ServerProcess,
                                                                            data_dir: str) -> None:
    async with make_client(journaled) as client:
        ids = await run_all(client)
        assert_bounded(quiet_stats(journaled))
        logs = {run_id: await check_readable(client, run_id, None) for run_id in ids}
        # Reading them all (most from the journal) brought none back into memory.
        assert_bounded(quiet_stats(journaled))
    journaled.stop()
    again = server(data_dir).start()
    try:
        start = quiet_stats(again)
        assert start["bus_logs_finished"] == 0 and start["bus_logs_live"] == 0, start  # nothing reloaded
        async with make_client(again) as client:
            for run_id in ids:
                await check_readable(client, run_id, logs[run_id])
            # New runs after the restart: the same bound holds, and the old runs still read.
            more = await run_all(client)
            assert_bounded(quiet_stats(again))
            for run_id in (ids[0], ids[1], more[0], more[-1]):
                await check_readable(client, run_id, logs.get(run_id))
    finally:
        again.stop()


async def test_memory_only_keeps_finished_logs_up_to_the_bound(tmp_path) -> None:
    """THOUGHTSTREAM_JOURNAL=false: the bound is all the history kept; older logs are gone
    (410 log_expired, as after their TTL), the newest ones read whole."""
    srv = server(str(tmp_path), THOUGHTSTREAM_JOURNAL="false").start()
    try:
        async with make_client(srv) as client:
            ids = await run_all(client)
            stats = quiet_stats(srv)
            assert_bounded(stats)
            kept = 0
            for run_id in ids:
                snap = (await client.get(f"/runs/{run_id}")).json()
                if snap["last_seq"] is None:  # its log left memory: gone, as after its TTL
                    resp = await client.get(f"/runs/{run_id}/events")
                    assert resp.status_code == 410 and resp.json()["error"]["code"] == "log_expired", resp.text
                    continue
                kept += 1
                await check_readable(client, run_id, None)
            assert kept == stats["bus_logs_finished"] and 0 < kept < RUNS
            assert (await client.get(f"/runs/{ids[-1]}")).json()["last_seq"] is not None  # the newest stays
    finally:
        srv.stop()
