"""The Sink: a subscriber's bounded live buffer and its one reader's wake-up."""

from __future__ import annotations

import asyncio

import pytest

from server.bus.base import Sink
from server.events import Event


def ev(seq: int) -> Event:
    return Event(run_id="r", seq=seq, ns="THOUGHT", agent="a", data={}, ts=0.0)


async def test_a_push_before_the_wait_returns_at_once_and_take_hands_over_in_order() -> None:
    sink = Sink(8)
    sink.push(ev(1))
    sink.push(ev(2))
    await asyncio.wait_for(sink.wait(), 1)
    first = sink.take()
    assert [e.seq for e in first] == [1, 2]
    sink.push(ev(3))  # after a take: a new list, the reader's stays as it was
    assert [e.seq for e in first] == [1, 2]
    assert [e.seq for e in sink.take()] == [3]


async def test_a_waiting_reader_is_woken_by_a_push_and_then_waits_again() -> None:
    sink = Sink(8)
    reader = asyncio.create_task(sink.wait())
    await asyncio.sleep(0.01)
    assert not reader.done()
    sink.push(ev(1))
    await asyncio.wait_for(reader, 1)
    assert [e.seq for e in sink.take()] == [1]
    with pytest.raises(TimeoutError):  # nothing since the take: it waits
        await asyncio.wait_for(sink.wait(), 0.05)


async def test_a_wake_after_a_cancelled_wait_is_not_lost() -> None:
    """A reader whose wait timed out (the long-poll's doorbell) finds the next wake-up."""
    sink = Sink(8)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sink.wait(), 0.01)
    sink.poke()
    await asyncio.wait_for(sink.wait(), 1)
    assert sink.poked and sink.take() == [] and not sink.poked


async def test_an_overflow_empties_the_buffer_once_per_episode() -> None:
    sink = Sink(3)
    for seq in range(1, 8):
        sink.push(ev(seq))
    assert sink.overflowed and sink.drops == 1
    assert [e.seq for e in sink.take()] == [7]  # cut at 4 (then 1 kept) and at 7
    sink.overflowed = False  # the subscription resynced from the log
    for seq in range(8, 12):
        sink.push(ev(seq))
    assert sink.drops == 2


async def test_resync_and_stop_wake_the_reader() -> None:
    for ring in (Sink.resync_needed, Sink.wake):
        sink = Sink(4)
        reader = asyncio.create_task(sink.wait())
        await asyncio.sleep(0)
        ring(sink)
        await asyncio.wait_for(reader, 1)
