"""A worker that lost its lease never writes to the run again (issue 14, section 7).

kill -9 is the easy case: the dead write nothing. Here the owner is frozen (SIGSTOP: its
loop and its lease thread alike, as in a long GC pause or a VM migration) past its lease,
another worker takes the run over and resumes it from its checkpoint in Redis, and then the
frozen worker wakes up (SIGCONT) in the middle of its step with events and a checkpoint to
write. Its writes carry the old fencing token and are refused; the stream stays that of one
clean run plus one resumed attempt.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from server.config import Settings
from tests.integration.test_redis_topology import (QUESTION, assert_exact, comparable, fold, read_sse,
                                                   start_run, wait_running_owner)
from tests.support import redis_topology

LEASE_S = Settings().worker_lease_s


async def test_a_frozen_owner_that_wakes_after_a_takeover_writes_nothing():
    env = {"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "60"}
    with redis_topology(["api1"], ["w1", "w2"], env) as (redis, procs):
        api = procs["api1"]
        clean_id = start_run(api, QUESTION)
        clean, _ = await read_sse(f"{api.url}/runs/{clean_id}/events", timeout=60)
        run_id = start_run(api, QUESTION)
        watcher = asyncio.create_task(read_sse(f"{api.url}/runs/{run_id}/events", timeout=90))
        _, owner = await wait_running_owner(procs, run_id)
        deadline = time.monotonic() + 15
        while httpx.get(f"{api.url}/runs/{run_id}").json().get("progress", {}).get("step", -1) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # mid-step: tokens streaming
        assert owner.proc is not None
        owner.proc.send_signal(signal.SIGSTOP)
        try:
            # Until the other worker has taken the run over and written its resumed mark.
            deadline = time.monotonic() + LEASE_S + 10
            while httpx.get(f"{api.url}/runs/{run_id}").json().get("attempt") != 2:
                assert time.monotonic() < deadline, "the frozen worker's run was not taken over"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        finally:
            owner.proc.send_signal(signal.SIGCONT)
        events, done = await asyncio.wait_for(watcher, 90)
        assert done and events[-1]["data"]["state"] == "succeeded"
        assert_exact(events)  # one terminal STATUS, seqs 1..n with no hole or repeat
        marks = [e for e in events if e["data"].get("state") == "resumed"]
        assert len(marks) == 1 and marks[0]["data"]["attempt"] == 2
        # Had the woken worker appended anything after the takeover, it would follow the
        # resumed mark and survive the fold: the folded stream would not be a clean run's.
        assert comparable(fold(events)) == comparable(clean)
        snap = httpx.get(f"{api.url}/runs/{run_id}").json()
        assert snap["status"] == "succeeded" and snap["attempt"] == 2
        assert f"-{owner.proc.pid}-" not in snap["worker"]
        deadline = time.monotonic() + 15  # the woken worker's next write is refused, then it logs
        while "taken over by another worker" not in (out := owner.output()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "taken over by another worker" in out, out[-3000:]
        await asyncio.sleep(1.0)  # and it has had time to fall over, had it not carried on
        assert owner.proc.poll() is None, "the woken worker must carry on (it only lost that run)"
