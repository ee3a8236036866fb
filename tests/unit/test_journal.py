"""The journal as the home of finished logs, and the memory bus's bound on what it keeps.

Counted, not timed: which logs are in memory, what the disk keeps, what a reader gets.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from server.bus.base import CursorExpired, LogClosed, Sink
from server.bus.subscription import subscribe
from server.bus.memory import MemoryBus
from server.events import STATUS, Event
from server.journal import Journal


async def finish(bus: MemoryBus, run_id: str, tokens: int) -> None:
    await bus.append(run_id, STATUS, "server", {"state": "running"})
    for i in range(tokens):
        await bus.append(run_id, "THOUGHT", "a", {"i": i})
    await bus.append(run_id, STATUS, "server", {"state": "succeeded"})
    await bus.flush()


async def drain(bus: MemoryBus, run_id: str, after: int | None) -> list[int]:
    out: list[int] = []
    async with await subscribe(bus, run_id, after) as sub:
        async for batch in sub:
            out += [e.seq for e in batch]
    return out


async def test_finished_logs_leave_memory_and_read_back_from_disk_with_the_same_cursor_rules(tmp_path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal, MemoryBus(
            max_events=10, ttl_s=3600, subscriber_buffer=64, journal=journal, finished_max_events=0) as bus:
        await finish(bus, "short", 3)  # 5 events: whole
        await finish(bus, "long", 20)  # 22 events: the last 10 kept
        assert bus.stats()["logs_finished"] == 0 and bus.stats()["logs_live"] == 0
        b = await bus.bounds("long")
        assert (b.first_seq, b.last_seq, b.ended) == (13, 22, True)
        assert await drain(bus, "short", 0) == [1, 2, 3, 4, 5]
        assert await drain(bus, "long", None) == list(range(13, 23))
        assert await drain(bus, "long", 12) == list(range(13, 23))
        assert await drain(bus, "long", 17) == list(range(18, 23))
        assert await drain(bus, "long", 22) == []
        with pytest.raises(CursorExpired):
            await bus.read("long", 11)
        with pytest.raises(CursorExpired):
            await subscribe(bus, "long", 0)
        assert [e.seq for e in await bus.read("long", 12, 3)] == [13, 14, 15]
        with pytest.raises(LogClosed):  # an ended log on disk takes no more events
            await bus.append("long", "THOUGHT", "a", {})
        assert await bus.bounds("never") is None
    # The disk keeps what the log keeps, not everything the run emitted.
    with sqlite3.connect(tmp_path / "j.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE run_id = 'long'").fetchone() == (10,)
        assert conn.execute("SELECT first_seq, last_seq FROM logs WHERE run_id = 'long'").fetchone() == (13, 22)


async def test_finished_logs_in_memory_are_bounded_oldest_end_first_and_a_read_one_stays(tmp_path) -> None:
    async with MemoryBus(max_events=100, ttl_s=3600, subscriber_buffer=64, finished_max_events=25) as bus:
        for k in range(5):
            await finish(bus, f"r{k}", 8)  # 10 events each
        assert bus.stats()["logs_finished"] == 2 and bus.stats()["finished_events"] == 20
        assert await bus.bounds("r2") is None and await bus.bounds("r3") is not None
        sink = Sink(16)
        await bus.attach("r3", sink)  # a watcher reading r3 keeps it
        await finish(bus, "r5", 8)
        await finish(bus, "r6", 8)
        assert await bus.bounds("r3") is not None and await bus.bounds("r4") is None
        await bus.detach("r3", sink)  # ... until it goes: then it is the oldest again
        await finish(bus, "r7", 8)
        assert await bus.bounds("r3") is None and await bus.bounds("r6") is not None
        assert bus.stats()["finished_events"] <= 25
        # Watching a run that never writes leaves nothing behind.
        await bus.attach("ghost", sink)
        await bus.detach("ghost", sink)
        assert "ghost" not in bus._logs


async def test_ttl_expires_finished_logs_on_disk_except_while_read(tmp_path) -> None:
    async with Journal(tmp_path / "j.sqlite") as journal, MemoryBus(
            max_events=100, ttl_s=60, subscriber_buffer=64, journal=journal, finished_max_events=0) as bus:
        await finish(bus, "a", 2)
        await finish(bus, "b", 2)
        sink = Sink(16)
        await bus.attach("b", sink)  # from the journal: pinned, not in memory
        assert bus.stats()["journal_readers"] == 1
        bus.reap(now=time.monotonic() + 61)
        await bus.flush()
        assert await bus.bounds("a") is None
        assert (await bus.bounds("b")).last_seq == 4
        await bus.detach("b", sink)
        bus.reap(now=time.monotonic() + 61)
        await bus.flush()
        assert await bus.bounds("b") is None and bus.stats()["journal_readers"] == 0


async def test_restart_reloads_only_live_logs_and_backfills_an_old_journal(tmp_path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal(path) as journal, MemoryBus(
            max_events=100, ttl_s=3600, subscriber_buffer=64, journal=journal) as bus:
        await finish(bus, "done", 3)
        await bus.append("live", STATUS, "server", {"state": "running"})
        await bus.flush()
    # A journal from before the logs table: its finished log has no row there.
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM logs")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", [
            ("old", 1, Event("old", 1, "THOUGHT", "a", {}, 1.0).encode()),
            ("old", 2, Event("old", 2, STATUS, "server", {"state": "failed"}, 2.0).encode())])
    async with Journal(path) as journal, MemoryBus(
            max_events=100, ttl_s=3600, subscriber_buffer=64, journal=journal) as bus:
        records, logs = await journal.load()
        assert set(logs) == {"live"}
        bus.restore(logs)
        assert bus.stats()["logs_live"] == 1 and bus.stats()["logs_finished"] == 0
        assert await drain(bus, "done", 0) == [1, 2, 3, 4, 5]
        assert await drain(bus, "old", None) == [1, 2]
        assert (await bus.append("live", "THOUGHT", "a", {})).seq == 2  # the live log goes on


async def test_a_flush_waits_for_the_commit_that_holds_what_was_handed_over_and_no_longer(tmp_path) -> None:
    """The checkpoint barrier's wait: counted in commits (the writer's thread hops), not timed."""
    async with Journal(tmp_path / "j.sqlite") as journal:
        commits = 0
        commit = journal._commit

        def counted(*args):
            nonlocal commits
            commits += 1
            return commit(*args)

        journal._commit = counted
        await journal.flush()  # nothing handed over: no commit at all
        assert commits == 0
        journal.put_event(Event("r", 1, STATUS, "server", {"state": "running"}, time.time()))
        await journal.flush()
        assert commits == 1
        await journal.flush()  # everything is kept already
        assert commits == 1
        # Flushes asked while one group commits, with nothing new handed over, wait for that
        # group only; with more handed over, for the next one too, and it holds it.
        journal.put_event(Event("r", 2, "THOUGHT", "a", {"i": 0}, time.time()))
        await asyncio.sleep(0)  # the writer takes the group
        first = asyncio.ensure_future(journal.flush())
        journal.put_event(Event("r", 3, "THOUGHT", "a", {"i": 1}, time.time()))
        second = asyncio.ensure_future(journal.flush())
        await first
        await second
        assert commits == 3
        with sqlite3.connect(tmp_path / "j.sqlite") as conn:
            assert conn.execute("SELECT MAX(seq) FROM events").fetchone() == (3,)
