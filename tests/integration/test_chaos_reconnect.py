"""Chaos reconnect: clients that drop at random points and resume get every event exactly once, in order.

Contract items 1, 2 and 4 end to end, through a real uvicorn process: many runs, several at a
time, each watched by a client that cuts its connection after a random number of events or a
random time (sometimes mid-frame), then reconnects with ``Last-Event-ID`` (or ``?last_event_id=``,
or ``?after=``) until the terminal event. Runs last a couple of seconds, so most reconnects land
while the run is still producing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.support import ServerProcess

from .conftest import full_log, is_terminal, make_client, start_server

RUNS = 20
CONCURRENT = 5
QUESTIONS = [
    "What is 17 times 23?",
    "What is the square root of 1764 plus 12?",
    "What does the corpus say about server-sent events?",
    "Who designed the Python language, and when?",
    "What is 2 to the power of 16 minus 1, and what is a JSON Web Token?",
]


@pytest.fixture(scope="module")
def chaos_server() -> Iterator[ServerProcess]:
    """Slow-ish tokens so a reflective run lasts ~2 s: reconnects land mid-run."""
    server = start_server(env={"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "90",
                               "THOUGHTSTREAM_SSE_PING_S": "1"})
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Follow:
    run_id: str
    received: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    reconnects: int = 0
    live_reconnects: int = 0  # reconnects that then got events appended after the reconnect
    cursor_styles: Counter[str] = field(default_factory=Counter)
    ended_by_server: bool = False


async def follow_with_chaos(client: httpx.AsyncClient, run_id: str, rng: random.Random) -> Follow:
    """Watch ``run_id``, dropping the connection at random, until the terminal event."""
    out = Follow(run_id)
    url = f"/runs/{run_id}/events"
    while True:
        headers: dict[str, str] = {}
        params: dict[str, str] = {}
        reconnect = bool(out.received)
        if reconnect:
            cursor = str(out.received[-1]["seq"])
            style = rng.choices(["header", "query", "after"], weights=[6, 3, 1])[0]
            if style == "header":
                headers["Last-Event-ID"] = cursor
            elif style == "query":
                params["last_event_id"] = cursor
            else:
                params["after"] = cursor
            out.cursor_styles[style] += 1
            out.reconnects += 1
        out.connections += 1
        connected_at = time.time()
        # Hang up after a random number of events, or after a random time (possibly mid-frame).
        by_count = rng.random() < 0.6
        max_events = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 34])
        max_time = rng.uniform(0.0, 0.35)
        got_live = False
        async with aconnect_sse(client, "GET", url, headers=headers, params=params) as source:
            assert source.response.status_code == 200, await source.response.aread()
            if by_count and max_events == 0:
                continue  # connect, then hang up at once
            taken = 0
            frames = source.aiter_sse()
            try:
                async with asyncio.timeout(None if by_count else max_time):
                    async for sse in frames:
                        if not sse.data:
                            continue
                        event = json.loads(sse.data)
                        assert sse.id == str(event["seq"]) and sse.event == event["ns"], sse
                        out.received.append(event)
                        got_live |= event["ts"] > connected_at
                        taken += 1
                        if is_terminal(event):
                            break
                        if by_count and taken >= max_events:
                            break
                    else:
                        raise AssertionError(f"run {run_id}: stream closed before the terminal event")
            except TimeoutError:
                pass  # our own random hang-up; the response is closed on leaving the block
            if reconnect and got_live:
                out.live_reconnects += 1
            if out.received and is_terminal(out.received[-1]):
                # The server closes the stream by itself after the terminal event.
                async with asyncio.timeout(5):
                    async for extra in frames:
                        assert not extra.data, f"data after the terminal event: {extra}"
                out.ended_by_server = True
                return out


def analyse(events: list[dict[str, Any]]) -> dict[str, int]:
    """Missing, duplicate and out-of-order counts of a sequence of delivered events."""
    got = [e["seq"] for e in events]
    counts = Counter(got)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    missing = len(set(range(1, max(got, default=0) + 1)) - set(got))
    out_of_order = sum(1 for a, b in zip(got, got[1:]) if b <= a)
    return {"missing": missing, "duplicates": duplicates, "out_of_order": out_of_order}


async def test_random_disconnects_resume_exactly(chaos_server: ServerProcess) -> None:
    """20 runs, 5 at a time, clients dropping at random: zero missing/duplicate/out-of-order; stream == full log."""
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))
    master = random.Random(seed)
    limit = asyncio.Semaphore(CONCURRENT)
    follows: list[Follow] = []

    async with make_client(chaos_server) as client:

        async def one(index: int) -> None:
            rng = random.Random(master.random())
            async with limit:
                resp = await client.post("/runs", json={
                    "agent": "reflective", "input": {"question": QUESTIONS[index % len(QUESTIONS)]}})
                assert resp.status_code == 202, resp.text
                follows.append(await follow_with_chaos(client, resp.json()["run_id"], rng))

        async with asyncio.timeout(80):
            await asyncio.gather(*(one(i) for i in range(RUNS)))

        assert len(follows) == RUNS
        for f in follows:
            report = analyse(f.received)
            assert report == {"missing": 0, "duplicates": 0, "out_of_order": 0}, (
                f"seed {seed}, run {f.run_id}: {report} over {f.connections} connections")
            assert f.ended_by_server
            assert is_terminal(f.received[-1])
            assert f.received[-1]["data"]["state"] == "succeeded"
            assert sum(is_terminal(e) for e in f.received) == 1
            # The concatenation of all the pieces equals the log read afterwards from cursor 0.
            assert f.received == await full_log(client, f.run_id), f"seed {seed}, run {f.run_id}"

    reconnects = sum(f.reconnects for f in follows)
    live = sum(f.live_reconnects for f in follows)
    styles = sum((f.cursor_styles for f in follows), Counter())
    print(f"chaos seed={seed}: {RUNS} runs, {sum(len(f.received) for f in follows)} events, "
          f"{reconnects} reconnects ({live} mid-run), cursor styles {dict(styles)}")
    assert reconnects >= 3 * RUNS, f"seed {seed}: only {reconnects} reconnects; the chaos is too tame"
    assert live >= reconnects // 2, (
        f"seed {seed}: only {live} of {reconnects} reconnects happened while the run was still going")
    assert styles["header"] and styles["query"], styles
