"""The delivery gate's logic (server/gate/gate.py) and its stores (server/gate/contexts.py,
server/gate/presence.py), directly, on every backend of the contract suite.

The backend parametrization is the contract suite's own (``tests/contract/conftest.py``:
``backend_name`` over memory / journaled / redis, ``make_bus``, ``make_runs``), imported
here: memory and journaled use the memory context store and presence, redis the Redis ones
against a real redis-server (``tests/support.py`` RedisServer, via the session fixture).
Redis-only behaviour (two processes sharing presence, expiry of a dead process's watchers,
log generations) is tested against two independent connections, as two processes have.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

import pytest

from server.gate.contexts import ContextRecord, MemoryContextStore, RedisContextStore, log_id
from server.gate.gate import EXPIRED, FRESH, STALE, SUPERSEDED, Gate
from server.gate.presence import MemoryPresence, RedisPresence
from server.runs.lifecycle import Lifecycle
from server.runs.store import CANCELLED, FAILED, RUNNING, SUCCEEDED, RunRecord
from tests.contract.conftest import backend_name, make_bus, make_runs  # noqa: F401 - the fixtures

# ============================================================================= fixtures


@dataclass
class World:
    backend: str
    bus: Any
    store: Any
    contexts: Any
    presence: Any
    gate: Gate
    lifecycle: Lifecycle
    ops: Any = None


@contextlib.asynccontextmanager
async def redis_ops(url: str) -> AsyncIterator[Any]:
    from server.backends import redis_connection

    async with redis_connection(url, outage_s=10.0) as ops:
        yield ops


@pytest.fixture
def make_world(backend_name: str, make_runs: Callable[..., Any],  # noqa: F811
               request: pytest.FixtureRequest) -> Callable[..., Any]:
    """make_world(deliver_within_s=..., inbox_max=..., inbox_ttl_s=...) -> the gate wired as
    server/backends.py wires it: the lifecycle decides verdicts, its end hook announces them,
    every subscription of the bus counts as presence."""

    @contextlib.asynccontextmanager
    async def factory(*, deliver_within_s: float = 3600.0, inbox_max: int = 50,
                      inbox_ttl_s: float = 3600.0) -> AsyncIterator[World]:
        async with make_runs() as (bus, store), contextlib.AsyncExitStack() as stack:
            ops = None
            if backend_name == "redis":
                ops = await stack.enter_async_context(redis_ops(request.getfixturevalue("redis_server").url))
                contexts: Any = RedisContextStore(ops, prefix=bus.prefix, inbox_max=inbox_max,
                                                  inbox_ttl_s=inbox_ttl_s)
                presence: Any = await stack.enter_async_context(
                    RedisPresence(ops, prefix=bus.prefix, process="p1"))
            else:
                contexts = MemoryContextStore(inbox_max=inbox_max, inbox_ttl_s=inbox_ttl_s)
                presence = MemoryPresence()
            gate = Gate(contexts=contexts, bus=bus, presence=presence, deliver_within_s=deliver_within_s)
            bus.presence = presence
            lifecycle = Lifecycle(store=store, bus=bus)
            lifecycle.gate = gate  # as backends._gate wires it: the lifecycle calls the gate at each ending
            yield World(backend_name, bus, store, contexts, presence, gate, lifecycle, ops)

    return factory


def key_() -> str:
    return f"doc-{uuid.uuid4().hex[:8]}"


def record(key: str | None, version: str = "v1", *, created_at: float | None = None, tenant: str = "acme",
           on_stale: str = "mark", deliver_within_s: float | None = None, **kw: Any) -> RunRecord:
    context = None if key is None else {"key": key, "version": version, "on_stale": on_stale,
                                        "deliver_within_s": deliver_within_s}
    return RunRecord(run_id=uuid.uuid4().hex, agent="a", input={}, tenant=tenant, context=context,
                     created_at=time.time() if created_at is None else created_at, **kw)


async def started(w: World, rec: RunRecord) -> RunRecord:
    """As RunService.submit does it: stored, its first event, then the gate hears of it."""
    stored, created = await w.store.create(rec)
    assert created
    await w.bus.append(stored.run_id, "STATUS", "server", {"state": "queued"})
    await w.gate.started(stored)
    return stored


async def executing(w: World, rec: RunRecord) -> RunRecord:
    rec = await started(w, rec)
    return await w.store.transition(rec.run_id, RUNNING, started_at=time.time(), attempt=1)


async def ctx_events(w: World, tenant: str, key: str) -> list[Any]:
    rec = await w.contexts.get(tenant, key)
    assert rec is not None
    await w.bus.flush()  # journaled: an event is readable once the journal kept it
    return await w.bus.read(rec.log_id, 0)


async def run_events(w: World, run_id: str) -> list[Any]:
    await w.bus.flush()
    return await w.bus.read(run_id, 0)


VERDICT_KEYS = {"state", "reason", "key", "version", "current_version", "age_s"}


# ============================================================================= Gate.decide


async def test_no_context_no_verdict(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        rec = await started(w, record(None))
        assert await w.gate.decide(rec) is None
        assert Gate.held(rec, SUCCEEDED, None) is False
        await w.gate.ended(rec)  # nothing to announce, nothing to raise


async def test_fresh(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await started(w, record(key, "rev-17", created_at=1000.0))
        v = await w.gate.decide(rec, now=1012.3456)
        assert v == {"key": key, "version": "rev-17", "current_version": "rev-17", "age_s": 12.346,
                     "state": FRESH, "reason": v["reason"]}
        assert "rev-17" in v["reason"]


async def test_a_run_on_an_unknown_context_is_fresh(make_world: Callable[..., Any]) -> None:
    """The record names a context the store never heard of: judged against its own version."""
    async with make_world() as w:
        rec = record(key_(), "v1")
        v = await w.gate.decide(rec)
        assert v["state"] == FRESH and v["current_version"] == "v1"


async def test_stale_gives_both_versions(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await started(w, record(key, "rev-17"))
        await w.gate.set_version("acme", key, "rev-18")
        v = await w.gate.decide(rec)
        assert set(v) == VERDICT_KEYS and v["state"] == STALE
        assert (v["version"], v["current_version"]) == ("rev-17", "rev-18")
        assert "rev-17" in v["reason"] and "rev-18" in v["reason"]


async def test_moved_and_back_is_fresh(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await started(w, record(key, "a"))
        await w.gate.set_version("acme", key, "b")
        await w.gate.set_version("acme", key, "a")
        assert (await w.gate.decide(rec))["state"] == FRESH


async def test_superseded_by_a_run_created_later(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        first = await started(w, record(key, created_at=100.0))
        second = await started(w, record(key, created_at=101.0))
        v = await w.gate.decide(first, now=102.0)
        assert set(v) == VERDICT_KEYS | {"superseded_by"}
        assert v["state"] == SUPERSEDED and v["superseded_by"] == second.run_id and second.run_id in v["reason"]
        assert (await w.gate.decide(second, now=102.0))["state"] == FRESH


async def test_a_run_registered_later_but_created_earlier_supersedes_nothing(make_world: Callable[..., Any]) -> None:
    """"Created after": what counts is created_at, not the order the gate heard of them."""
    async with make_world() as w:
        key = key_()
        newer = await started(w, record(key, created_at=200.0))
        older = await started(w, record(key, created_at=150.0))
        assert (await w.gate.decide(newer, now=201.0))["state"] == FRESH
        v = await w.gate.decide(older, now=201.0)
        assert v["state"] == SUPERSEDED and v["superseded_by"] == newer.run_id


async def test_another_key_or_tenant_supersedes_nothing_and_moves_nothing(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await started(w, record(key, created_at=100.0, tenant="acme"))
        await started(w, record(key, created_at=101.0, tenant="globex"))
        await started(w, record(key_(), created_at=101.0, tenant="acme"))
        await w.gate.set_version("globex", key, "v9")
        v = await w.gate.decide(rec, now=102.0)
        assert v["state"] == FRESH and v["current_version"] == "v1"


async def test_expired_after_deliver_within_s(make_world: Callable[..., Any]) -> None:
    async with make_world(deliver_within_s=60.0) as w:
        key = key_()
        rec = await started(w, record(key, created_at=1000.0))
        assert (await w.gate.decide(rec, now=1060.0))["state"] == FRESH  # exactly at the limit: still fresh
        v = await w.gate.decide(rec, now=1060.5)
        assert v["state"] == EXPIRED and v["age_s"] == 60.5 and set(v) == VERDICT_KEYS
        assert "60.5" in v["reason"] and "60" in v["reason"]
        # A run's own deliver_within_s overrides the setting, both ways.
        short = await started(w, record(key_(), created_at=1000.0, deliver_within_s=5.0))
        assert (await w.gate.decide(short, now=1006.0))["state"] == EXPIRED
        long = await started(w, record(key_(), created_at=1000.0, deliver_within_s=600.0))
        assert (await w.gate.decide(long, now=1300.0))["state"] == FRESH


async def test_precedence(make_world: Callable[..., Any]) -> None:
    async with make_world(deliver_within_s=10.0) as w:
        key = key_()
        a = await started(w, record(key, "v1", created_at=100.0))
        b = await started(w, record(key, "v1", created_at=101.0))
        await w.gate.set_version("acme", key, "v2")
        # superseded + stale + expired -> superseded
        v = await w.gate.decide(a, now=500.0)
        assert v["state"] == SUPERSEDED and v["superseded_by"] == b.run_id and v["current_version"] == "v2"
        # stale + expired -> stale (b is the newest)
        v = await w.gate.decide(b, now=500.0)
        assert v["state"] == STALE and "superseded_by" not in v
        # superseded + expired -> superseded
        key2 = key_()
        c = await started(w, record(key2, created_at=100.0))
        d = await started(w, record(key2, created_at=100.5))
        assert (await w.gate.decide(c, now=500.0))["superseded_by"] == d.run_id
        # superseded + stale -> superseded
        assert (await w.gate.decide(a, now=101.5))["state"] == SUPERSEDED


async def test_held_only_for_a_succeeded_non_fresh_run_with_hold() -> None:
    hold = record("k", on_stale="hold")
    mark = record("k", on_stale="mark")
    fresh, stale = {"state": FRESH}, {"state": STALE}
    assert Gate.held(hold, SUCCEEDED, stale) is True
    assert Gate.held(hold, SUCCEEDED, {"state": SUPERSEDED}) is True
    assert Gate.held(hold, SUCCEEDED, {"state": EXPIRED}) is True
    assert Gate.held(hold, SUCCEEDED, fresh) is False
    assert Gate.held(hold, FAILED, stale) is False
    assert Gate.held(hold, CANCELLED, stale) is False
    assert Gate.held(mark, SUCCEEDED, stale) is False
    assert Gate.held(hold, SUCCEEDED, None) is False
    assert Gate.held(replace(hold, context=None), SUCCEEDED, stale) is False


# ============================================================================= Gate.ended, set_version, the context log


async def test_an_unwatched_ending_goes_to_the_inbox(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await executing(w, record(key))
        assert (await w.contexts.get("acme", key)).inflight == {rec.run_id: "v1"}
        ending = await w.lifecycle.succeed(rec.run_id, {"answer": 42})
        assert ending.ended
        done = ending.record
        ctx = await w.contexts.get("acme", key)
        assert ctx.inflight == {}
        assert ctx.inbox == [{"run_id": rec.run_id, "status": SUCCEEDED, "verdict": done.verdict,
                              "ended_at": done.ended_at, "held": False}]
        events = await ctx_events(w, "acme", key)
        assert [e.ns for e in events] == ["RUN_STARTED", "VERDICT"]
        assert [e.seq for e in events] == [1, 2]
        assert events[0].data == {"key": key, "run_id": rec.run_id, "version": "v1"}
        assert events[1].data == {"key": key, "run_id": rec.run_id, "status": SUCCEEDED, "verdict": done.verdict,
                                  "held": False, "unwatched": True}


@pytest.mark.parametrize("watch", ["run", "context"])
async def test_a_watched_ending_is_not_in_the_inbox(make_world: Callable[..., Any], watch: str) -> None:
    async with make_world() as w:
        key = key_()
        rec = await executing(w, record(key))
        room = rec.run_id if watch == "run" else (await w.contexts.get("acme", key)).log_id
        token = await w.presence.enter(room)
        await w.lifecycle.succeed(rec.run_id, {"answer": 1})
        assert (await w.contexts.get("acme", key)).inbox == []
        assert (await ctx_events(w, "acme", key))[-1].data["unwatched"] is False
        await w.presence.leave(token)
        # One whose watcher left first: unwatched.
        rec2 = await executing(w, record(key))
        token = await w.presence.enter(rec2.run_id if watch == "run" else room)
        await w.presence.leave(token)
        await w.lifecycle.succeed(rec2.run_id, {"answer": 2})
        assert [e["run_id"] for e in (await w.contexts.get("acme", key)).inbox] == [rec2.run_id]


async def test_a_subscription_is_presence_until_it_closes(make_world: Callable[..., Any]) -> None:
    """bus.subscribe enters the room (attach=True), aclose leaves it: what every transport uses."""
    from server.bus.subscription import subscribe

    async with make_world() as w:
        key = key_()
        rec = await executing(w, record(key))
        sub = await subscribe(w.bus, rec.run_id, 0)
        assert await w.presence.watched(rec.run_id)
        await sub.aclose()
        assert not await w.presence.watched(rec.run_id)
        sub = await subscribe(w.bus, rec.run_id, 0)
        await w.lifecycle.succeed(rec.run_id, {})
        assert (await w.contexts.get("acme", key)).inbox == []
        await sub.aclose()


async def test_a_reader_that_reads_to_the_terminal_event_watched_the_ending(make_world: Callable[..., Any]) -> None:
    """What an SSE / Socket.IO / LangGraph stream does: read the run until its terminal
    event, then close. It was watching when the run ended, so the ending is not unwatched
    (ten runs; the reader's close races the gate's look at presence)."""
    from server.bus.subscription import subscribe

    async with make_world() as w:
        key = key_()
        unwatched = []
        for i in range(10):
            rec = await executing(w, record(key))
            sub = await subscribe(w.bus, rec.run_id, 0)

            async def read_to_the_end(sub: Any = sub) -> None:
                async with sub:
                    async for _ in sub:
                        pass

            reader = asyncio.create_task(read_to_the_end())
            await asyncio.sleep(0)
            await w.lifecycle.succeed(rec.run_id, {"i": i})
            await asyncio.wait_for(reader, 10)
            if (await ctx_events(w, "acme", key))[-1].data["unwatched"]:
                unwatched.append(i)
        inbox = (await w.contexts.get("acme", key)).inbox
        assert (unwatched, inbox) == ([], []), f"{len(unwatched)} of 10 watched endings were unwatched"


async def test_the_lifecycle_writes_one_verdict_with_the_ending(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await executing(w, record(key, "v1"))
        await w.gate.set_version("acme", key, "v2")
        done = (await w.lifecycle.succeed(rec.run_id, {"out": 1}, duration_s=0.5)).record
        assert done.verdict["state"] == STALE and done.delivery is None
        evs = await run_events(w, rec.run_id)
        assert [e.ns for e in evs][-2:] == ["RESULT", "STATUS"]
        assert evs[-2].data == {"output": {"out": 1}, "verdict": done.verdict}
        assert evs[-1].data == {"state": SUCCEEDED, "duration_s": 0.5, "verdict": done.verdict}
        stored = await w.store.get(rec.run_id)
        assert stored.verdict == done.verdict


async def test_hold_writes_result_held_and_marks_the_record(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await executing(w, record(key, "v1", on_stale="hold"))
        await w.gate.set_version("acme", key, "v2")
        done = (await w.lifecycle.succeed(rec.run_id, {"out": 1})).record
        assert done.delivery == {"held": True, "delivered_at": None}
        evs = await run_events(w, rec.run_id)
        assert [e.ns for e in evs] == ["STATUS", "RESULT_HELD", "STATUS"]
        assert evs[1].data == {"verdict": done.verdict}
        assert evs[2].data == {"state": SUCCEEDED, "verdict": done.verdict, "held": True}
        inbox = (await w.contexts.get("acme", key)).inbox
        assert inbox[0]["held"] is True
        assert (await ctx_events(w, "acme", key))[-1].data["held"] is True
        # delivered(): a RESULT on the context's log with the body given.
        body = {"run_id": rec.run_id, "output": {"out": 1}, "verdict": done.verdict, "delivered_anyway": True}
        await w.gate.delivered(done, body)
        last = (await ctx_events(w, "acme", key))[-1]
        assert last.ns == "RESULT" and last.data == {"key": key, **body}


@pytest.mark.parametrize("how", ["fail", "cancel"])
async def test_failed_and_cancelled_get_a_verdict_and_are_never_held(make_world: Callable[..., Any], how: str) -> None:
    async with make_world() as w:
        key = key_()
        rec = await executing(w, record(key, "v1", on_stale="hold"))
        await w.gate.set_version("acme", key, "v2")
        if how == "fail":
            done = (await w.lifecycle.fail(rec.run_id, "boom", "it broke")).record
        else:
            done = (await w.lifecycle.cancel(rec.run_id, "asked to")).record
        assert done.verdict["state"] == STALE and done.delivery is None
        evs = await run_events(w, rec.run_id)
        assert "RESULT_HELD" not in [e.ns for e in evs] and "RESULT" not in [e.ns for e in evs]
        assert evs[-1].data["verdict"] == done.verdict and "held" not in evs[-1].data
        assert (await w.contexts.get("acme", key)).inbox[0]["status"] == done.status


async def test_set_version_announces_a_move_once(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec = await w.gate.set_version("acme", key, "v1")
        assert isinstance(rec, ContextRecord) and rec.version == "v1"
        await w.gate.set_version("acme", key, "v1")  # no move
        await w.gate.set_version("acme", key, "v2")
        evs = await ctx_events(w, "acme", key)
        assert [(e.ns, e.data) for e in evs] == [
            ("VERSION", {"key": key, "version": "v1", "previous": None}),
            ("VERSION", {"key": key, "version": "v2", "previous": "v1"})]
        view = Gate.view(await w.contexts.get("acme", key))
        assert view == {"key": key, "version": "v2", "updated_at": view["updated_at"], "runs": [], "inbox": []}


async def test_log_of_opens_the_contexts_log(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        rec, _ = await w.contexts.set_version("acme", key, "v1")
        assert await w.bus.bounds(rec.log_id) is None
        assert await w.gate.log_of(rec) == rec.log_id
        bounds = await w.bus.bounds(rec.log_id)
        assert bounds is not None and bounds.last_seq == 0


# ============================================================================= one verdict under races


async def test_race_move_and_end_one_verdict(make_world: Callable[..., Any]) -> None:
    """The version moves at the very moment the run ends (the ending and the PUT are
    started together, 30 times): one verdict each, equal in record, RESULT, STATUS, VERDICT."""
    async with make_world() as w:
        states: dict[str, int] = {}
        for i in range(30):
            key = key_()
            rec = await executing(w, record(key, "v1"))
            moves = [w.gate.set_version("acme", key, "v2")]
            ends = [w.lifecycle.succeed(rec.run_id, {"i": i}) for _ in range(2)]
            order = [*moves, *ends] if i % 2 else [*ends, *moves]
            got = await asyncio.gather(*order)
            endings = [g for g in got if hasattr(g, "ended")]
            assert sum(e.ended for e in endings) == 1
            stored = await w.store.get(rec.run_id)
            v = stored.verdict
            assert v["state"] in (FRESH, STALE)
            assert v["current_version"] == {"fresh": "v1", "stale": "v2"}[v["state"]]
            evs = await run_events(w, rec.run_id)
            terminal = [e for e in evs if e.is_terminal]
            results = [e for e in evs if e.ns == "RESULT"]
            assert len(terminal) == 1 and len(results) == 1
            assert terminal[0].data["verdict"] == v and results[0].data["verdict"] == v
            verdicts = [e for e in await ctx_events(w, "acme", key) if e.ns == "VERDICT"]
            assert len(verdicts) == 1 and verdicts[0].data["verdict"] == v
            states[v["state"]] = states.get(v["state"], 0) + 1
        print(f"{w.backend}: {states}")


async def test_race_of_enders_one_verdict(make_world: Callable[..., Any]) -> None:
    """succeed, fail and cancel of one run at once: one ending, one verdict, one VERDICT."""
    async with make_world() as w:
        for _ in range(20):
            key = key_()
            rec = await executing(w, record(key, "v1", on_stale="hold"))
            await w.gate.set_version("acme", key, "v2")
            got = await asyncio.gather(w.lifecycle.succeed(rec.run_id, {}), w.lifecycle.fail(rec.run_id, "x", "y"),
                                       w.lifecycle.cancel(rec.run_id, "z"))
            assert sum(g.ended for g in got) == 1
            stored = await w.store.get(rec.run_id)
            evs = await run_events(w, rec.run_id)
            assert len([e for e in evs if e.is_terminal]) == 1
            assert (stored.delivery is not None) == (stored.status == SUCCEEDED)
            assert len([e for e in evs if e.ns == "RESULT_HELD"]) == (stored.status == SUCCEEDED)
            verdicts = [e for e in await ctx_events(w, "acme", key) if e.ns == "VERDICT"]
            assert len(verdicts) == 1 and verdicts[0].data["status"] == stored.status
            assert verdicts[0].data["verdict"] == stored.verdict
            assert len((await w.contexts.get("acme", key)).inbox) == 1


async def test_concurrent_starts_pick_the_latest_created(make_world: Callable[..., Any]) -> None:
    async with make_world() as w:
        key = key_()
        recs = [record(key, created_at=1000.0 + i) for i in range(20)]
        await asyncio.gather(*(started(w, r) for r in reversed(recs)))
        ctx = await w.contexts.get("acme", key)
        assert ctx.latest_run == recs[-1].run_id and ctx.latest_created == 1019.0
        assert set(ctx.inflight) == {r.run_id for r in recs}
        for r in recs[:-1]:
            assert (await w.gate.decide(r, now=1020.0))["superseded_by"] == recs[-1].run_id


# ============================================================================= the context stores


@pytest.fixture
def make_contexts(backend_name: str, request: pytest.FixtureRequest) -> Callable[..., Any]:  # noqa: F811
    """make_contexts(inbox_max=..., inbox_ttl_s=...) -> a context store of the backend (a fresh prefix)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    @contextlib.asynccontextmanager
    async def factory(*, inbox_max: int = 50, inbox_ttl_s: float = 3600.0, ttl_s: float = 30 * 24 * 3600) -> AsyncIterator[Any]:
        if backend_name == "redis":
            async with redis_ops(request.getfixturevalue("redis_server").url) as ops:
                yield RedisContextStore(ops, prefix=prefix, inbox_max=inbox_max, inbox_ttl_s=inbox_ttl_s, ttl_s=ttl_s)
        else:
            yield MemoryContextStore(inbox_max=inbox_max, inbox_ttl_s=inbox_ttl_s)

    return factory


