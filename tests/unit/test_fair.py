"""Fair share in one process (server/runs/fair.py), deterministic: no clock, no server.

The rules (DESIGN.md "Tenancy and fair share", issue 11): FIFO within a tenant; smooth
weighted round-robin across tenants with runs waiting; an idle tenant that arrives goes at
the next pick; a tenant at its running cap waits (never refused); queue caps and GCRA
creation rates refuse with a Retry-After computed from the tenant's state; a slot is given
back exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from server.config import Settings
from server.runs.fair import (FairQueue, Rate, Refused, TenantPolicy, Waiting, gcra, parse_pairs,
                              queue_full, rate_limited)
from server.runs.lifecycle import Dispatch

# ----------------------------------------------------------------------------- helpers


def put(q: FairQueue, tenant: str, n: int = 1, agent: str = "a", start: int = 0) -> list[str]:
    ids = [f"{tenant}-{i}" for i in range(start, start + n)]
    for run_id in ids:
        q.put(Waiting(Dispatch(run_id), tenant, agent, 0.0))
    return ids


def picks(q: FairQueue, n: int, *, release: bool = True) -> list[Waiting]:
    """n picks; each run ends right away (release) unless told otherwise."""
    out = []
    for _ in range(n):
        item = q.pick()
        assert item is not None, f"nothing to pick after {len(out)} picks"
        out.append(item)
        if release:
            assert q.release(item.dispatch.run_id)
    return out


def tenants(items: list[Waiting]) -> list[str]:
    return [i.tenant for i in items]


def backlogged(weights: dict[str, int], order: tuple[str, ...], each: int = 200) -> FairQueue:
    q = FairQueue(TenantPolicy(weights=weights))
    for t in order:
        put(q, t, each)
    return q


# ----------------------------------------------------------------------------- settings parsing


def test_parse_pairs() -> None:
    assert parse_pairs("acme=3,beta=1", "W") == {"acme": 3, "beta": 1}
    assert parse_pairs(" acme = 3 , beta=1 ,", "W") == {"acme": 3, "beta": 1}
    assert parse_pairs("", "W") == {}
    for bad in ("acme", "acme=", "=3", "acme=0", "acme=-1", "acme=x", "acme=1.5"):
        with pytest.raises(ValueError, match="W"):
            parse_pairs(bad, "W")


@pytest.mark.parametrize("raw,per_s,burst", [
    ("5/s,burst=20", 5.0, 20),
    ("2/s, burst=2", 2.0, 2),
    ("2/s", 2.0, 2),  # burst defaults to one second's worth
    ("0.5/s", 0.5, 1),
    ("100/min", 100 / 60, 2),
    ("60/m,burst=5", 1.0, 5),
    ("3600/hour", 1.0, 1),
])
def test_rate_parse(raw: str, per_s: float, burst: int) -> None:
    rate = Rate.parse(raw)
    assert rate is not None
    assert rate.per_s == pytest.approx(per_s) and rate.burst == burst
    assert rate.interval_s == pytest.approx(1 / per_s)


def test_rate_parse_empty_and_invalid() -> None:
    assert Rate.parse("") is None and Rate.parse("  ") is None
    for bad in ("5", "5/day", "abc", "0/s", "5/s,burst=x", "-1/s"):
        with pytest.raises(ValueError):
            Rate.parse(bad)


def test_policy_from_settings() -> None:
    settings = Settings(tenant_weights="acme=3,beta=1", tenant_max_running=2,
                        tenant_max_running_overrides="acme=5,tiny=1", tenant_max_queued=7,
                        tenant_rate="2/s,burst=4")
    policy = TenantPolicy.from_settings(settings)
    assert policy.weight("acme") == 3 and policy.weight("beta") == 1 and policy.weight("other") == 1
    assert policy.cap("acme") == 5 and policy.cap("tiny") == 1 and policy.cap("other") == 2
    assert policy.max_queued == 7 and policy.rate == Rate(2.0, 4)
    empty = TenantPolicy.from_settings(Settings())
    assert empty.cap("x") == 0 and empty.rate is None and empty.weight("x") == 1
    with pytest.raises(ValueError, match="THOUGHTSTREAM_TENANT_WEIGHTS"):
        TenantPolicy.from_settings(Settings(tenant_weights="acme=three"))


# ----------------------------------------------------------------------------- weighted round-robin


@pytest.mark.parametrize("order", [("acme", "beta"), ("beta", "acme")])
def test_weights_3_to_1_exactly_30_10_over_40_picks(order: tuple[str, ...]) -> None:
    q = backlogged({"acme": 3, "beta": 1}, order)
    got = tenants(picks(q, 40))
    assert Counter(got) == {"acme": 30, "beta": 10}
    # Interleaved, not in bursts: every window of four picks is 3 + 1.
    for i in range(0, 40, 4):
        assert Counter(got[i:i + 4]) == {"acme": 3, "beta": 1}, (i, got)


def test_weights_3_to_1_every_prefix_is_within_one_pick_of_75_percent() -> None:
    q = backlogged({"acme": 3, "beta": 1}, ("acme", "beta"), each=400)
    got = tenants(picks(q, 400))
    for n in range(1, 401):
        assert abs(got[:n].count("acme") - 0.75 * n) <= 1, n


def test_weights_5_3_2_within_one_pick_and_exact_per_round_once_going() -> None:
    """5:3:2, every join order: over 100 picks each tenant is within one pick of 50/30/20,
    and from the second round of 10 on every round is exactly 5/3/2."""
    for order in itertools.permutations(("a", "b", "c")):
        q = backlogged({"a": 5, "b": 3, "c": 2}, order)
        got = tenants(picks(q, 100))
        counts = Counter(got)
        for t, want in (("a", 50), ("b", 30), ("c", 20)):
            assert abs(counts[t] - want) <= 1, (order, counts)
        for i in range(10, 100, 10):
            assert Counter(got[i:i + 10]) == {"a": 5, "b": 3, "c": 2}, (order, i, got)


def test_weights_5_3_2_exactly_50_30_20_over_100_picks() -> None:
    bad = {}
    for order in itertools.permutations(("a", "b", "c")):
        q = backlogged({"a": 5, "b": 3, "c": 2}, order)
        counts = Counter(tenants(picks(q, 100)))
        if counts != {"a": 50, "b": 30, "c": 20}:
            bad["".join(order)] = dict(counts)
    assert not bad, f"join order -> counts over 100 picks: {bad}"


def test_equal_weights_alternate() -> None:
    q = backlogged({}, ("x", "y"))
    got = tenants(picks(q, 20))
    assert Counter(got) == {"x": 10, "y": 10}
    assert all(got[i] != got[i + 1] for i in range(19)), got


def test_fifo_within_a_tenant() -> None:
    q = FairQueue(TenantPolicy(weights={"acme": 3}))
    put(q, "acme", 30)
    put(q, "beta", 10)
    got = picks(q, 40)
    for t in ("acme", "beta"):
        ids = [i.dispatch.run_id for i in got if i.tenant == t]
        assert ids == sorted(ids, key=lambda r: int(r.split("-")[1])), ids


@pytest.mark.parametrize("after", range(0, 13))
def test_a_new_tenant_goes_at_the_next_pick(after: int) -> None:
    """However far a noisy backlog's rotation has gone, a tenant arriving with one run goes next."""
    q = backlogged({"noisy": 3, "other": 1}, ("noisy", "other"))
    picks(q, after)
    put(q, "quiet")
    nxt = q.pick()
    assert nxt is not None and nxt.tenant == "quiet"
    # ...and then the rotation carries on 3:1 between the backlogged two (within one pick:
    # the quiet run's turn shifted the phase of their rotation).
    q.release(nxt.dispatch.run_id)
    assert abs(Counter(tenants(picks(q, 40)))["noisy"] - 30) <= 1


