"""A worker's periodic tasks (the reaper, the loop tick) while Redis is away: retried quickly,
but said once at the start of the outage (then once a minute), and once when it ends."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from server.runs import worker as worker_mod
from server.runs.worker import Worker


async def run_periodic(fail_times: int, *, period: float = 0.02) -> int:
    """Run ``Worker._periodic`` until the tick has failed ``fail_times`` and then worked twice."""
    calls = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal calls
        calls += 1
        if calls <= fail_times:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        if calls >= fail_times + 2:
            done.set()

    task = asyncio.create_task(Worker._periodic(SimpleNamespace(name="w-1"), period, "reaper", tick))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return calls


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == worker_mod.__name__ and r.levelno >= logging.WARNING]


async def test_an_outage_is_said_once_at_its_start_and_once_at_its_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=worker_mod.__name__)
    assert await run_periodic(12) == 14  # retried through the outage, at most a period apart
    said = warnings_of(caplog)
    assert len(said) == 2, said
    assert said[0].startswith("worker w-1: reaper failed for 0s (Error 111"), said
    assert "works again after" in said[1], said
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "reaper failed" in r.getMessage()]
    assert len(retries) == 11  # every other failure, for whoever turns debug on


async def test_a_long_outage_is_said_again_every_so_often(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_mod, "OUTAGE_LOG_EVERY_S", 0.05)
    caplog.set_level(logging.WARNING, logger=worker_mod.__name__)
    await run_periodic(30)
    said = warnings_of(caplog)
    failing = [m for m in said if "reaper failed for" in m]
    assert 2 <= len(failing) < 30, said  # repeated while it lasts, never once per retry
    assert said[-1].startswith("worker w-1: reaper works again after"), said


async def test_a_healthy_tick_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=worker_mod.__name__)
    await run_periodic(0)
    assert warnings_of(caplog) == []