def entry(run_id: str, ended_at: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"run_id": run_id, "status": SUCCEEDED, "verdict": {"state": FRESH}, "held": False,
            "ended_at": time.time() if ended_at is None else ended_at, **kw}


async def test_store_unknown_and_set_version(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        assert await s.get("acme", "k") is None
        t0 = time.time()
        rec, previous = await s.set_version("acme", "k", "v1")
        assert previous is None and rec.version == "v1" and rec.key == "k" and rec.tenant == "acme"
        assert t0 - 1 <= rec.updated_at <= time.time() + 1
        assert (rec.latest_run, rec.inflight, rec.inbox, rec.gen) == (None, {}, [], 0)
        rec2, previous = await s.set_version("acme", "k", "v2")
        assert previous == "v1" and rec2.version == "v2" and rec2.updated_at >= rec.updated_at
        got = await s.get("acme", "k")
        assert (got.version, got.updated_at) == ("v2", rec2.updated_at)


async def test_store_run_started_sets_the_version_only_of_a_new_context(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        rec = await s.run_started("acme", "new", "r1", "v1", 100.0)
        assert rec.version == "v1" and rec.latest_run == "r1" and rec.latest_created == 100.0
        assert rec.inflight == {"r1": "v1"}
        rec = await s.run_started("acme", "new", "r2", "v9", 101.0)
        assert rec.version == "v1", "a run's version never moves the context"
        assert rec.inflight == {"r1": "v1", "r2": "v9"} and rec.latest_run == "r2"
        await s.set_version("acme", "moved", "m1")
        assert (await s.run_started("acme", "moved", "r3", "v1", 1.0)).version == "m1"


async def test_store_a_context_with_no_version_takes_the_first_runs(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        rec = await s.run_started("acme", "k", "r1", None, 100.0)
        assert rec.version is None and rec.inflight == {"r1": None}
        rec = await s.run_started("acme", "k", "r2", "v2", 101.0)
        assert rec.version == "v2"


async def test_store_latest_is_by_created_at(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        await s.run_started("acme", "k", "late", "v", 200.0)
        rec = await s.run_started("acme", "k", "early", "v", 150.0)
        assert (rec.latest_run, rec.latest_created) == ("late", 200.0)
        rec = await s.run_started("acme", "k", "tie", "v", 200.0)
        assert rec.latest_run == "tie"  # created at the same instant, heard of later
        rec = await s.run_started("acme", "k", "precise", "v", 200.000001)
        assert (rec.latest_run, rec.latest_created) == ("precise", 200.000001)


async def test_store_run_ended(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        await s.run_started("acme", "k", "r1", "v", 1.0)
        await s.run_started("acme", "k", "r2", "v", 2.0)
        await s.run_ended("acme", "k", "r1")
        await s.run_ended("acme", "k", "nobody")
        rec = await s.get("acme", "k")
        assert rec.inflight == {"r2": "v"} and rec.latest_run == "r2"


async def test_store_inbox_newest_first_bounded(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts(inbox_max=3) as s:
        await s.set_version("acme", "k", "v")
        for i in range(5):
            await s.add_inbox("acme", "k", entry(f"r{i}"))
        assert [e["run_id"] for e in (await s.get("acme", "k")).inbox] == ["r4", "r3", "r2"]


async def test_store_inbox_bounded_under_concurrency(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts(inbox_max=50) as s:
        await s.set_version("acme", "k", "v")
        await asyncio.gather(*(s.add_inbox("acme", "k", entry(f"r{i}")) for i in range(60)))
        inbox = (await s.get("acme", "k")).inbox
        assert len(inbox) == 50 and len({e["run_id"] for e in inbox}) == 50


async def test_store_inbox_entries_expire(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts(inbox_ttl_s=60.0) as s:
        await s.set_version("acme", "k", "v")
        now = time.time()
        await s.add_inbox("acme", "k", entry("old", ended_at=now - 61))
        await s.add_inbox("acme", "k", entry("recent", ended_at=now - 59))
        await s.add_inbox("acme", "k", entry("new", ended_at=now))
        assert [e["run_id"] for e in (await s.get("acme", "k")).inbox] == ["new", "recent"]


async def test_store_entry_is_kept_exactly(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        await s.set_version("acme", "k", "v")
        e = entry("r1", verdict={"state": STALE, "reason": "moved ü", "key": "k", "version": "v",
                                 "current_version": "w", "age_s": 1.25}, held=True, status=SUCCEEDED)
        await s.add_inbox("acme", "k", e)
        assert (await s.get("acme", "k")).inbox == [e]


async def test_store_ack(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        await s.set_version("acme", "k", "v")
        for i in range(4):
            await s.add_inbox("acme", "k", entry(f"r{i}"))
        await s.ack("acme", "k", ["r1", "r3", "unknown"])
        assert [e["run_id"] for e in (await s.get("acme", "k")).inbox] == ["r2", "r0"]
        await s.ack("acme", "k", [])
        assert len((await s.get("acme", "k")).inbox) == 2
        await s.ack("acme", "k", None)
        rec = await s.get("acme", "k")
        assert rec is not None and rec.inbox == [] and rec.version == "v"  # the context stays


async def test_store_tenants_are_apart(make_contexts: Callable[..., Any]) -> None:
    async with make_contexts() as s:
        await s.set_version("acme", "k", "a1")
        await s.run_started("globex", "k", "g-run", "g1", 5.0)
        await s.add_inbox("globex", "k", entry("g-run"))
        acme, globex = await s.get("acme", "k"), await s.get("globex", "k")
        assert (acme.version, acme.inflight, acme.inbox, acme.latest_run) == ("a1", {}, [], None)
        assert (globex.version, globex.latest_run) == ("g1", "g-run") and len(globex.inbox) == 1
        assert acme.log_id != globex.log_id
        await s.ack("acme", "k", None)
        assert len((await s.get("globex", "k")).inbox) == 1


def test_log_id_is_stable_and_distinct() -> None:
    assert log_id("acme", "k") == log_id("acme", "k") == ContextRecord("acme", "k").log_id
    assert log_id("acme", "k").endswith(".0") and log_id("acme", "k", 3).endswith(".3")
    assert len({log_id("acme", "k"), log_id("globex", "k"), log_id("acme", "k2"), log_id("acme\0k", "")}) == 4
    assert log_id("a" * 50, "x" * 200).startswith("ctx.") and len(log_id("a" * 50, "x" * 200)) < 60


async def test_redis_store_is_shared_and_expires(redis_server: Any) -> None:
    """Two connections (two processes) see one context; its keys carry their TTLs; bump_gen."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with redis_ops(redis_server.url) as ops1, redis_ops(redis_server.url) as ops2:
        one = RedisContextStore(ops1, prefix=prefix, inbox_max=10, inbox_ttl_s=120.0, ttl_s=3600)
        two = RedisContextStore(ops2, prefix=prefix, inbox_max=10, inbox_ttl_s=120.0, ttl_s=3600)
        await one.run_started("acme", "k", "r1", "v1", 10.0)
        await two.set_version("acme", "k", "v2")
        await two.add_inbox("acme", "k", entry("r0"))
        rec = await one.get("acme", "k")
        assert (rec.version, rec.latest_run, rec.inflight, [e["run_id"] for e in rec.inbox]) == (
            "v2", "r1", {"r1": "v1"}, ["r0"])
        base = one.key("acme", "k")
        assert 3500 < await ops1.client.ttl(base) <= 3600
        assert 3500 < await ops1.client.ttl(base + ":runs") <= 3600
        assert 100 < await ops1.client.ttl(base + ":inbox") <= 120
        assert await one.bump_gen("acme", "k") == 1
        rec = await two.get("acme", "k")
        assert rec.gen == 1 and rec.log_id == log_id("acme", "k", 1) != log_id("acme", "k", 0)
        assert (await two.set_version("acme", "k", "v3"))[0].gen == 1  # a move keeps the generation


# ============================================================================= presence


@pytest.fixture
def make_presence(backend_name: str, request: pytest.FixtureRequest) -> Callable[..., Any]:  # noqa: F811
    prefix = f"t{uuid.uuid4().hex[:8]}"

    @contextlib.asynccontextmanager
    async def factory(process: str = "p1", **kw: Any) -> AsyncIterator[Any]:
        if backend_name == "redis":
            async with redis_ops(request.getfixturevalue("redis_server").url) as ops, \
                    RedisPresence(ops, prefix=prefix, process=process, **kw) as p:
                yield p
        else:
            yield MemoryPresence()

    return factory


async def test_presence_counts_watchers(make_presence: Callable[..., Any]) -> None:
    async with make_presence() as p:
        assert not await p.watched("room")
        a = await p.enter("room")
        b = await p.enter("room")
        c = await p.enter("other")
        assert await p.watched("room") and await p.watched("other")
        await p.leave(a)
        assert await p.watched("room")
        await p.leave(b)
        assert not await p.watched("room") and await p.watched("other")
        await p.leave(c)
        assert not await p.watched("other")


async def test_presence_leave_twice_is_one_leave(make_presence: Callable[..., Any]) -> None:
    """A token leaves once: leaving it again must not take another watcher out of the room."""
    async with make_presence() as p:
        a = await p.enter("room")
        await p.enter("room")
        await p.leave(a)
        await p.leave(a)
        assert await p.watched("room"), "the second watcher was counted out by a repeated leave"


async def test_redis_presence_is_seen_by_every_process(redis_server: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with redis_ops(redis_server.url) as ops1, redis_ops(redis_server.url) as ops2, \
            RedisPresence(ops1, prefix=prefix, process="api-1") as one, \
            RedisPresence(ops2, prefix=prefix, process="api-2") as two:
        token = await one.enter("run-1")
        assert await two.watched("run-1")
        t2 = await two.enter("run-1")
        await one.leave(token)
        assert await one.watched("run-1")  # api-2's watcher is still there
        await two.leave(t2)
        assert not await one.watched("run-1") and not await two.watched("run-1")
        await two.leave(("run-1", 999))  # an unknown token is nothing


async def test_redis_presence_of_a_dead_process_expires(redis_server: Any) -> None:
    """A process that dies sends no leave: its watchers stop counting within ttl_s."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with redis_ops(redis_server.url) as ops, redis_ops(redis_server.url) as ops2:
        observer = RedisPresence(ops2, prefix=prefix, process="observer")
        dead = RedisPresence(ops, prefix=prefix, process="dead", ttl_s=0.6, refresh_s=3600)
        async with dead:
            await dead.enter("run-x")
            assert await observer.watched("run-x")
            await asyncio.sleep(0.9)
            assert not await observer.watched("run-x")


async def test_redis_presence_refresh_keeps_a_live_watcher(redis_server: Any) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with redis_ops(redis_server.url) as ops, redis_ops(redis_server.url) as ops2:
        observer = RedisPresence(ops2, prefix=prefix, process="observer")
        live = RedisPresence(ops, prefix=prefix, process="live", ttl_s=0.6, refresh_s=0.15)
        async with live:
            token = await live.enter("run-y")
            await asyncio.sleep(1.5)
            assert await observer.watched("run-y"), "refreshed every 0.15 s, it must still count"
            await live.leave(token)
            assert not await observer.watched("run-y")
        # Closed (the process stopped refreshing): a watcher it still had expires.
        async with live:
            await live.enter("run-z")
        await asyncio.sleep(0.8)
        assert not await observer.watched("run-z")