def test_a_tenant_that_comes_back_after_idling_goes_next_again() -> None:
    q = backlogged({}, ("noisy",))
    for _ in range(5):
        picks(q, 3)
        put(q, "quiet")
        assert q.pick().tenant == "quiet"


def test_a_quiet_run_takes_the_first_slot_that_frees_not_the_backlog() -> None:
    """Two slots busy with 100 noisy runs behind them: the quiet run takes the first slot
    that frees (the runner picks only when a slot is free; FairQueue decides which run)."""
    q = FairQueue(TenantPolicy())
    put(q, "noisy", 100)
    busy = picks(q, 2, release=False)
    put(q, "quiet")
    assert q.release(busy[0].dispatch.run_id)
    assert q.pick().tenant == "quiet"


# ----------------------------------------------------------------------------- running caps


def test_running_cap_makes_a_tenant_ineligible_not_refused() -> None:
    policy = TenantPolicy(max_running_overrides={"capped": 1})
    q = FairQueue(policy)
    put(q, "capped", 3)
    first = q.pick()
    assert first is not None and first.tenant == "capped"
    assert q.pick() is None  # at its cap, and nobody else waits
    q.admit("capped")  # the running cap never refuses a creation
    put(q, "free", 2)
    assert tenants([q.pick(), q.pick()]) == ["free", "free"]  # others go on
    assert q.pick() is None
    assert q.release(first.dispatch.run_id)
    nxt = q.pick()
    assert nxt is not None and nxt.dispatch.run_id == "capped-1"


