"""The official JS SDK (``@langchain/langgraph-sdk`` from npm, pinned in tests/js) against a real server.

node runs the scripts of tests/js (each prints one JSON document) against ``python -m server
serve --agent chaos=tests/js/sdk_graph.py:graph``, a deterministic graph with custom chunks,
updates and values from a parent and a subgraph, a few milliseconds apart:

* ``join_chaos.mjs``: ``client.runs.stream(thread, "chaos", {streamMode: [custom, updates,
  values], streamSubgraphs: true})`` cut (AbortSignal) after a random number of events, then
  ``client.runs.joinStream(thread, run, {lastEventId, streamMode})`` cut again, 5 cuts a run,
  a last join to ``end``: what the client got equals the run's full replay (``lastEventId:
  "-1"``) id for id and byte for byte: nothing missing, duplicated or reordered. The replay
  itself equals what the graph yields locally (``astream(subgraphs=True)``), so an empty or
  truncated log cannot pass. ``onRunCreated`` (from ``Content-Location``) names the run.
* ``reconnect_chaos.mjs``: the SDK's own reconnect: a proxy ends the stream's connection
  cleanly at an event boundary, then resets it (RST) mid-frame, 3 times; the SDK reconnects
  by itself to ``Location`` with ``Last-Event-ID`` (after asking the run's status) and its one
  stream must still be exact.
* the same cut-and-join over Redis, the joins alternating between two API processes.
* ``worker_kill.mjs``: over Redis, the run's worker SIGKILLed mid-subgraph while the SDK
  streams: the stream, folded over the resumed metadata's ``rewind_to``, is an uncrashed run.
* ``tenants.mjs``: ``new Client({apiKey})`` (``X-Api-Key``) on a server with API keys: the
  chaos is exact; another tenant's thread, run, state and stream are 404, no key is 401.

Skipped only when node or tests/js/node_modules is missing (``.ci/run`` installs it with
``npm ci --prefix tests/js``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.auth_support import write_keys_file
from tests.support import ROOT, RedisServer, ServerProcess, redis_topology, wait_workers

from .conftest import agent_flags, start_server

JS = ROOT / "tests" / "js"
NODE = shutil.which("node")
SDK = JS / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json"
MODES = ["custom", "updates", "values"]
SDK_VERSION = json.loads((JS / "package.json").read_text())["dependencies"]["@langchain/langgraph-sdk"]

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the JS SDK tests run it)"),
    pytest.mark.skipif(not SDK.exists(), reason="tests/js/node_modules is missing: run npm ci --prefix tests/js"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(*agent_flags({"chaos": "tests/js/sdk_graph.py:graph"}),
                        env={"THOUGHTSTREAM_SSE_PING_S": "1"})
    try:
        yield proc
    finally:
        proc.stop()


def node(script: str, url: str, *args: Any, timeout: float = 240) -> dict[str, Any]:
    """Run ``node tests/js/<script> URL args...``; its stdout is one JSON document."""
    argv = [NODE, str(JS / script), url, *map(str, args)]
    # the SDK falls back to these for its API key: only the scripts' own --api-key counts here
    env = {k: v for k, v in os.environ.items() if k not in ("LANGGRAPH_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON from {script}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}") from None


def local_events(chunks: int, delay_s: float) -> list[list[Any]]:
    """What the graph itself yields for the input, as [event name (task ids dropped), data]."""
    spec = importlib.util.spec_from_file_location("sdk_graph_local", JS / "sdk_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # get_type_hints finds the module's globals there
    spec.loader.exec_module(module)

    async def collect() -> list[list[Any]]:
        out = []
        async for ns, mode, data in module.graph.astream({"chunks": chunks, "delay_s": delay_s}, stream_mode=MODES,
                                                          subgraphs=True):
            out.append(["|".join([mode, *(seg.split(":")[0] for seg in ns)]), json.loads(json.dumps(data))])
        return out

    return asyncio.run(collect())


def shape(events: list[dict[str, Any]]) -> list[list[Any]]:
    """[event name without task ids, data] of a stream, without its final ``end``."""
    body = events[:-1] if events and events[-1]["event"] == "end" else events
    return [[re.sub(r":[^|]*", "", e["event"]), e["data"]] for e in body]


def check_exact(run: dict[str, Any], expected: list[list[Any]], thread_ids: set[str]) -> None:
    """The client's stream (all cuts folded) is the run's replay, and the replay is the graph's output."""
    where = f"run {run.get('run_id')} on thread {run.get('thread_id')}"
    assert not run["errors"], f"{where}: {run['errors']}"
    got, replay = run["got"], run["replay"]
    assert shape(replay) == expected, f"{where}: the replay is not what the graph yields"
    assert replay[-1] == {"id": replay[-1]["id"], "event": "end", "data": None}, f"{where}: replay ends {replay[-1]}"
    ids = [int(e["id"]) for e in replay]
    assert ids == sorted(set(ids)), f"{where}: replay ids not strictly increasing: {ids}"
    assert any(e["event"].startswith("custom|child:") for e in replay), f"{where}: no subgraph custom events"
    c = run["compare"]
    assert (c["missing"], c["duplicates"], c["reordered"], c["extra"], c["differing"]) == (0, 0, 0, [], []), \
        f"{where}: {c}"
    assert got == replay, f"{where}: the client's stream differs from the replay"
    assert run["thread_id"] in thread_ids or not thread_ids


