"""API and worker processes on a local Redis Cluster (three masters, three replicas).

The two-API story of test_redis_topology.py on a cluster, the pub/sub connections it costs
(one per shard per process, never one per run), and a master killed mid-run: its replica
takes over, and every watcher ends complete or with an explicit signal - never a gap, a
reordering, or a seq naming two different events.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from server import redis_keys
from tests.integration.test_redis_topology import assert_exact, read_sse, read_with_reconnects, start_run
from tests.support import redis_topology

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def cluster_topology():
    """A Redis Cluster of its own, two API processes (no workers) and two worker processes."""
    env = {"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "60", "THOUGHTSTREAM_REDIS_OUTAGE_S": "20"}
    with redis_topology(["api1", "api2"], ["w1", "w2"], env, cluster=True) as (cluster, procs):
        yield cluster, procs


def shard_subscribers(cluster: Any) -> dict[int, int]:
    """Per live master: its connections subscribed to shard channels (CLIENT LIST's ssub)."""
    out = {}
    for port in cluster.masters_from(cluster.live_ports()[0]):
        clients = cluster.client(port).client_list()
        out[port] = sum(1 for c in clients if int(c.get("ssub", 0)) > 0)
    return out


async def test_two_apis_on_a_cluster_stream_complete_with_one_connection_per_shard(cluster_topology):
    """Runs submitted to API 1 stream complete through API 2 and through reconnects to either;
    60 watchers of 4 runs cost each API process one pub/sub connection per shard it needs."""
    cluster, procs = cluster_topology
    api1, api2 = procs["api1"], procs["api2"]
    runs = [start_run(api1) for _ in range(4)]
    # The runs' logs live on the masters their ids hash to; the control plane on one of them.
    homes = {cluster.master_of(redis_keys.run_log("ts", r)) for r in runs}
    watchers = [asyncio.create_task(read_sse(f"{api2.url}/runs/{runs[i % 4]}/events")) for i in range(60)]
    # Only API 2 watches: one shard connection on each master that holds a watched run.
    deadline = time.monotonic() + 10
    while sum((per_master := shard_subscribers(cluster)).values()) < len(homes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert {p for p, n in per_master.items() if n} == homes and max(per_master.values()) == 1, (per_master, homes)
    results = await asyncio.gather(*watchers)
    for rid in runs:
        full, done = await read_sse(f"{api1.url}/runs/{rid}/events")
        assert done
        assert_exact(full)
        assert {"THOUGHT", "TOOL_USE", "CRITIC_EVAL", "RESULT"} <= {e["ns"] for e in full}
        for events, ended in (r for i, r in enumerate(results) if runs[i % 4] == rid):
            assert ended and events == full
    # Dropping and resuming through either API, each event exactly once.
    more = [start_run(procs["api1" if i % 2 else "api2"]) for i in range(3)]
    urls = lambda rid: [f"{procs[a].url}/runs/{rid}/events" for a in ("api1", "api2")]  # noqa: E731
    for rid, events in zip(more, await asyncio.gather(*(read_with_reconnects(urls(r)) for r in more))):
        assert_exact(events)
        assert events == (await read_sse(urls(rid)[0]))[0]
    # Nothing left subscribed once nobody watches (no idle connection per finished run): the
    # last reader's leave unsubscribes in the background.
    deadline = time.monotonic() + 10
    while (left := sum(shard_subscribers(cluster).values())) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert left == 0, shard_subscribers(cluster)


class Watcher:
    """An SSE client that behaves like EventSource: on a dropped connection it reconnects with
    Last-Event-ID; it stops at the terminal event, a ``reset`` frame, or a 404 (run_lost)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.events: list[dict] = []
        self.received: list[float] = []  # monotonic time each event arrived
        self.signal: str | None = None  # reset reason, or the 404's error code
        self.complete = False
        self.reconnects = 0

    async def run(self, deadline_s: float = 90) -> Watcher:
        async with asyncio.timeout(deadline_s):
            while not (self.complete or self.signal):
                url = self.urls[self.reconnects % len(self.urls)]
                headers = {"Last-Event-ID": str(self.events[-1]["seq"])} if self.events else {}
                try:
                    await self._read(url, headers)
                except (httpx.TransportError, httpx.RemoteProtocolError):
                    pass
                if not (self.complete or self.signal):
                    self.reconnects += 1
                    await asyncio.sleep(0.3)
        return self

    async def _read(self, url: str, headers: dict[str, str]) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    body = json.loads(await resp.aread())
                    if resp.status_code == 404:
                        self.signal = body["error"]["code"]
                    return
                name = "message"
                async for line in resp.aiter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if name == "reset":
                            self.signal = data.get("reason") or "reset"
                            return
                        if "seq" in data:
                            self.events.append(data)
                            self.received.append(time.monotonic())
                            if data["ns"] == "STATUS" and data["data"].get("state") in TERMINAL:
                                self.complete = True
                                return
                    elif line == "":
                        name = "message"


@pytest.mark.parametrize("shard", ["a run's", "the control plane's"])
async def test_a_master_killed_mid_run_fails_over_and_every_watcher_ends_honestly(cluster_topology, shard):
    """SIGKILL the master holding a running run's slot (or the control plane's: queue,
    scheduler, leases): its replica takes over; every watcher ends complete (gapless, each
    event once, equal to the log) or with an explicit signal (reset log_lost, 404 run_lost);
    no seq ever names two different events."""
    cluster, procs = cluster_topology
    api1, api2 = procs["api1"], procs["api2"]
    runs = [start_run(procs["api1" if i % 2 else "api2"]) for i in range(6)]
    key = redis_keys.run_log("ts", runs[0]) if shard == "a run's" else redis_keys.queue("ts")
    victim = cluster.master_of(key)
    hit = [r for r in runs if cluster.master_of(redis_keys.run_log("ts", r)) == victim]
    watchers = [Watcher([f"{a.url}/runs/{r}/events", f"{b.url}/runs/{r}/events"])
                for r in runs for a, b in ((api1, api2), (api2, api1)) for _ in range(3)]
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    await asyncio.sleep(2.5)  # every run is streaming, every watcher connected
    assert all(w.events for w in watchers), "every watcher was streaming before the kill"
    seen_before = {id(w): len(w.events) for w in watchers}

    killed_at = time.monotonic()
    cluster.kill(victim)
    # The replica is promoted: the slot has a live master again.
    while True:
        try:
            if cluster.master_of(key) != victim:
                break
        except Exception:  # noqa: BLE001 - nodes still voting
            pass
        assert time.monotonic() - killed_at < 30, "no replica took over"
        await asyncio.sleep(0.05)
    promoted_s = time.monotonic() - killed_at
    await asyncio.to_thread(cluster.wait_ok)

    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    # What each run's log holds now (None: declared lost).
    logs: dict[str, list[dict] | None] = {}
    for rid in runs:
        probe = await Watcher([f"{api1.url}/runs/{rid}/events"]).run(30)
        logs[rid] = probe.events if probe.complete else None
    complete = signalled = 0
    for w in watchers:
        rid = w.urls[0].rsplit("/", 2)[-2]
        seqs = [e["seq"] for e in w.events]
        assert seqs == list(range(1, len(seqs) + 1)), f"gap, duplicate or reordering for {rid}: {seqs}"
        if w.complete:
            complete += 1
            assert_exact(w.events)
            if logs[rid] is not None:
                assert w.events == logs[rid], f"watcher of {rid} saw other events than its log"
        else:
            assert w.signal in ("log_lost", "run_lost"), (rid, w.signal, len(w.events))
            signalled += 1
            assert rid in hit, f"run {rid} on a surviving shard was signalled {w.signal}"
    # No seq names two different events, across every watcher of a run and its log.
    for rid in runs:
        by_seq: dict[int, dict] = {e["seq"]: e for e in logs[rid] or ()}
        for w in (w for w in watchers if f"/runs/{rid}/" in w.urls[0]):
            for e in w.events:
                assert by_seq.setdefault(e["seq"], e) == e, f"seq {e['seq']} of {rid} was reused"
    assert sum(seen_before.values()) > 0
    # How long the runs on the killed shard stood still: the first event after the kill.
    resumed = [min((t for t in w.received if t > killed_at), default=None) for w in watchers
               if w.urls[0].rsplit("/", 2)[-2] in hit]
    stalls = [t - killed_at for t in resumed if t is not None]
    print(f"{shard} master :{victim} killed; replica promoted after {promoted_s:.2f}s; {len(hit)} of {len(runs)} "
          f"runs on its shard, their watchers' next event {min(stalls, default=0):.2f}-"
          f"{max(stalls, default=0):.2f}s after the kill; watchers: {complete} complete, {signalled} signalled "
          f"({sum(w.reconnects for w in watchers)} reconnects)")