def test_default_cap_and_overrides() -> None:
    q = FairQueue(TenantPolicy(max_running=2, max_running_overrides={"big": 3}))
    put(q, "small", 5)
    put(q, "big", 5)
    got = tenants(picks(q, 5, release=False))
    assert Counter(got) == {"small": 2, "big": 3}
    assert q.pick() is None


def test_never_more_than_the_cap_running_under_random_endings() -> None:
    import random

    rng = random.Random(7)
    q = FairQueue(TenantPolicy(max_running=2, max_running_overrides={"one": 1}))
    for t in ("one", "two", "three"):
        put(q, t, 50)
    running: list[Waiting] = []
    for _ in range(300):
        if running and (rng.random() < 0.5 or len(running) >= 4):
            item = running.pop(rng.randrange(len(running)))
            assert q.release(item.dispatch.run_id)
        else:
            item = q.pick()
            if item is not None:
                running.append(item)
        per = Counter(i.tenant for i in running)
        assert per["one"] <= 1 and per["two"] <= 2 and per["three"] <= 2, per
        assert q.overview()["tenants"].get("one", {}).get("running", 0) == per["one"]


# ----------------------------------------------------------------------------- release, withdraw


def test_release_gives_the_slot_back_once() -> None:
    q = FairQueue(TenantPolicy(max_running_overrides={"t": 1}))
    put(q, "t", 2)
    first = q.pick()
    assert q.release(first.dispatch.run_id) is True
    assert q.release(first.dispatch.run_id) is False  # a second ending of the same run
    assert q.release("never-ran") is False
    second = q.pick()
    assert second is not None
    assert q.pick() is None  # the double release did not make room for a third
    assert q.overview()["tenants"]["t"]["running"] == 1


def test_withdraw() -> None:
    q = FairQueue(TenantPolicy())
    ids = put(q, "t", 3)
    assert q.withdraw(ids[1]) is True
    assert q.withdraw(ids[1]) is False
    assert q.withdraw("unknown") is False
    assert q.position(ids[2], "t") == (2, "behind 1 earlier run(s) of tenant 't'")
    assert [i.dispatch.run_id for i in picks(q, 2)] == [ids[0], ids[2]]
    assert q.pick() is None and q.depth() == 0


def test_withdraw_of_a_running_run_is_false_and_keeps_its_slot() -> None:
    q = FairQueue(TenantPolicy(max_running_overrides={"t": 1}))
    put(q, "t", 2)
    first = q.pick()
    assert q.withdraw(first.dispatch.run_id) is False
    assert q.pick() is None
    assert q.release(first.dispatch.run_id)


def test_withdrawing_a_tenants_last_run_makes_it_idle_and_it_rejoins_first() -> None:
    q = backlogged({}, ("noisy",))
    [only] = put(q, "quiet")
    assert q.withdraw(only)
    assert "quiet" not in q.overview()["tenants"]
    picks(q, 3)
    put(q, "quiet", start=1)
    assert q.pick().tenant == "quiet"


# ----------------------------------------------------------------------------- positions, overview


def test_positions_and_reasons() -> None:
    q = FairQueue(TenantPolicy(max_running_overrides={"capped": 1}))
    ids = put(q, "capped", 4)
    assert q.position(ids[0], "capped") == (1, "waiting for a free run slot")
    assert q.position(ids[2], "capped") == (3, "behind 2 earlier run(s) of tenant 'capped'")
    running = q.pick()
    for place, run_id in enumerate(ids[1:], start=1):
        pos, why = q.position(run_id, "capped")
        assert pos == place and why == "tenant 'capped' is at its running cap (1/1)"
    assert q.position(running.dispatch.run_id, "capped") is None  # it is not waiting
    assert q.position(ids[1], "someone-else") is None  # looked up within its own tenant only