def test_sdk_version_is_the_pinned_one() -> None:
    installed = json.loads(SDK.read_text())["version"]
    assert installed == SDK_VERSION == "1.15.0"


def test_js_stream_cut_and_join_stream_is_exact(server: ServerProcess) -> None:
    chunks, delay_s = 8, 0.03
    doc = node("join_chaos.mjs", server.url, "--runs", 10, "--cuts", 5, "--chunks", chunks, "--delay-s", delay_s)
    expected = local_events(chunks, delay_s)
    assert len(doc["runs"]) == 10
    cut_joins = 0
    for run in doc["runs"]:
        check_exact(run, expected, set())
        segs = run["segments"]
        where = f"run {run['run_id']} (seed {doc['seed']})"
        # really cut: the stream and 4 joins were aborted mid-run, the last join read to the end
        assert segs[0]["kind"] == "stream" and segs[0]["cut"], f"{where}: {segs[0]}"
        assert all(s["cut"] for s in segs[:-1]) and segs[-1]["ended"], f"{where}: {segs}"
        cut_joins += sum(1 for s in segs[1:] if s["cut"])
        # every join started strictly after the id it was given, gapless against the replay
        replay_ids = sorted((e["id"] for e in run["replay_metadata"] + run["replay"]), key=int)
        for s in segs[1:]:
            if s["ids"]:
                start = 0 if s["after"] == "-1" else replay_ids.index(s["after"]) + 1 if s["after"] in replay_ids else None
                ids = [i for i in s["ids"] if i in replay_ids]
                assert start is not None and ids == replay_ids[start:start + len(ids)], \
                    f"{where}: join after {s['after']} sent {s['ids']}"
        # each connection opened with metadata {run_id, thread_id, attempt}; onRunCreated from Content-Location
        first = run["got_metadata"][0]["data"]
        assert first["run_id"] == run["run_id"] and first.get("attempt") == 1, first
        assert first.get("thread_id") == run["thread_id"], first
        assert run["on_run_created"] == {"run_id": run["run_id"], "thread_id": run["thread_id"]}, run["on_run_created"]
        assert run["status"] == "success", f"{where}: status {run['status']}"
        # a finished run joined from a random id: exactly the rest, then end, at once
        tail = run["tail"]
        assert tail and tail["ended"] and not tail["hung"] and tail["error"] is None, f"{where}: {tail}"
        assert tail["count"] == tail["want"] and tail["compare"]["missing"] == tail["compare"]["duplicates"] == 0, tail
        assert tail["ms"] < 5000, f"{where}: a finished run's join took {tail['ms']} ms"
    assert cut_joins >= 10 * 3, f"only {cut_joins} joins were cut"
    assert doc["ok"]


def test_js_stream_resumable_and_join_stream_is_exact(server: ServerProcess) -> None:
    """``streamResumable: true`` (what useStream sends for reconnectable runs) changes nothing: exact."""
    chunks, delay_s = 6, 0.03
    doc = node("join_chaos.mjs", server.url, "--runs", 4, "--cuts", 5, "--chunks", chunks, "--delay-s", delay_s,
               "--resumable")
    expected = local_events(chunks, delay_s)
    for run in doc["runs"]:
        check_exact(run, expected, set())
        assert run["on_run_created"] == {"run_id": run["run_id"], "thread_id": run["thread_id"]}
    assert doc["ok"]


