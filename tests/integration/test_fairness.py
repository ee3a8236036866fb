"""Fair share end to end (issue 11), against real processes on both backends: the embedded
server (one process, THOUGHTSTREAM_MAX_CONCURRENT_RUNS=2) and Redis (one API process and
two worker processes of one slot each). Tenants come from JWTs (AUTH=jwt, a `tenant` claim).

* a quiet tenant's one run, arriving behind a noisy tenant's 100 queued runs, waits about
  one run's duration, not the backlog (FIFO would make it wait backlog / slots x duration);
* weights 3:1, both backlogged: acme gets 75 % (+- 5 %) of the first 40 dispatches;
* a per-tenant running cap is never exceeded, and every ending gives the slot back: cancel,
  timeout, failure, interrupt, and (Redis) a worker killed with SIGKILL mid-run; cancels
  racing dispatches leave nothing executing;
* 429 tenant_queue_full / rate_limited with Retry-After, and the retry after it succeeds;
  the queue cap holds under 20 concurrent POSTs;
* worker pools: a `worker --agents reflective` never takes another agent's run; a run of an
  agent no live worker serves waits queued and says why; /readyz lists the agent.

The measured numbers are printed (pytest -s) and kept in test-output/fairness.json.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Iterable, Iterator

import httpx
import pytest

from server import redis_keys
from tests.auth_support import Minter, bearer
from tests.support import ROOT, RedisServer, ServerProcess, redis_topology, wait_workers

MINTER = Minter.hs256()
SLEEPY = "sleepy=tests/fixtures/sleepy_graph.py:graph"
TERMINAL = {"succeeded", "failed", "cancelled"}
OUTPUT = ROOT / "test-output" / "fairness.json"

NOISY_RUNS = 100
RUN_S = 0.5  # the noisy and quiet runs' duration
SLOTS = 2  # memory: MAX_CONCURRENT_RUNS=2; Redis: two workers of one slot each
WEIGHT_TOLERANCE = 0.05  # acme's share of the first 40 dispatches: 75 % +- 5 % (28..32 runs)
CAPPED = ("capped", "slot-cancel", "slot-timeout", "slot-fail", "slot-interrupt", "slot-kill")


def base_env() -> dict[str, str]:
    return {
        "THOUGHTSTREAM_AUTH": "jwt",
        "THOUGHTSTREAM_JWT_SECRET": MINTER.secret,
        "THOUGHTSTREAM_AGENTS": json.dumps([SLEEPY]),
        "THOUGHTSTREAM_JOURNAL": "false",
        "THOUGHTSTREAM_LOG_LEVEL": "warning",
    }


FAIR_ENV = {
    "THOUGHTSTREAM_TENANT_WEIGHTS": "acme=3,beta=1",
    "THOUGHTSTREAM_TENANT_MAX_RUNNING_OVERRIDES": ",".join(f"{t}=1" for t in CAPPED),
    # Long enough that a loop stalled by a loaded CI machine is not taken for a dead worker
    # (a false takeover frees the slot while the run still runs: peak 2 of a cap of 1).
    "THOUGHTSTREAM_WORKER_LEASE_S": "4",
}
LIMITS_ENV = {
    "THOUGHTSTREAM_TENANT_MAX_QUEUED": "3",
    "THOUGHTSTREAM_TENANT_RATE": "2/s,burst=2",
}


@dataclass
class Deployment:
    backend: str
    api: ServerProcess
    slots: int
    redis: RedisServer | None = None
    procs: dict[str, ServerProcess] = field(default_factory=dict)

    def sched(self, what: str) -> str:
        return f"{redis_keys.scheduler('ts')}:{what}"

    def redis_client(self) -> Any:
        import redis as redis_sync

        assert self.redis is not None
        return redis_sync.Redis(port=self.redis.port)


# ----------------------------------------------------------------------------- deployments


@pytest.fixture(scope="module", params=["memory", "redis"])
def fair(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """Weights acme=3,beta=1; cap 1 for the CAPPED tenants; two slots in all."""
    env = {**base_env(), **FAIR_ENV}
    if request.param == "memory":
        with ServerProcess(env={**env, "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": str(SLOTS)}) as api:
            yield Deployment("memory", api, SLOTS)
    else:
        env["THOUGHTSTREAM_MAX_CONCURRENT_RUNS"] = "1"
        with redis_topology(["api"], ["w1", "w2"], env, durable=False) as (redis, procs):
            yield Deployment("redis", procs["api"], SLOTS, redis, procs)


@pytest.fixture(scope="module", params=["memory", "redis"])
def limited(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """TENANT_MAX_QUEUED=3, TENANT_RATE=2/s,burst=2. Memory: one slot. Redis: one API process
    and one `worker --agents reflective` (no worker takes `sleepy` until a test starts one)."""
    env = {**base_env(), **LIMITS_ENV}
    if request.param == "memory":
        with ServerProcess(env={**env, "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "1"}) as api:
            yield Deployment("memory", api, 1)
        return
    redis = RedisServer().start()

    env.update({"THOUGHTSTREAM_REDIS_URL": redis.url,
                "THOUGHTSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="ts-data-")})
    procs = {"api": ServerProcess("--workers", "0", env=env),
             "reflective": ServerProcess("--agents", "reflective", command="worker", env=env)}
    try:
        for p in procs.values():
            p.start()
        wait_workers(redis, 1)
        yield Deployment("redis", procs["api"], 1, redis, procs)
    finally:
        for p in procs.values():
            p.stop()
        for name, p in procs.items():
            print(f"--- {name} ---\n{p.output()[-3000:]}")
        redis.stop()


# ----------------------------------------------------------------------------- helpers

_tokens: dict[tuple[str, bool], dict[str, str]] = {}


def auth(tenant: str, admin: bool = False) -> dict[str, str]:
    key = (tenant, admin)
    if key not in _tokens:
        _tokens[key] = bearer(MINTER.token(tenant=tenant, sub=f"{tenant}-user", ttl_s=3600,
                                           roles=["admin"] if admin else None))
    return _tokens[key]


ADMIN = ("ops", True)


def client(dep: Deployment) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=dep.api.url, timeout=httpx.Timeout(30.0, connect=5.0))


async def post(http: httpx.AsyncClient, tenant: str, sleep_s: float = 0.1, *, agent: str = "sleepy",
               metadata: dict[str, Any] | None = None, **flags: Any) -> httpx.Response:
    body: dict[str, Any] = {"agent": agent,
                            "input": {"sleep_s": sleep_s, **flags} if agent == "sleepy" else flags}
    if metadata:
        body["metadata"] = metadata
    return await http.post("/runs", json=body, headers=auth(tenant))


async def submit(http: httpx.AsyncClient, tenant: str, sleep_s: float = 0.1, **kw: Any) -> str:
    resp = await post(http, tenant, sleep_s, **kw)
    assert resp.status_code == 202, resp.text
    return resp.json()["run_id"]


async def sequential(http: httpx.AsyncClient, tenant: str, n: int, sleep_s: float) -> list[str]:
    return [await submit(http, tenant, sleep_s) for _ in range(n)]


async def submit_patiently(http: httpx.AsyncClient, tenant: str, sleep_s: float = 0.1, **kw: Any) -> str:
    """submit, honouring a 429's Retry-After (the limits server refuses bursts)."""
    for _ in range(50):
        resp = await post(http, tenant, sleep_s, **kw)
        if resp.status_code != 429:
            assert resp.status_code == 202, resp.text
            return resp.json()["run_id"]
        await asyncio.sleep(resp.json()["error"]["retry_after_s"])
    raise AssertionError(f"still refused: {resp.text}")