def test_overview() -> None:
    q = FairQueue(TenantPolicy(weights={"acme": 3}, max_running_overrides={"acme": 2}))
    q.put(Waiting(Dispatch("a1"), "acme", "reflective", 100.0))
    q.put(Waiting(Dispatch("a2"), "acme", "sleepy", 105.0))
    q.put(Waiting(Dispatch("a3"), "acme", "sleepy", 106.0))
    first = q.pick()
    assert first.dispatch.run_id == "a1"
    q.put(Waiting(Dispatch("b1"), "beta", "sleepy", 110.0))
    view = q.overview(now=120.0)["tenants"]
    total_running = sum(v["running"] for v in view.values())
    total_queued = sum(v["queued"] for v in view.values())
    assert total_running == 1 and total_queued == 3 and q.depth() == 3
    acme = view["acme"]
    assert acme["weight"] == 3 and acme["cap"] == 2 and view["beta"]["cap"] is None
    assert acme["by_agent"]["reflective"] == {"queued": 0, "running": 1}
    assert acme["by_agent"]["sleepy"] == {"queued": 2, "running": 0}
    assert acme["oldest_age_s"] == pytest.approx(15.0)
    assert view["beta"]["oldest_age_s"] == pytest.approx(10.0)


async def test_get_waits_for_a_put_or_a_release() -> None:
    q = FairQueue(TenantPolicy(max_running_overrides={"t": 1}))
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    put(q, "t", 2)
    first = await asyncio.wait_for(getter, 1)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getter.done()  # at its cap
    q.release(first.dispatch.run_id)
    second = await asyncio.wait_for(getter, 1)
    assert second.dispatch.run_id == "t-1"


# ----------------------------------------------------------------------------- admission


def test_queue_cap_refuses_with_a_retry_after_from_the_tenants_state() -> None:
    q = FairQueue(TenantPolicy(max_queued=2, max_running_overrides={"t": 1}))
    put(q, "t", 3)
    done = q.pick()
    q.release(done.dispatch.run_id, duration_s=4.0)  # t's runs take 4 s
    with pytest.raises(Refused) as exc:
        q.admit("t")  # 2 queued = the limit
    assert exc.value.code == "tenant_queue_full"
    assert exc.value.retry_after_s == pytest.approx(4.0)  # one run of 4 s frees a place
    q.admit("other")  # another tenant is unaffected
    q.release(q.pick().dispatch.run_id, duration_s=2.0)  # EWMA: 4 + 0.2 * (2 - 4)
    assert q.mean_run_s("t") == pytest.approx(3.6)
    q.admit("t")  # one queued now: accepted


def test_queue_full_retry_after_scales_with_excess_and_slots() -> None:
    assert queue_full("t", 10, 10, 3.0, 1).retry_after_s == pytest.approx(3.0)
    assert queue_full("t", 12, 10, 3.0, 1).retry_after_s == pytest.approx(9.0)
    assert queue_full("t", 12, 10, 3.0, 3).retry_after_s == pytest.approx(3.0)
    assert queue_full("t", 10, 10, 0.1, 4).retry_after_s == 1.0  # never below a second
    assert rate_limited("t", Rate(2, 2), 0.25).retry_after_s == 0.25


def test_mean_run_time_falls_back_to_other_tenants_then_a_second() -> None:
    q = FairQueue(TenantPolicy())
    assert q.mean_run_s("t") == 1.0
    put(q, "a")
    q.release(q.pick().dispatch.run_id, duration_s=3.0)
    put(q, "b")
    q.release(q.pick().dispatch.run_id, duration_s=5.0)
    assert q.mean_run_s("t") == pytest.approx(4.0)


def test_gcra() -> None:
    rate = Rate(1.0, 1)
    assert gcra(None, 10.0, rate) == (11.0, 0.0)
    assert gcra(11.0, 10.0, rate) == (None, pytest.approx(1.0))
    assert gcra(11.0, 11.0, rate) == (12.0, 0.0)
    assert gcra(5.0, 10.0, rate) == (11.0, 0.0)  # an old tat is no credit beyond the burst


