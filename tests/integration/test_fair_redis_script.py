"""The fair-share Lua scripts (server/runs/redis_sched.py) against a real redis-server on a
free port: ENQUEUE, CLAIM, RELEASE, WITHDRAW and ADMIT, called the way the workers and API
processes call them (``RedisScheduler`` over ``RedisOps``), with no server process.

The same properties as tests/unit/test_fair.py (weighted round-robin, the next-pick rule
for a new tenant, caps, one release per slot, withdraw, positions), plus what only Redis
has: agent pools, the hand-over through the queue Stream's consumer group, many workers
claiming at once, and admission (queue cap, GCRA rate) in the script.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from typing import Any, AsyncIterator

import pytest

from server import redis_keys
from server.backends import redis_connection
from server.runs.fair import Rate, Refused, TenantPolicy
from server.runs.redis_sched import RedisScheduler

GROUP = "workers"


class Sched:
    """A RedisScheduler on a fresh key prefix, plus the queue stream and group the workers use."""

    def __init__(self, ops: Any, policy: TenantPolicy) -> None:
        self.ops = ops
        self.prefix = f"f{uuid.uuid4().hex[:8]}"
        self.stream = redis_keys.queue(self.prefix)
        self.s = RedisScheduler(ops, prefix=self.prefix, policy=policy)
        self.r = ops.client
        self.n = 0

    async def group(self) -> None:
        await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)

    async def put(self, tenant: str, n: int = 1, agent: str = "a", **kw: Any) -> list[str]:
        ids = []
        for _ in range(n):
            self.n += 1
            run_id = f"{tenant}-{self.n:04d}"
            await self.s.enqueue(run_id, tenant, agent, **kw)
            ids.append(run_id)
        return ids

    async def claim(self, n: int = 1, agents: str = "*", consumer: str = "w1") -> list[dict[str, str]]:
        resp = await self.s.claim(self.stream, GROUP, consumer, n, agents)
        out = []
        for _stream, entries in resp:
            for entry_id, fields in entries:
                row = {k.decode(): v.decode() for k, v in fields.items()}
                row["entry_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append(row)
        return out

    async def picks(self, n: int, *, release: bool = True, agents: str = "*") -> list[dict[str, str]]:
        out = []
        for _ in range(n):
            got = await self.claim(1, agents)
            assert len(got) == 1, f"nothing claimed after {len(out)} claims"
            out += got
            if release:
                assert await self.s.release(got[0]["run_id"])
        return out

    async def running(self) -> dict[str, int]:
        raw = await self.r.hgetall(f"{self.s.base}:running")
        return {k.decode(): int(v) for k, v in raw.items()}


@pytest.fixture
async def ops(redis_server) -> AsyncIterator[Any]:
    async with redis_connection(redis_server.url, outage_s=10.0) as ops:
        yield ops


def make(ops: Any, **policy: Any) -> Sched:
    return Sched(ops, TenantPolicy(**policy))


async def backlogged(ops: Any, weights: dict[str, int], order: tuple[str, ...], each: int = 120) -> Sched:
    s = make(ops, weights=weights)
    await s.group()
    for t in order:
        await s.put(t, each)
    return s


def tenants(rows: list[dict[str, str]]) -> list[str]:
    return [r["tenant"] for r in rows]


# ----------------------------------------------------------------------------- weighted round-robin


@pytest.mark.parametrize("order", [("acme", "beta"), ("beta", "acme")])
async def test_weights_3_to_1_exactly_30_10_over_40_claims(ops, order) -> None:
    s = await backlogged(ops, {"acme": 3, "beta": 1}, order)
    got = tenants(await s.picks(40))
    assert Counter(got) == {"acme": 30, "beta": 10}
    for i in range(0, 40, 4):
        assert Counter(got[i:i + 4]) == {"acme": 3, "beta": 1}, (i, got)


async def test_weights_5_3_2_within_one_and_exact_per_round_once_going(ops) -> None:
    for order in itertools.permutations(("a", "b", "c")):
        s = await backlogged(ops, {"a": 5, "b": 3, "c": 2}, order)
        got = tenants(await s.picks(100))
        counts = Counter(got)
        for t, want in (("a", 50), ("b", 30), ("c", 20)):
            assert abs(counts[t] - want) <= 1, (order, counts)
        for i in range(10, 100, 10):
            assert Counter(got[i:i + 10]) == {"a": 5, "b": 3, "c": 2}, (order, i, got)


async def test_weights_5_3_2_exactly_50_30_20_over_100_claims(ops) -> None:
    bad = {}
    for order in itertools.permutations(("a", "b", "c")):
        s = await backlogged(ops, {"a": 5, "b": 3, "c": 2}, order)
        counts = Counter(tenants(await s.picks(100)))
        if counts != {"a": 50, "b": 30, "c": 20}:
            bad["".join(order)] = dict(counts)
    assert not bad, f"join order -> counts over 100 claims: {bad}"


async def test_claiming_n_at_once_splits_the_same_way(ops) -> None:
    """One CLAIM of 8 runs follows the same rotation as 8 claims of one."""
    s = await backlogged(ops, {"acme": 3, "beta": 1}, ("acme", "beta"))
    rows = []
    for _ in range(5):
        got = await s.claim(8)
        assert len(got) == 8
        rows += got
        for r in got:
            await s.s.release(r["run_id"])
    assert Counter(tenants(rows)) == {"acme": 30, "beta": 10}


async def test_fifo_within_a_tenant(ops) -> None:
    s = make(ops, weights={"acme": 3})
    await s.group()
    acme = await s.put("acme", 30)
    beta = await s.put("beta", 10)
    got = await s.picks(40)
    assert [r["run_id"] for r in got if r["tenant"] == "acme"] == acme
    assert [r["run_id"] for r in got if r["tenant"] == "beta"] == beta


@pytest.mark.parametrize("after", [0, 1, 2, 3, 5, 11])
async def test_a_new_tenant_goes_at_the_next_claim(ops, after) -> None:
    s = await backlogged(ops, {"noisy": 3, "other": 1}, ("noisy", "other"), each=40)
    await s.picks(after)
    [quiet] = await s.put("quiet")
    got = await s.claim(1)
    assert got[0]["run_id"] == quiet


async def test_a_taken_back_run_goes_first_in_its_tenant(ops) -> None:
    s = make(ops)
    await s.group()
    await s.put("t", 3)
    await s.s.enqueue("t-back", "t", "a", front=True)
    assert (await s.claim(1))[0]["run_id"] == "t-back"


# ----------------------------------------------------------------------------- caps, release


async def test_running_cap_makes_a_tenant_ineligible(ops) -> None:
    s = make(ops, max_running_overrides={"capped": 1})
    await s.group()
    capped = await s.put("capped", 3)
    assert [r["run_id"] for r in await s.claim(5)] == [capped[0]]  # one, though 5 were asked
    assert await s.claim(5) == []
    free = await s.put("free", 2)
    assert [r["run_id"] for r in await s.claim(5)] == free  # others go on
    assert await s.running() == {"capped": 1, "free": 2}
    assert await s.s.release(capped[0], 2.0)
    assert [r["run_id"] for r in await s.claim(5)] == [capped[1]]


async def test_default_cap_and_overrides(ops) -> None:
    s = make(ops, max_running=2, max_running_overrides={"big": 3})
    await s.group()
    await s.put("small", 5)
    await s.put("big", 5)
    got = await s.claim(10)
    assert Counter(tenants(got)) == {"small": 2, "big": 3}
    assert await s.claim(10) == []


async def test_release_is_idempotent(ops) -> None:
    s = make(ops, max_running_overrides={"t": 1})
    await s.group()
    await s.put("t", 3)
    [first] = await s.claim(1)
    assert await s.s.release(first["run_id"]) is True
    assert await s.s.release(first["run_id"]) is False  # the same ending told twice
    assert await s.s.release(first["run_id"]) is False
    assert await s.s.release("never-claimed") is False
    assert len(await s.claim(5)) == 1  # exactly one slot came back, not three
    assert await s.running() == {"t": 1}
    rows = await s.r.hgetall(f"{s.s.base}:slot")
    assert len(rows) == 1


async def test_release_to_zero_leaves_no_counter_behind(ops) -> None:
    s = make(ops)
    await s.group()
    await s.put("t", 2)
    got = await s.claim(2)
    for r in got:
        await s.s.release(r["run_id"])
        await s.s.release(r["run_id"])
    assert await s.running() == {}
    assert await s.r.hlen(f"{s.s.base}:slot") == 0


async def concurrent_claims(s: Sched, want: int, workers: int = 4) -> tuple[list[str], Counter[str]]:
    """``workers`` consumers claim (2 at a time) and release concurrently until ``want`` runs
    were handed out; returns the runs in hand-out order and each tenant's peak running count
    (read from the script's own counter while it held its runs)."""
    seen: list[str] = []
    peaks: Counter[str] = Counter()

    async def worker(name: str) -> None:
        while len(seen) < want:
            got = await s.claim(2, consumer=name)
            if not got:
                await asyncio.sleep(0.001)
                continue
            seen.extend(r["run_id"] for r in got)
            for t, n in (await s.running()).items():
                peaks[t] = max(peaks[t], n)
            await asyncio.sleep(0.002)
            for r in got:
                assert await s.s.release(r["run_id"])

    await asyncio.gather(*(worker(f"w{i}") for i in range(workers)))
    assert len(seen) == len(set(seen)), "a run was handed out twice"
    return seen, peaks


async def test_many_workers_claiming_at_once_keep_the_split(ops) -> None:
    s = make(ops, weights={"acme": 3, "beta": 1})
    await s.group()
    acme = set(await s.put("acme", 80))
    await s.put("beta", 80)
    seen, _ = await concurrent_claims(s, 80)
    share = sum(r in acme for r in seen[:80]) / 80
    assert 0.725 <= share <= 0.775, share  # claims are atomic: within two runs of 60/80


async def test_many_workers_claiming_at_once_never_pass_the_cap(ops) -> None:
    s = make(ops, max_running=2, max_running_overrides={"one": 1})
    await s.group()
    for t in ("one", "two", "three"):
        await s.put(t, 30)
    seen, peaks = await concurrent_claims(s, 60)
    assert peaks["one"] == 1 and peaks["two"] == 2 and peaks["three"] == 2, peaks
    assert await s.running() == {}


# ----------------------------------------------------------------------------- hand-over, withdraw


async def test_a_claim_hands_runs_over_as_pending_entries_of_that_worker(ops) -> None:
    s = make(ops)
    await s.group()
    since = time.time() - 5
    await s.s.enqueue("r1", "t", "sleepy", since=since)
    await s.s.enqueue("r2", "t", "sleepy", answer=b'{"ok":true}')
    got = await s.claim(2, consumer="worker-7")
    assert [r["run_id"] for r in got] == ["r1", "r2"]
    assert got[0]["tenant"] == "t" and got[0]["agent"] == "sleepy"
    assert float(got[0]["since"]) == pytest.approx(since, abs=0.01)
    assert "answer" not in got[0] and got[1]["answer"] == '{"ok":true}'
    pending = await s.r.xpending_range(s.stream, GROUP, "-", "+", 10)
    assert {p["consumer"].decode() for p in pending} == {"worker-7"}
    assert {p["message_id"].decode() for p in pending} == {r["entry_id"] for r in got}
    assert await s.s.depth() == 0


async def test_withdraw(ops) -> None:
    s = make(ops)
    await s.group()
    ids = await s.put("t", 3)
    assert await s.s.withdraw(ids[1]) is True
    assert await s.s.withdraw(ids[1]) is False
    assert await s.s.withdraw("unknown") is False
    assert await s.s.position(ids[2], "t", "a", None) == (2, "behind 1 earlier run(s) of tenant 't'")
    assert [r["run_id"] for r in await s.claim(5)] == [ids[0], ids[2]]
    assert await s.s.depth() == 0


async def test_withdrawing_the_last_run_makes_the_tenant_idle(ops) -> None:
    s = make(ops)
    await s.group()
    await s.put("noisy", 20)
    [only] = await s.put("quiet")
    assert await s.s.withdraw(only)
    assert not await s.r.sismember(f"{s.s.base}:active", "quiet")
    # (its credit is remembered for its rejoin; see fair.FairQueue._join_credit)
    await s.picks(3)
    [again] = await s.put("quiet")
    assert (await s.claim(1))[0]["run_id"] == again


async def test_a_tenant_left_active_without_runs_does_not_break_claims(ops) -> None:
    """A state a write lost with Redis's data can leave: the tenant is in the active set
    but has no waiting run. Claims still hand out the other tenants' runs."""
    s = make(ops)
    await s.group()
    await s.r.sadd(f"{s.s.base}:active", "ghost")
    await s.r.sadd(f"{s.s.base}:agents:ghost", "a")
    await s.r.hset(f"{s.s.base}:credit", "ghost", 1000)
    ids = await s.put("real", 2)
    assert [r["run_id"] for r in await s.claim(2)] == ids


# ----------------------------------------------------------------------------- agent pools


async def test_a_pool_worker_takes_only_its_agents(ops) -> None:
    s = make(ops)
    await s.group()
    mixed = []
    for i in range(6):
        mixed += await s.put("acme", agent="reflective" if i % 2 else "sleepy")
    only_sleepy = await s.put("beta", 3, agent="sleepy")
    got = await s.claim(20, agents="reflective", consumer="pool")
    assert {r["agent"] for r in got} == {"reflective"}
    assert [r["run_id"] for r in got] == [r for i, r in enumerate(mixed) if i % 2]
    assert await s.claim(5, agents="reflective", consumer="pool") == []
    # beta (sleepy only) was not eligible for that pool: its runs all wait, in order.
    rest = await s.claim(20, agents="sleepy,other", consumer="pool2")
    assert {r["agent"] for r in rest} == {"sleepy"}
    assert [r["run_id"] for r in rest if r["tenant"] == "beta"] == only_sleepy
    assert [r["run_id"] for r in rest if r["tenant"] == "acme"] == [r for i, r in enumerate(mixed) if not i % 2]


async def test_a_worker_for_every_agent_takes_a_tenants_oldest_run_whatever_its_agent(ops) -> None:
    s = make(ops)
    await s.group()
    ids = []
    for agent in ("x", "y", "x", "z", "y"):
        ids += await s.put("t", agent=agent)
    assert [r["run_id"] for r in await s.claim(5)] == ids


async def test_pools_keep_the_weights(ops) -> None:
    """Within one pool (agent x), acme 3 : beta 1; runs of agent y wait for their own pool."""
    s = make(ops, weights={"acme": 3, "beta": 1})
    await s.group()
    for t in ("acme", "beta"):
        await s.put(t, 50, agent="x")
        await s.put(t, 50, agent="y")
    got = await s.picks(40, agents="x")
    assert {r["agent"] for r in got} == {"x"}
    assert Counter(tenants(got)) == {"acme": 30, "beta": 10}


async def test_position_says_why(ops) -> None:
    s = make(ops, max_running_overrides={"capped": 1})
    await s.group()
    ids = await s.put("capped", 3, agent="sleepy")
    assert await s.s.position(ids[0], "capped", "sleepy", {"*"}) == (1, "waiting for a free worker slot")
    assert await s.s.position(ids[0], "capped", "sleepy", {"reflective"}) == (
        1, "no live worker serves agent 'sleepy'")
    await s.claim(1)
    assert await s.s.position(ids[2], "capped", "sleepy", {"sleepy"}) == (
        2, "tenant 'capped' is at its running cap (1/1)")
    assert await s.s.position(ids[0], "capped", "sleepy", {"*"}) is None  # running, not waiting
    assert await s.s.position(ids[1], "other", "sleepy", {"*"}) is None


async def test_overview(ops) -> None:
    s = make(ops, weights={"acme": 3}, max_running_overrides={"acme": 2})
    await s.group()
    await s.s.enqueue("a1", "acme", "reflective", since=time.time() - 30)
    await s.s.enqueue("a2", "acme", "sleepy", since=time.time() - 20)
    await s.claim(1)
    await s.s.enqueue("b1", "beta", "sleepy", since=time.time() - 10)
    view = (await s.s.overview())["tenants"]
    acme, beta = view["acme"], view["beta"]
    assert (acme["queued"], acme["running"], acme["cap"], acme["weight"]) == (1, 1, 2, 3)
    assert (beta["queued"], beta["running"], beta["cap"], beta["weight"]) == (1, 0, None, 1)
    assert acme["by_agent"] == {"reflective": {"queued": 0, "running": 1}, "sleepy": {"queued": 1, "running": 0}}
    assert acme["oldest_age_s"] == pytest.approx(20, abs=1)
    assert beta["oldest_age_s"] == pytest.approx(10, abs=1)


# ----------------------------------------------------------------------------- admission


async def test_admit_queue_cap_with_retry_after_from_the_mean_run_time(ops) -> None:
    s = make(ops, max_queued=2, max_running_overrides={"t": 1})
    await s.group()
    await s.put("t", 3)
    [first] = await s.claim(1)
    await s.s.release(first["run_id"], 3.0)  # t's runs take 3 s
    [_second] = await s.claim(1)
    [last] = await s.put("t")  # 2 queued: at the limit
    with pytest.raises(Refused) as exc:
        await s.s.admit("t")
    assert exc.value.code == "tenant_queue_full"
    assert exc.value.retry_after_s == pytest.approx(3.0)  # one 3 s run (cap 1) frees a place
    await s.s.admit("other")  # another tenant is unaffected
    assert await s.s.withdraw(last)
    await s.s.admit("t")  # one waiting now: accepted


async def test_admit_rate_burst_then_refused_then_after_the_wait_accepted(ops) -> None:
    s = make(ops, rate=Rate(2.0, 2))
    await s.s.admit("t")
    await s.s.admit("t")
    with pytest.raises(Refused) as exc:
        await s.s.admit("t")
    assert exc.value.code == "rate_limited"
    assert 0.3 < exc.value.retry_after_s <= 0.5
    await s.s.admit("u")  # its own bucket
    await asyncio.sleep(exc.value.retry_after_s + 0.02)
    await s.s.admit("t")
    with pytest.raises(Refused):
        await s.s.admit("t")
    ttl = await s.r.pttl(f"{s.s.base}:tat:t")
    assert 0 < ttl <= 2000  # the rate's state expires once it carries no credit


# ----------------------------------------------------------------------------- gaming the join rule


async def test_a_tenant_that_keeps_one_run_waiting_gets_no_more_than_its_weight(ops) -> None:
    s = await backlogged(ops, {"acme": 3, "beta": 1}, ("acme",), each=60)
    await s.put("beta")
    got = []
    for _ in range(40):
        [row] = await s.claim(1)
        got.append(row["tenant"])
        await s.s.release(row["run_id"])
        if row["tenant"] == "beta":
            await s.put("beta")
    assert Counter(got)["beta"] <= 11, Counter(got)