async def gather_limited(coros: Iterable[Awaitable[Any]], limit: int = 8) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def snap(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    resp = await http.get(f"/runs/{run_id}", headers=auth(*ADMIN))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def wait_state(http: httpx.AsyncClient, run_id: str, want: set[str] | str,
                     timeout: float = 20.0) -> dict[str, Any]:
    want = {want} if isinstance(want, str) else want
    deadline = time.monotonic() + timeout
    while True:
        s = await snap(http, run_id)
        if s["status"] in want:
            return s
        assert time.monotonic() < deadline, f"run {run_id} not {want} after {timeout}s: {s}"
        await asyncio.sleep(0.03)


async def runs_of(http: httpx.AsyncClient, tenant: str, status: str | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200, "tenant": tenant}
    if status:
        params["status"] = status
    while True:
        resp = await http.get("/runs", params=params, headers=auth(*ADMIN))
        assert resp.status_code == 200, resp.text
        page = resp.json()
        rows += page["runs"]
        if page["next_before"] is None:
            return rows
        params["before"] = page["next_before"]


async def cancel_all(http: httpx.AsyncClient, tenant: str) -> None:
    """End every run of the tenant that has not ended (tests leave nothing behind)."""
    async def cancel(run_id: str) -> None:
        resp = await http.post(f"/runs/{run_id}/cancel", headers=auth(*ADMIN))
        assert resp.status_code in (200, 409), resp.text

    for _ in range(3):
        live = [r["run_id"] for r in await runs_of(http, tenant) if r["status"] not in TERMINAL]
        if not live:
            return
        await gather_limited((cancel(r) for r in live), 8)


async def running_count(http: httpx.AsyncClient, tenant: str) -> int:
    resp = await http.get("/runs", params={"status": "running", "limit": 200}, headers=auth(tenant))
    assert resp.status_code == 200, resp.text
    return len(resp.json()["runs"])


class Sampler:
    """GET /runs?status=running of one tenant, over and over, in the background: the peak."""

    def __init__(self, http: httpx.AsyncClient, tenant: str) -> None:
        self.http, self.tenant = http, tenant
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.samples.append(await running_count(self.http, self.tenant))
            await asyncio.sleep(0.03)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


async def no_slot_held(http: httpx.AsyncClient, dep: Deployment, tenant: str, runs: list[str]) -> None:
    """The tenant holds no running slot any more: per the overview, and on Redis per the
    scheduler's own counter and slot hash."""
    deadline = time.monotonic() + 5
    while True:
        resp = await http.get("/admin/overview", headers=auth(*ADMIN))
        assert resp.status_code == 200, resp.text
        row = resp.json()["tenants"].get(tenant) or {"running": 0, "queued": 0}
        if row["running"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert row["running"] == 0 and row["queued"] == 0, row
    if dep.redis is not None:
        r = dep.redis_client()
        assert r.hget(dep.sched("running"), tenant) is None
        held = {k.decode() for k in r.hkeys(dep.sched("slot"))}
        assert not held & set(runs), held & set(runs)


def overlap_peak(runs: list[dict[str, Any]]) -> int:
    """The most runs whose [started_at, ended_at] intervals overlap at one moment."""
    points = []
    for r in runs:
        if r["started_at"] is None:
            continue
        points.append((r["started_at"], 1))
        points.append((r["ended_at"] or math.inf, -1))
    peak = cur = 0
    for _, d in sorted(points, key=lambda p: (p[0], p[1])):
        cur += d
        peak = max(peak, cur)
    return peak


def record(key: str, value: dict[str, Any]) -> None:
    """Keep a measurement in test-output/fairness.json (merged with the other keys there)."""
    OUTPUT.parent.mkdir(exist_ok=True)
    try:
        data = json.loads(OUTPUT.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = {**value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    OUTPUT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n[fairness] {key}: {json.dumps(value)}")


# ----------------------------------------------------------------------------- fair dispatch


async def test_quiet_tenant_waits_one_run_not_the_noisy_backlog(fair: Deployment) -> None:
    async with client(fair) as http:
        noisy = await gather_limited((submit(http, "noisy", RUN_S) for _ in range(NOISY_RUNS)), 10)
        quiet = await submit(http, "quiet", RUN_S)
        q = await wait_state(http, quiet, "succeeded", timeout=30)
        await cancel_all(http, "noisy")  # the rest of the backlog: withdrawn, not run (time)
        rows = {r["run_id"]: r for r in await runs_of(http, "noisy")}
    assert set(rows) == set(noisy)
    wait = q["started_at"] - q["created_at"]
    # The backlog the quiet run arrived behind: noisy runs created before it, not started yet.
    backlog = [r for r in rows.values() if r["created_at"] < q["created_at"]
               and (r["started_at"] is None or r["started_at"] > q["created_at"])]
    overtaken = [r for r in backlog if r["started_at"] is None or r["started_at"] > q["started_at"]]
    done = [r["ended_at"] - r["started_at"] for r in rows.values() if r["status"] == "succeeded"]
    run_s = sum(done) / len(done) if done else RUN_S
    fifo = len(backlog) / fair.slots * run_s
    record(f"quiet_tenant_wait.{fair.backend}", {
        "noisy_runs": NOISY_RUNS, "slots": fair.slots, "run_s": round(run_s, 3),
        "backlog_at_arrival": len(backlog), "quiet_wait_s": round(wait, 3),
        "fifo_estimate_s": round(fifo, 2), "overtaken": len(overtaken),
    })
    assert len(backlog) >= 0.8 * NOISY_RUNS, "the quiet run did not arrive behind a real backlog"
    assert wait <= run_s + 0.5, f"the quiet run waited {wait:.2f}s; one run takes {run_s:.2f}s"
    assert wait < fifo / 10
    assert len(overtaken) >= len(backlog) - fair.slots, "the quiet run did not pass the backlog"


async def test_weights_3_to_1_split_the_first_40_dispatches(fair: Deployment) -> None:
    async with client(fair) as http:
        # Hold every slot, queue both tenants' backlogs behind, then let go: all dispatches
        # from then on are between two backlogged tenants.
        gates = [await submit(http, "gate", 60) for _ in range(fair.slots)]
        for g in gates:
            await wait_state(http, g, "running")
        # Each tenant's runs one after another (their FIFO order is their creation order),
        # the two tenants side by side.
        acme, beta = await asyncio.gather(sequential(http, "acme", 36, 0.15), sequential(http, "beta", 14, 0.15))
        assert await running_count(http, "acme") == 0 and await running_count(http, "beta") == 0
        for g in gates:
            resp = await http.post(f"/runs/{g}/cancel", headers=auth(*ADMIN))
            assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
        for run_id in acme + beta:
            await wait_state(http, run_id, "succeeded", timeout=40)
        rows = await runs_of(http, "acme") + await runs_of(http, "beta")
    order = sorted((r for r in rows if r["run_id"] in set(acme + beta)), key=lambda r: r["started_at"])
    first = order[:40]
    got = sum(r["tenant"] == "acme" for r in first)
    record(f"weighted_split.{fair.backend}", {
        "weights": "acme=3,beta=1", "dispatches": 40, "acme": got, "beta": 40 - got,
        "acme_share": got / 40, "tolerance": WEIGHT_TOLERANCE,
        "order": "".join(r["tenant"][0] for r in first),
    })
    assert abs(got / 40 - 0.75) <= WEIGHT_TOLERANCE, f"acme got {got} of the first 40 dispatches"
    # FIFO within each tenant.
    for tenant, ids in (("acme", acme), ("beta", beta)):
        mine = [r for r in order if r["tenant"] == tenant]
        assert [r["run_id"] for r in mine] == [r["run_id"] for r in sorted(mine, key=lambda r: r["created_at"])]


async def test_running_cap_is_never_exceeded_and_queued_runs_say_why(fair: Deployment) -> None:
    async with client(fair) as http:
        with Sampler(http, "capped") as sampler:
            first = await submit(http, "capped", 1.5)
            rest = [await submit(http, "capped", 0.3) for _ in range(3)]
            await wait_state(http, first, "running")
            # The cap holds the tenant's own runs back, not the other tenants'.
            other = await submit(http, "free", 0.3)
            places = [await snap(http, r) for r in rest]
            o = await wait_state(http, other, "succeeded")
            ends = [await wait_state(http, r, "succeeded", timeout=20) for r in [first, *rest]]
        for i, s in enumerate(places, start=1):
            assert s["status"] == "queued", s
            assert s["queue_position"] == i, s
            assert s["queue_reason"] == "tenant 'capped' is at its running cap (1/1)", s
        assert sampler.peak == 1, sampler.samples
        assert len(sampler.samples) > 20
        assert overlap_peak(ends) == 1
        assert [e["run_id"] for e in sorted(ends, key=lambda e: e["started_at"])] == [first, *rest]
        assert o["started_at"] < ends[0]["ended_at"], "the other tenant waited for the capped one"
        await no_slot_held(http, fair, "capped", [first, *rest])


CASES = {
    "cancel": ({"sleep_s": 30}, None),
    "timeout": ({"sleep_s": 30}, {"timeout_s": 1}),
    "fail": ({"sleep_s": 0.3, "fail": True}, None),
    "interrupt": ({"sleep_s": 0.3, "ask": True}, None),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_every_ending_gives_the_slot_back(fair: Deployment, case: str) -> None:
    """Cap 1: a run ends by `case`; the tenant's next queued run then starts."""
    tenant = f"slot-{case}"
    inputs, metadata = CASES[case]
    async with client(fair) as http:
        x = await submit(http, tenant, metadata=metadata, **inputs)
        await wait_state(http, x, "running")
        y = await submit(http, tenant, 0.2)
        s = await snap(http, y)
        assert s["status"] == "queued" and s["queue_position"] == 1, s
        assert "running cap" in s["queue_reason"], s
        if case == "cancel":
            resp = await http.post(f"/runs/{x}/cancel", headers=auth(tenant))
            assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
        ended = await wait_state(http, x, TERMINAL | {"interrupted"}, timeout=15)
        want = {"cancel": ("cancelled", "cancelled"), "timeout": ("failed", "timeout"),
                "fail": ("failed", "RuntimeError"), "interrupt": ("interrupted", None)}[case]
        assert (ended["status"], (ended["error"] or {}).get("code")) == want, ended
        nxt = await wait_state(http, y, "succeeded", timeout=15)
        assert nxt["started_at"] >= ended["ended_at" if case != "interrupt" else "started_at"]
        if case == "interrupt":
            # The answer queues it again: it takes a slot again, and gives it back again.
            resp = await http.post(f"/runs/{x}/resume", json={"value": "yes"}, headers=auth(tenant))
            assert resp.status_code == 202, resp.text
            await wait_state(http, x, "succeeded", timeout=15)
            z = await submit(http, tenant, 0.1)
            await wait_state(http, z, "succeeded", timeout=15)
        await no_slot_held(http, fair, tenant, [x, y])


async def test_cancels_racing_dispatches_leave_no_run_executing(fair: Deployment) -> None:
    """Cancel 30 queued runs while the slots they free take the next ones: every run ends
    cancelled, and nothing executes a cancelled run afterwards (its slot is back at once,
    not when its graph would have ended).

    It caught two Redis bugs (fixed in 3ad5d89): a run claimed between the service's read
    (`queued`) and its cancel was ended in the record but went on executing on its worker,
    holding the slots; and a cancel that reached the worker was swallowed by
    asyncio.wait_for inside redis-py (Python 3.11), so the run went on to `succeeded`."""
    async with client(fair) as http:
        problems: list[str] = []
        for round_ in range(2):  # a race: two rounds to catch it more often
            tenant = f"race{round_}"
            problems += await cancel_storm(http, fair, tenant)
            await no_slot_held(http, fair, tenant, [])
        assert not problems, f"{fair.backend}: " + "; ".join(problems)


async def cancel_storm(http: httpx.AsyncClient, dep: Deployment, tenant: str) -> list[str]:
    ids = await sequential(http, tenant, 30, 3)
    await wait_state(http, ids[0], "running")

    async def cancel(run_id: str) -> dict[str, Any]:
        resp = await http.post(f"/runs/{run_id}/cancel", headers=auth(tenant))
        assert resp.status_code in (200, 409), resp.text
        return {"answered": resp.json()["status"], **await snap(http, run_id)}

    ends = await gather_limited((cancel(r) for r in ids), 30)

    async def held() -> int:
        resp = await http.get("/admin/overview", headers=auth(*ADMIN))
        return (resp.json()["tenants"].get(tenant) or {}).get("running", 0)

    # The executions give their slots back after the endings the cancels answered with; a
    # leaked slot is never given back (nothing expires it), so a loaded machine gets 10 s.
    deadline = time.monotonic() + 10
    while await held() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    problems = []
    wrong = [(e["run_id"][:8], e["answered"], e["status"]) for e in ends if e["status"] != "cancelled"]
    if wrong:
        problems.append(f"POST /cancel answered but the run was not cancelled (id, answered, now): {wrong}")
    if await held():
        problems.append(f"{await held()} slot(s) still held 10 s after every run of {tenant} ended")
    # Whatever happened, leave the deployment idle for the tests after this one.
    deadline = time.monotonic() + 10
    while (await runs_of(http, tenant, "running") or await held()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return problems


async def test_kill_9_of_a_worker_mid_run_does_not_leak_the_slot(fair: Deployment) -> None:
    if fair.backend != "redis":
        pytest.skip("worker processes exist on Redis only")
    tenant = "slot-kill"
    r = fair.redis_client()
    async with client(fair) as http:
        with Sampler(http, tenant) as sampler:
            x = await submit(http, tenant, 2.5)
            later = [await submit(http, tenant, 0.3) for _ in range(2)]
            s = await wait_state(http, x, "running")
            owner_name, owner = next((n, p) for n, p in fair.procs.items()
                                     if n.startswith("w") and f"-{p.proc.pid}-" in (s["worker"] or ""))
            await asyncio.sleep(0.5)
            assert r.hget(fair.sched("running"), tenant) == b"1"
            killed_at = time.time()
            owner.kill()  # SIGKILL: no ack, no release, no goodbye
            ends = [await wait_state(http, run_id, TERMINAL, timeout=30) for run_id in [x, *later]]
        # Past the lease another worker took the run over (resumed it, attempt 2) in the
        # slot it held; when it ended the slot came back and the tenant's next runs started.
        assert ends[0]["status"] == "succeeded" and ends[0]["attempt"] == 2, ends[0]
        assert [e["status"] for e in ends[1:]] == ["succeeded", "succeeded"]
        assert all(e["started_at"] > killed_at for e in ends[1:])
        assert sampler.peak == 1, sampler.samples
        assert overlap_peak(ends) == 1
        await no_slot_held(http, fair, tenant, [x, *later])
        # And a new run of that tenant still starts at once.
        again = await submit(http, tenant, 0.1)
        await wait_state(http, again, "succeeded", timeout=10)
    # Put the topology back as it was (two workers) for whatever runs after.
    before = len(r.xinfo_consumers(redis_keys.queue("ts"), "workers"))
    fair.procs[owner_name] = ServerProcess(command="worker", env=owner.env).start()
    await asyncio.to_thread(wait_workers, fair.redis, before + 1)


# ----------------------------------------------------------------------------- limits: 429


async def test_rate_limit_answers_429_with_retry_after_and_the_retry_succeeds(limited: Deployment) -> None:
    async with client(limited) as http:
        try:
            # Warm the path (JWT check, Redis connections, scripts) so the three are immediate.
            assert (await post(http, "rate-warm", 0.1)).status_code == 202
            resps = await asyncio.gather(*(post(http, "rate", 0.1) for _ in range(3)))
            codes = sorted(r.status_code for r in resps)
            assert codes == [202, 202, 429], [r.text for r in resps]
            refused = next(r for r in resps if r.status_code == 429)
            err = refused.json()["error"]
            assert err["code"] == "rate_limited", err
            retry_after = int(refused.headers["Retry-After"])
            assert retry_after == math.ceil(err["retry_after_s"]) and retry_after >= 1, (refused.headers, err)
            assert 0 < err["retry_after_s"] <= 0.5  # GCRA: one interval of 2/s at most
            # Another tenant is unaffected (its own bucket).
            assert (await post(http, "rate-other", 0.1)).status_code == 202
            assert (await post(http, "rate-other", 0.1)).status_code == 202
            await asyncio.sleep(retry_after)
            again = await post(http, "rate", 0.1)
            assert again.status_code == 202, again.text
            record(f"rate_limit.{limited.backend}", {"rate": "2/s,burst=2", "retry_after": retry_after,
                                                     "retry_after_s": err["retry_after_s"]})
        finally:
            for t in ("rate", "rate-other", "rate-warm"):
                await cancel_all(http, t)


async def paced(http: httpx.AsyncClient, tenant: str, n: int, sleep_s: float) -> list[httpx.Response]:
    """n POSTs within the tenant's rate (2/s, burst 2): the queue cap is what they meet."""
    out = []
    for i in range(n):
        if i >= 2:
            await asyncio.sleep(0.6)
        out.append(await post(http, tenant, sleep_s))
    return out


async def test_queue_cap_answers_429_tenant_queue_full_with_retry_after(limited: Deployment) -> None:
    tenant = "queue"
    async with client(limited) as http:
        try:
            if limited.backend == "memory":
                # The tenant's runs take 1.5 s (its mean run time: what Retry-After comes from).
                first = await submit(http, tenant, 1.5)
                await wait_state(http, first, "succeeded")
                # Another tenant holds the one slot, so the tenant's runs all wait.
                blocker = await submit(http, "queue-blocker", 30)
                await wait_state(http, blocker, "running")
            # (Redis: no worker takes `sleepy` here, so they all wait.) Three queue (the
            # cap), the fourth is refused.
            resps = await paced(http, tenant, 4, 0.1)
            *accepted, refused = resps
            assert [r.status_code for r in accepted] == [202] * len(accepted), [r.text for r in accepted]
            assert refused.status_code == 429, refused.text
            err = refused.json()["error"]
            assert err["code"] == "tenant_queue_full", err
            retry_after = int(refused.headers["Retry-After"])
            assert retry_after >= 1 and retry_after == math.ceil(err["retry_after_s"]), (refused.headers, err)
            ids = [r.json()["run_id"] for r in accepted]
            queued = [await snap(http, run_id) for run_id in ids]
            waiting = [s for s in queued if s["status"] == "queued"]
            assert len(waiting) == 3, [s["status"] for s in queued]
            assert [s["queue_position"] for s in waiting] == [1, 2, 3]
            if limited.backend == "redis":
                assert all(s["queue_reason"] == "no live worker serves agent 'sleepy'" for s in waiting), waiting
            else:
                assert waiting[0]["queue_reason"] == "waiting for a free run slot"
                assert waiting[2]["queue_reason"] == "behind 2 earlier run(s) of tenant 'queue'"
                # From the tenant's state: one run of its 1.5 s (cap: one slot) frees a place.
                # (Its measured run time: 1.5 s and a loaded machine's overhead; not two or three runs' worth.)
                assert 1.45 <= err["retry_after_s"] < 2.5, err
            assert (await post(http, "queue-other", 0.1)).status_code == 202  # its own queue
            if limited.backend == "memory":
                await cancel_all(http, "queue-blocker")  # the slot frees; the tenant's runs go
                await asyncio.sleep(retry_after)
            else:  # nothing runs them here: a withdrawn run frees its place
                resp = await http.post(f"/runs/{ids[-1]}/cancel", headers=auth(tenant))
                assert resp.status_code == 200
            again = await post(http, tenant, 0.1)
            assert again.status_code == 202, again.text
            record(f"queue_full.{limited.backend}", {"max_queued": 3, "retry_after": retry_after,
                                                     "retry_after_s": err["retry_after_s"]})
        finally:
            for t in (tenant, "queue-other", "queue-blocker"):
                await cancel_all(http, t)


@pytest.fixture(scope="module", params=["memory", "redis"])
def queue_capped(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """TENANT_MAX_QUEUED=3 and no rate limit. Memory: one slot. Redis: an API process and no
    worker at all (every run stays queued)."""
    env = {**base_env(), "THOUGHTSTREAM_TENANT_MAX_QUEUED": "3"}
    if request.param == "memory":
        with ServerProcess(env={**env, "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "1"}) as api:
            yield Deployment("memory", api, 1)
        return

    redis = RedisServer().start()
    env.update({"THOUGHTSTREAM_REDIS_URL": redis.url,
                "THOUGHTSTREAM_DATA_DIR": tempfile.mkdtemp(prefix="ts-data-")})
    try:
        with ServerProcess("--workers", "0", env=env) as api:
            yield Deployment("redis", api, 0, redis)
    finally:
        redis.stop()


async def test_queue_cap_holds_under_concurrent_posts(queue_capped: Deployment) -> None:
    """20 POSTs at once from one tenant with TENANT_MAX_QUEUED=3 while nothing can start:
    exactly 3 are accepted, 17 answer 429 tenant_queue_full. (On Redis all 20 were accepted
    before 5634e8f: the cap was checked, then the run created, then counted.)"""
    async with client(queue_capped) as http:
        try:
            if queue_capped.backend == "memory":
                blocker = await submit(http, "burst-blocker", 30)  # holds the one slot
                await wait_state(http, blocker, "running")
            resps = await asyncio.gather(*(post(http, "burst", 0.1) for _ in range(20)))
            accepted = sum(r.status_code == 202 for r in resps)
            refused = [r.json()["error"]["code"] for r in resps if r.status_code == 429]
            queued = len(await runs_of(http, "burst", "queued"))
            record(f"queue_cap_concurrent.{queue_capped.backend}",
                   {"max_queued": 3, "posts": 20, "accepted": accepted, "queued": queued})
            assert accepted == 3 and queued == 3, f"{accepted} of 20 accepted, {queued} queued; the cap is 3"
            assert refused == ["tenant_queue_full"] * 17
        finally:
            await cancel_all(http, "burst")
            await cancel_all(http, "burst-blocker")


# ----------------------------------------------------------------------------- worker pools


async def test_pools_a_reflective_worker_never_takes_another_agents_run(limited: Deployment) -> None:
    if limited.backend != "redis":
        # One process runs every agent: no agent is without a worker.
        async with client(limited) as http:
            assert (await http.get("/readyz")).json()["agents_without_workers"] == []
        return
    procs = limited.procs
    reflective_pid = procs["reflective"].proc.pid
    async with client(limited) as http:
        ready = (await http.get("/readyz")).json()
        assert ready["agents_without_workers"] == ["sleepy"], ready
        refl = [await submit_patiently(http, "pool", agent="reflective", question=f"What is {i} + {i}?")
                for i in range(3)]
        sleepy = [await submit_patiently(http, "pool-sleepy", 0.2) for _ in range(3)]
        for run_id in refl:
            s = await wait_state(http, run_id, "succeeded", timeout=30)
            assert f"-{reflective_pid}-" in s["worker"], s
        await asyncio.sleep(1.0)  # the reflective worker polls and is woken: it still leaves them
        for i, run_id in enumerate(sleepy, start=1):
            s = await snap(http, run_id)
            assert s["status"] == "queued", s
            assert s["queue_position"] == i and s["queue_reason"] == "no live worker serves agent 'sleepy'", s
        overview = (await http.get("/admin/overview", headers=auth(*ADMIN))).json()
        assert overview["agents_without_workers"] == ["sleepy"], overview
        # A worker for it comes: its runs start there, and only there.
        before = len(limited.redis_client().xinfo_consumers(redis_keys.queue("ts"), "workers"))
        procs["sleepy"] = ServerProcess("--agents", "sleepy", command="worker", env=procs["api"].env).start()
        await asyncio.to_thread(wait_workers, limited.redis, before + 1)
        sleepy_pid = procs["sleepy"].proc.pid
        for run_id in sleepy:
            s = await wait_state(http, run_id, "succeeded", timeout=30)
            assert f"-{sleepy_pid}-" in s["worker"], s
        deadline = time.monotonic() + 10
        while (await http.get("/readyz")).json()["agents_without_workers"] != []:
            assert time.monotonic() < deadline, "readyz still lists sleepy with its worker up"
            await asyncio.sleep(0.1)
        # Both pools busy at once: each run on its own pool's worker.
        mixed = await asyncio.gather(
            *(submit_patiently(http, f"mix{i}", agent="reflective", question="What is Redis Streams?")
              for i in range(4)),
            *(submit_patiently(http, f"mix{i}", 0.2) for i in range(4)))
        for run_id in mixed:
            s = await wait_state(http, run_id, "succeeded", timeout=30)
            pid = reflective_pid if s["agent"] == "reflective" else sleepy_pid
            assert f"-{pid}-" in s["worker"], s
        # The sleepy worker leaves: readyz lists the agent again.
        procs["sleepy"].stop()
        deadline = time.monotonic() + 10
        while (await http.get("/readyz")).json()["agents_without_workers"] != ["sleepy"]:
            assert time.monotonic() < deadline, "readyz does not list sleepy after its worker stopped"
            await asyncio.sleep(0.1)