def test_js_sdk_own_reconnect_after_network_cuts_is_exact(server: ServerProcess) -> None:
    """The SDK's built-in reconnect (``Location`` + ``Last-Event-ID``) after a clean EOF and 3 resets."""
    chunks, cuts, delay_s = 10, 3, 0.1
    doc = node("reconnect_chaos.mjs", server.url, "--runs", 3, "--cuts", cuts, "--chunks", chunks,
               "--delay-s", delay_s)
    expected = local_events(chunks, delay_s)
    for run in doc["runs"]:
        check_exact(run, expected, set())
        where = f"run {run['run_id']} (seed {doc['seed']})"
        conns = run["connections"]
        assert conns[0]["method"] == "POST" and conns[0]["cut"].startswith("eof"), f"{where}: {conns[0]}"
        assert [bool(c["cut"]) for c in conns[1:cuts + 1]] == [True] * cuts, f"{where}: not cut {cuts} times: {conns}"
        # every reconnect went to Location with the id of the last event the SDK had
        replay_ids = [e["id"] for e in run["replay"]]
        assert len(conns) >= cuts + 2, f"{where}: {conns}"
        for c in conns[1:]:
            assert c["method"] == "GET" and c["path"].startswith(f"/threads/{run['thread_id']}/runs/{run['run_id']}/stream"), c
            assert c["status"] == 200 and c["last_event_id"] in replay_ids, f"{where}: reconnect {c}"
        seen = [c["last_event_id"] for c in conns[1:]]
        assert [replay_ids.index(i) for i in seen] == sorted(replay_ids.index(i) for i in seen), seen
    assert doc["ok"]


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """API keys only: tenant acme and tenant globex, one member key each."""
    keys_file = Path(tempfile.mkdtemp(prefix="ts-js-keys-")) / "api_keys.json"
    keys = write_keys_file(keys_file, {"acme": {"tenant": "acme", "roles": ["member"]},
                                       "globex": {"tenant": "globex", "roles": ["member"]}})
    proc = start_server(*agent_flags({"chaos": "tests/js/sdk_graph.py:graph"}), env={
        "THOUGHTSTREAM_AUTH": "api_keys", "THOUGHTSTREAM_API_KEYS_FILE": str(keys_file)})
    try:
        yield proc, keys
    finally:
        proc.stop()


def test_js_sdk_api_key_cut_and_join_exact_and_tenants_apart(keyed_server: tuple[ServerProcess, dict[str, str]]) -> None:
    """``new Client({apiKey})`` (X-Api-Key): the chaos is exact; another tenant's thread is 404, no key 401."""
    server, keys = keyed_server
    chunks, delay_s = 4, 0.02
    doc = node("join_chaos.mjs", server.url, "--runs", 2, "--cuts", 5, "--chunks", chunks, "--delay-s", delay_s,
               "--api-key", keys["acme"])
    expected = local_events(chunks, delay_s)
    for run in doc["runs"]:
        check_exact(run, expected, set())
    t = node("tenants.mjs", server.url, "--api-key", keys["acme"], "--other-key", keys["globex"])
    own, other = t["own"], t["other"]
    assert own["stream"]["ok"] and own["stream"]["ended"], own["stream"]
    assert own["thread"] == {"ok": True, "value": t["thread_id"]}, own["thread"]
    assert own["run"] == {"ok": True, "value": "success"}, own["run"]
    assert own["join"]["ok"] and own["join"]["events"][0] == "metadata" and own["join"]["events"][-1] == "end", own["join"]
    assert own["search"] == {"ok": True, "value": True}, own["search"]
    for call in ("thread", "run", "state", "join"):
        assert other[call]["ok"] is False and other[call]["status"] == 404, f"globex {call} of acme's thread: {other[call]}"
    assert other["search"] == {"ok": True, "value": False}, other["search"]
    assert t["anonymous"]["thread"]["ok"] is False and t["anonymous"]["thread"]["status"] == 401, t["anonymous"]


