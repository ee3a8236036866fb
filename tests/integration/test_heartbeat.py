"""Keep-alive: an idle stream carries `: ping` comments so proxies do not cut it."""

from __future__ import annotations

import asyncio
import time

import httpx

from .conftest import parse_frames, start_run


async def test_ping_comments_flow_while_the_run_is_silent(client: httpx.AsyncClient) -> None:
    """With SSE_PING_S=0.5, a run that sleeps 2 s shows `: ping` lines on the wire before its next event."""
    run = await start_run(client, "napper", {"nap_s": 2.0})
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    async with client.stream("GET", run["events_url"]) as resp:
        assert resp.status_code == 200
        async with asyncio.timeout(15):
            async for chunk in resp.aiter_raw():  # raw bytes: an SSE client library hides comments
                arrivals.append((time.monotonic() - started, chunk))
    raw = b"".join(chunk for _, chunk in arrivals)
    frames = parse_frames(raw)
    pings = [i for i, lines in enumerate(frames) if lines == [": ping"]]
    woke = next(i for i, lines in enumerate(frames) if "event: WOKE" in lines)
    assert len([i for i in pings if i < woke]) >= 2, frames  # ~4 expected during the 2 s nap
    assert b"\n: ping\n\n" in raw
    # The pings arrived while the run was silent, spread out, not in one burst at the end.
    ping_times = [t for t, chunk in arrivals if b": ping" in chunk]
    assert len(ping_times) >= 2 and ping_times[0] < ping_times[-1] - 0.3, ping_times
    assert frames[-1][1] == "event: STATUS" and '"state":"succeeded"' in frames[-1][2]
