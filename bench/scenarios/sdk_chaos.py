"""sdk-chaos: the official Python SDK cut and rejoined at random points: what is lost, doubled, reordered?

Both targets serve ``tests/js/sdk_graph.py:graph`` as assistant ``chaos`` (custom chunks,
updates and values from a parent and a subgraph, ~25 ms apart; deterministic, so every
run's events are known: the graph's own local ``astream(subgraphs=True)``). Per run, with
``langgraph_sdk`` (the client the users have): ``runs.stream(thread, "chaos",
stream_mode=[custom, updates, values], stream_subgraphs=True, on_disconnect="continue")``
is closed after a random number of events (1..8), then ``runs.join_stream(thread, run,
last_event_id=<the last id received>, ...)`` and closed again, ``--cuts`` times in all, and
a last join is read until the stream ends. What the client got (metadata and ``end``
aside) is compared with the graph's output: *missing* (expected, never received),
*duplicated* (received again), *reordered* (received before an event that precedes it),
*hangs* (a join that did not end within ``--join-timeout-s``).

Labels per target (all with ``stream_mode`` on the join, as the SDK documents):

* ``plain``: ``stream_resumable`` left false (the SDK's default);
* ``plain-nomode``: as ``plain``, the join without ``stream_mode`` (the run's modes);
* ``resumable``: ``stream_resumable=True`` (the official servers keep a replayable stream only then);
* ``resumable-nomode``: as ``resumable``, the join without ``stream_mode``.

On langgraph dev a non-resumable run's events carry no id, so the SDK can only rejoin
"from now" (``plain-nomode`` is that loss alone); the ``*-nomode`` labels take out its
reading of the SDKs' repeated ``stream_mode`` query (``stream_mode=custom&stream_mode=
updates&stream_mode=values`` keeps only the last mode); what ``resumable-nomode`` still
loses comes from its event ids (a millisecond timestamp plus ``-0``, shared by events
written within one millisecond: a join after the first of them skips the others;
``events_sharing_an_id`` counts them among the events received).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
import re
import sys
import time
from typing import Any

from tests.support import ROOT

from ..core import NotApplicable, Result, alternate, say
from ..procs import LangGraphDev, Ours

APPLIES = {"ours": None, "langgraph-dev": None,
           "raw": "the raw broadcaster speaks no LangGraph protocol (no threads, no join_stream)"}
DEFAULTS = {"runs": 20, "cuts": 5, "chunks": 8, "join_timeout_s": 20.0, "repeat": 1}
MODES = ["custom", "updates", "values"]
GRAPH = ROOT / "tests" / "js" / "sdk_graph.py"
DELAY_S = 0.025
MAX_GAP = 8
LABELS = {"plain": {"resumable": False, "join_modes": True},
          "plain-nomode": {"resumable": False, "join_modes": False},
          "resumable": {"resumable": True, "join_modes": True},
          "resumable-nomode": {"resumable": True, "join_modes": False}}
HEADLINE = ("missing", "duplicated", "reordered", "hangs", "exact_runs")


def local_events(chunks: int) -> list[tuple[str, str]]:
    """The graph's own stream for the runs' input: (event name without task ids, JSON data)."""
    spec = importlib.util.spec_from_file_location("bench_sdk_graph", GRAPH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # get_type_hints finds the module's globals there
    spec.loader.exec_module(module)

    async def collect() -> list[tuple[str, str]]:
        return [("|".join([mode, *(seg.split(":")[0] for seg in ns)]), canon(data)) async for ns, mode, data in
                module.graph.astream({"chunks": chunks, "delay_s": DELAY_S}, stream_mode=MODES, subgraphs=True)]

    return asyncio.run(collect())


def canon(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def key(part: Any) -> tuple[str, str]:
    return re.sub(r":[^|]*", "", part.event), canon(part.data)


async def read_some(gen_factory, limit: float, timeout: float) -> dict:
    """Read an SDK stream until ``limit`` parts (then close it: the cut) or its end; a timeout is a hang."""
    parts, cut, hung, error = [], False, False, None
    gen = gen_factory()
    try:
        async with contextlib.aclosing(gen), asyncio.timeout(timeout):
            async for part in gen:
                parts.append(part)
                if len(parts) >= limit and part.event != "end":
                    cut = True
                    break
    except TimeoutError:
        hung = True
    except Exception as exc:  # noqa: BLE001 - what the SDK raised is the measurement
        error = f"{type(exc).__name__}: {exc}"[:300]
    return {"parts": parts, "cut": cut, "hung": hung, "error": error}


async def one_run(client, rnd: random.Random, *, chunks: int, cuts: int, timeout: float, resumable: bool,
                  join_modes: bool) -> dict:
    thread = await client.threads.create()
    tid = thread["thread_id"]
    created: dict = {}
    segs = [await read_some(lambda: client.runs.stream(
        tid, "chaos", input={"chunks": chunks, "delay_s": DELAY_S}, stream_mode=MODES, stream_subgraphs=True,
        stream_resumable=resumable, on_disconnect="continue", on_run_created=lambda m: created.update(m)),
        rnd.randint(1, MAX_GAP), timeout)]
    run_id = created.get("run_id") or next(
        (p.data.get("run_id") for p in segs[0]["parts"] if p.event == "metadata"), None)
    if run_id is None:
        return {"segments": segs, "error": "no run id"}
    last = next((p.id for p in reversed(segs[0]["parts"]) if p.id), None)
    n = 1
    while segs[-1]["cut"]:
        limit = rnd.randint(1, MAX_GAP) if n < cuts else float("inf")
        segs.append(await read_some(lambda: client.runs.join_stream(
            tid, run_id, last_event_id=last, stream_mode=MODES if join_modes else None), limit, timeout))
        last = next((p.id for p in reversed(segs[-1]["parts"]) if p.id), last)
        n += 1
    return {"run_id": run_id, "segments": segs, "error": next((s["error"] for s in segs if s["error"]), None)}


def score(run: dict, expected: list[tuple[str, str]]) -> dict:
    got = [key(p) for s in run["segments"] for p in s["parts"] if p.event not in ("metadata", "end")]
    index = {k: i for i, k in enumerate(expected)}
    firsts, seen = [], set()
    for k in got:
        if k not in seen and k in index:
            firsts.append(index[k])
        seen.add(k)
    missing = sum(1 for k in expected if k not in seen)
    duplicated = len(got) - len(set(got))
    reordered = sum(1 for a, b in zip(firsts, firsts[1:]) if b < a)
    hangs = sum(1 for s in run["segments"] if s["hung"])
    unknown = sum(1 for k in set(got) if k not in index)
    # two events under one id: a join after the first of them cannot get the second
    ids = [p.id for s in run["segments"] for p in s["parts"] if p.id]
    shared_ids = len(ids) - len(set(ids)) - duplicated
    return {"missing": missing, "duplicated": duplicated, "reordered": reordered, "hangs": hangs, "unknown": unknown,
            "shared_ids": max(0, shared_ids), "joins": len(run["segments"]) - 1, "cuts": sum(1 for s in run["segments"] if s["cut"]),
            "received": len(got), "ended_with_end": bool(run["segments"][-1]["parts"]) and
            run["segments"][-1]["parts"][-1].event == "end", "error": run.get("error")}


def trial(url: str, label: str, *, runs: int, cuts: int, chunks: int, timeout: float, seed: int,
          expected: list[tuple[str, str]], name: str) -> dict:
    from langgraph_sdk import get_client

    rnd = random.Random(seed)

    async def go() -> list[dict]:
        client = get_client(url=url, api_key=None)
        out = []
        for _ in range(runs):
            out.append(score(await one_run(client, rnd, chunks=chunks, cuts=cuts, timeout=timeout,
                                           **LABELS[label]), expected))
        return out

    t0 = time.monotonic()
    scored = asyncio.run(go())
    m = {
        "runs": runs, "expected_per_run": len(expected),
        "cuts": sum(s["cuts"] for s in scored), "joins": sum(s["joins"] for s in scored),
        "received": sum(s["received"] for s in scored),
        "missing": sum(s["missing"] for s in scored), "duplicated": sum(s["duplicated"] for s in scored),
        "reordered": sum(s["reordered"] for s in scored), "hangs": sum(s["hangs"] for s in scored),
        "unknown_events": sum(s["unknown"] for s in scored),
        "events_sharing_an_id": sum(s["shared_ids"] for s in scored),
        "exact_runs": sum(1 for s in scored if not (s["missing"] or s["duplicated"] or s["reordered"] or s["hangs"]
                                                     or s["unknown"] or s["error"])),
        "runs_losing_events": sum(1 for s in scored if s["missing"]),
        "runs_ending_with_end": sum(1 for s in scored if s["ended_with_end"]),
        "missing_pct": round(100 * sum(s["missing"] for s in scored) / (runs * len(expected)), 2),
        "wall_s": round(time.monotonic() - t0, 1),
        "errors": [s["error"] for s in scored if s["error"]][:5],
    }
    say(f"{name:38s} exact {m['exact_runs']}/{runs} missing={m['missing']} ({m['missing_pct']}%) dup={m['duplicated']} "
        f"reordered={m['reordered']} hangs={m['hangs']} cuts={m['cuts']} joins={m['joins']} {m['wall_s']}s")
    return m


def start(ctx, name: str):
    spec = str(GRAPH.relative_to(ROOT)) + ":graph"
    if name == "ours":
        t = Ours(agent=f"chaos={spec}")
    elif name == "langgraph-dev":
        t = LangGraphDev(ctx.install_langgraph, graphs={"chaos": f"{GRAPH}:graph"})
    else:
        raise NotApplicable(f"sdk-chaos: no target {name}")
    ctx.stack.callback(t.stop)
    return t


def run(ctx) -> Result:
    expected = local_events(ctx.chunks)
    if len(set(expected)) != len(expected):
        raise RuntimeError("the chaos graph's events are not unique: scoring by content needs them to be")
    res = Result("sdk-chaos", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    seed = random.randrange(2**31)
    res.config["seed"] = seed
    res.config["expected_events_per_run"] = len(expected)
    urls = {name: start(ctx, name).url for name in ctx.targets}
    labels = [f"{t}/{mode}" for t in ctx.targets for mode in LABELS]
    runs = alternate(labels, ctx.repeat, lambda label, rep: trial(
        urls[label.split("/")[0]], label.split("/")[1], runs=ctx.runs, cuts=ctx.cuts, chunks=ctx.chunks,
        timeout=ctx.join_timeout_s, seed=seed + rep, expected=expected, name=f"{label} #{rep + 1}"))
    res.record(runs, HEADLINE, {})
    for label, m in res.measured.items():
        res.checks[f"{label} exact (nothing missing, duplicated, reordered; no hang)"] = (
            m["missing"] == m["duplicated"] == m["reordered"] == m["hangs"] == m["unknown_events"] == 0
            and m["exact_runs"] == m["runs"])
    res.notes.append("missing/duplicated/reordered/hangs are totals over all runs of a trial (medians over "
                     "--repeat trials); expected_per_run events per run (metadata and end not counted).")
    return res