@pytest.fixture(scope="module")
def topology() -> Iterator[tuple[RedisServer, dict[str, ServerProcess]]]:
    """Redis, two API processes (``--workers 0``) and one worker, all serving the chaos graph."""
    env = {"THOUGHTSTREAM_AGENTS": json.dumps(["chaos=tests/js/sdk_graph.py:graph"]),
           "THOUGHTSTREAM_WORKER_LEASE_S": "2"}  # a dead worker's run is taken over within seconds
    with redis_topology(["api1", "api2"], ["w1"], env) as (redis, procs):
        yield redis, procs


def test_js_stream_cut_and_join_stream_is_exact_redis(topology: tuple[RedisServer, dict[str, ServerProcess]]) -> None:
    """Over Redis: the stream on API 1, the joins taking turns on API 2 and API 1, the replay from API 2."""
    _, procs = topology
    chunks, delay_s = 6, 0.03
    doc = node("join_chaos.mjs", procs["api1"].url, "--runs", 6, "--cuts", 5, "--chunks", chunks,
               "--delay-s", delay_s, "--join-urls", procs["api2"].url)
    expected = local_events(chunks, delay_s)
    vias = set()
    for run in doc["runs"]:
        check_exact(run, expected, set())
        assert run["tail"] and run["tail"]["ended"] and run["tail"]["count"] == run["tail"]["want"], run["tail"]
        vias |= {s["via"] for s in run["segments"][1:]}
    assert vias == {0, 1}, vias
    assert doc["ok"]


def owner_of(api: ServerProcess, procs: dict[str, ServerProcess], run_id: str) -> ServerProcess:
    """The worker process executing the run (the native GET /runs/{id} names it)."""
    deadline = time.monotonic() + 10
    while True:
        snap = httpx.get(f"{api.url}/runs/{run_id}", timeout=5).json()
        if snap.get("worker") and snap.get("status") == "running":
            return next(p for name, p in procs.items()
                        if name.startswith("w") and p.proc is not None and f"-{p.proc.pid}-" in snap["worker"])
        assert time.monotonic() < deadline, snap
        time.sleep(0.02)


def test_js_worker_killed_mid_run_folds_to_an_uncrashed_stream(topology: tuple[RedisServer, dict[str, ServerProcess]]) -> None:
    """A second worker joins; the run's worker is SIGKILLed mid-subgraph while the JS SDK streams
    it through API 1. Its one stream carries a second metadata (attempt 2, rewind_to); folded,
    it is the graph's output, and API 2's replay is the same stream."""
    redis, procs = topology
    procs["w2"] = ServerProcess(command="worker", env=procs["w1"].env).start()
    wait_workers(redis, 2)
    chunks, delay_s = 10, 0.1
    argv = [NODE, str(JS / "worker_kill.mjs"), procs["api1"].url, "--replay-url", procs["api2"].url,
            "--chunks", str(chunks), "--delay-s", str(delay_s)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    owner, killed_after, result = None, None, None
    try:
        for line in proc.stdout:
            msg = json.loads(line)
            if "result" in msg:
                result = msg["result"]
                break
            if owner is None and msg["run_id"]:
                owner = owner_of(procs["api1"], procs, msg["run_id"])
            # kill it in the subgraph's work step, after its second chunk
            if (owner is not None and killed_after is None and msg["event"].startswith("custom|child")
                    and msg["data"].get("node") == "work" and msg["data"].get("i") == 1):
                owner.kill()
                killed_after = int(msg["id"])
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result is not None, f"no result from worker_kill.mjs: {proc.stderr.read()[-3000:]}"
    assert killed_after is not None, "the run ended before the kill"
    assert not result["errors"], result["errors"]
    assert result["status"] == "success" and result["ended"], (result["status"], result["ended"])
    meta = result["metadata"]
    assert [m["data"].get("attempt") for m in meta] == [1, 2], meta
    rewind_to = int(meta[1]["data"]["rewind_to"])
    assert rewind_to <= killed_after < int(meta[1]["id"]), (rewind_to, killed_after, meta[1])
    assert result["replay"] == result["raw"], "API 2's replay is not the stream the SDK got on API 1"
    expected = local_events(chunks, delay_s)
    assert shape(result["folded"]) == expected, (
        f"folded != uncrashed; killed after id {killed_after}, rewind_to {rewind_to}: "
        f"{[(e['id'], e['event'][:14]) for e in result['raw']]}")
    assert result["replay_folded"] == result["folded"]
    folded_ids = [int(e["id"]) for e in result["folded"]]
    assert folded_ids == sorted(set(folded_ids)), folded_ids