def test_rate_admits_the_burst_then_refuses_until_the_wait_and_per_tenant() -> None:
    q = FairQueue(TenantPolicy(rate=Rate(2.0, 2)))
    q.admit("t", now=100.0)
    q.admit("t", now=100.0)
    with pytest.raises(Refused) as exc:
        q.admit("t", now=100.0)
    assert exc.value.code == "rate_limited" and exc.value.retry_after_s == pytest.approx(0.5)
    q.admit("u", now=100.0)  # another tenant has its own bucket
    with pytest.raises(Refused):
        q.admit("t", now=100.49)
    q.admit("t", now=100.0 + exc.value.retry_after_s)  # after exactly that wait: accepted
    with pytest.raises(Refused):
        q.admit("t", now=100.5)
    # Sustained: one every 0.5 s is always accepted.
    for i in range(2, 20):
        q.admit("t", now=100.0 + 0.5 * i)


def test_a_refused_creation_does_not_use_up_the_rate() -> None:
    q = FairQueue(TenantPolicy(rate=Rate(1.0, 1)))
    q.admit("t", now=50.0)
    for _ in range(5):
        with pytest.raises(Refused):
            q.admit("t", now=50.1)
    q.admit("t", now=51.0)


# ----------------------------------------------------------------------------- gaming the join rule

# A tenant that keeps exactly one run waiting (submits the next as soon as the last was
# dispatched) must earn no more than a backlogged tenant of its weight: it rejoins with the
# credit it would have had waiting (fair.FairQueue._join_credit), not with the most credit.


def trickle(q: FairQueue, tenant: str, picks_n: int) -> list[str]:
    """``tenant`` has one run waiting; whenever it is picked it queues the next right away."""
    seq, n = [], 1
    put(q, tenant)
    for _ in range(picks_n):
        item = q.pick()
        seq.append(item.tenant)
        q.release(item.dispatch.run_id)
        if item.tenant == tenant:
            put(q, tenant, start=n)
            n += 1
    return seq


def test_a_tenant_that_keeps_one_run_waiting_gets_no_more_than_its_weight() -> None:
    q = backlogged({"acme": 3, "beta": 1}, ("acme",))
    got = Counter(trickle(q, "beta", 40))
    assert got["beta"] <= 11, got  # 25 % of 40, and one pick of arrival bonus


def test_a_tenant_that_keeps_one_run_waiting_does_not_starve_an_equal_one() -> None:
    q = backlogged({}, ("patient",))
    got = Counter(trickle(q, "eager", 40))
    assert got["patient"] >= 19, got  # equal weights: about half each


def test_waiting_slots_are_woken_one_per_change_and_none_is_lost() -> None:
    """Many slots wait in get(): every run is taken exactly once, runs of a capped tenant
    wait for its release, a cancelled waiter passes its wake-up on, and a put wakes one
    slot, not all of them (each wake-up is a pick)."""
    async def main() -> None:
        q = FairQueue(TenantPolicy(max_running_overrides={"capped": 1}))
        got: list[str] = []
        pick = q.pick
        calls = 0

        def counted() -> Waiting | None:
            nonlocal calls
            calls += 1
            return pick()

        q.pick = counted  # type: ignore[method-assign]

        async def slot() -> None:
            while True:
                item = await q.get()
                got.append(item.dispatch.run_id)
                await asyncio.sleep(0)
                if item.tenant != "capped":
                    q.release(item.dispatch.run_id)

        slots = [asyncio.create_task(slot()) for _ in range(200)]
        await asyncio.sleep(0)
        calls = 0
        put(q, "t", 1)
        await asyncio.sleep(0.01)
        # the woken slot, the next it woke, and after the release one more and the releaser
        # itself (an Event woke all 200)
        assert got == ["t-0"] and calls <= 4
        slots[0].cancel()
        slots[1].cancel()
        put(q, "t", 300, start=1)
        put(q, "capped", 2)
        await asyncio.sleep(0.05)
        assert sorted(got) == sorted([f"t-{i}" for i in range(301)] + ["capped-0"])
        q.release("capped-0")
        await asyncio.sleep(0.01)
        assert got[-1] == "capped-1" and len(got) == len(set(got))
        for s in slots:
            s.cancel()
        await asyncio.gather(*slots, return_exceptions=True)

    asyncio.run(main())
