"""LangGraph-protocol chaos (issue 12, "Must show"): the official Python SDK cutting and resuming.

With the real ``langgraph_sdk`` client against real server processes, on the deterministic
``lg_chaos`` graph (tests/fixtures/lg_chaos_graph.py: a subgraph, custom chunks, a streaming
chat model, ~2 s a run):

* embedded default: 20 runs, 5 at a time, each ``client.runs.stream(...)`` with several stream
  modes and ``stream_subgraphs=True``; the client abandons the stream after a random number of
  events or a random time (possibly mid-frame: the SDK's generator is closed, so is its httpx
  response), then ``client.runs.join_stream(..., last_event_id=<the id of the last part it
  got>)``, 5 cuts a run, the 6th connection read to ``end``. The concatenation must equal the
  same run joined from the start (``last_event_id="-1"``) once it ended — zero missing,
  duplicated, reordered or altered events, one ``end``, last — and that replay must equal an
  uncut stream of the same graph (up to the ids that differ per run);
* Redis, two API processes and one worker: the same chaos, each reconnect going to the other
  API process;
* Redis, a second worker started, the run's worker SIGKILLed mid-run: the stream the SDK sees
  carries a second ``metadata`` (attempt 2, ``rewind_to``); folded over it (what an earlier
  attempt sent after ``rewind_to`` is dropped) it equals an uncrashed run's stream.

The SDK's StreamPart carries the SSE ``id`` (langgraph_sdk >= 0.2: ``StreamPart.id``), so
cuts resume from the id the client saw, exactly as the SDK's own reconnect does. Every HTTP
request the SDK makes is counted: a stream the server closed before ``end`` would make the
SDK reconnect on its own, which would hide a server bug, so there must be none.

The numbers are printed (pytest -s) and kept in test-output/lg_chaos.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from tests.support import ROOT, RedisServer, ServerProcess, redis_topology, wait_workers

from .conftest import agent_flags, start_server

AGENT = "lg_chaos"
AGENTS = {AGENT: "tests/fixtures/lg_chaos_graph.py:graph"}
MODES = ["values", "updates", "custom", "messages-tuple"]
TOPIC = "tides"
PACE = 1.5  # ~2 s a run: most cuts land mid-run
INPUT = {"topic": TOPIC, "pace": PACE}
REPLY = f"Here is what I found about {TOPIC}: three sources, one summary, all in order."

RUNS = 20
CUTS = 5  # per run; the 6th connection reads to the end
CONCURRENT = 5
OUTPUT = ROOT / "test-output" / "lg_chaos.json"
SERVER_ENV = {"THOUGHTSTREAM_SSE_PING_S": "1"}
REDIS_ENV = {**SERVER_ENV, "THOUGHTSTREAM_WORKER_LEASE_S": "2"}

# Run ids (ours are 32 hex digits), thread, task and checkpoint ids (UUIDs).
UUID = re.compile(r"\b(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})\b", re.I)
RANDOM_KEYS = {"created_at", "updated_at", "timestamp", "ts"}


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Ev:
    """One SSE event as the SDK handed it over (a StreamPart)."""

    id: str | None
    event: str
    data: Any

    @classmethod
    def of(cls, part: Any) -> Ev:
        return cls(part.id, part.event, part.data)

    @property
    def seq(self) -> float:
        """The id as a number. Ours: the log's seq, or ``<seq-1>.<k>`` for all but the last of
        the frames one log event gives (8 < 8.1 < 8.2 < 9); the official servers' are
        Redis-stream-like strings."""
        assert self.id is not None and re.fullmatch(r"\d+(?:\.[1-9]\d*)?", self.id), f"event without a numeric id: {self}"
        return float(self.id)


def normalise(value: Any) -> Any:
    """What legitimately differs between two runs of the same input removed: run, thread,
    task and checkpoint ids (UUIDs wherever they occur, event names included), timestamps."""
    if isinstance(value, str):
        return UUID.sub("<uuid>", value)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in RANDOM_KEYS}
    return value


def comparable(events: list[Ev]) -> list[tuple[str, str]]:
    return [(normalise(e.event), json.dumps(normalise(e.data), sort_keys=True)) for e in events]


def fold(events: list[Ev]) -> list[Ev]:
    """The stream a client keeps over a resumed attempt: a ``metadata`` with ``rewind_to``
    drops what the earlier attempt sent after that id (and is itself bookkeeping)."""
    out: list[Ev] = []
    for e in events:
        if e.event == "metadata" and isinstance(e.data, dict) and e.data.get("rewind_to") is not None:
            out = [x for x in out if x.seq <= float(e.data["rewind_to"])]
            continue
        out.append(e)
    return out


def analyse(got: list[Ev], ref: list[Ev]) -> dict[str, int]:
    """Missing, duplicated, reordered and altered events of ``got`` against the same run's
    replay, by event id."""
    ids = [e.seq for e in got]
    ref_by_id = {e.seq: e for e in ref}
    return {
        "missing": len(set(ref_by_id) - set(ids)),
        "duplicated": len(ids) - len(set(ids)),
        "reordered": sum(1 for a, b in zip(ids, ids[1:]) if b < a),
        "altered": sum(1 for e in got if e.seq in ref_by_id and ref_by_id[e.seq] != e),
        "unexpected": sum(1 for e in got if e.seq not in ref_by_id),
    }


def analyse_content(got: list[Ev], clean: list[Ev]) -> dict[str, int]:
    """Missing, duplicated and reordered events of ``got`` against an uncut stream of the same
    graph, by content (normalised): for any server, whatever its ids. Each delivered event
    takes the first unused equal event of the uncut stream; a descent in those positions is
    a reordering, an event with none left a duplicate, what is never taken is missing."""
    where: dict[tuple[str, str], list[int]] = {}
    for index, row in enumerate(comparable(clean)):
        where.setdefault(row, []).append(index)
    positions, duplicated = [], 0
    for row in comparable(got):
        if where.get(row):
            positions.append(where[row].pop(0))
        else:
            duplicated += 1
    return {"missing": sum(len(v) for v in where.values()), "duplicated": duplicated,
            "reordered": sum(1 for a, b in zip(positions, positions[1:]) if b < a)}


def assert_well_formed(events: list[Ev], run_id: str, thread_id: str, *, attempts: int = 1) -> None:
    """First ``metadata`` of this run, ids strictly increasing, one ``end`` (data null), last."""
    assert events, "no events"
    first = events[0]
    assert first.event == "metadata", events[:3]
    assert first.data["run_id"] == run_id and first.data["thread_id"] == thread_id, first
    assert first.data.get("attempt", 1) == 1, first
    ids = [e.seq for e in events]
    assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"
    assert [e.event for e in events].count("end") == 1 and events[-1].event == "end", events[-3:]
    assert events[-1].data is None, events[-1]
    assert not [e for e in events if e.event == "error"], [e for e in events if e.event == "error"]
    metas = [e for e in events if e.event == "metadata"]
    assert len(metas) == attempts, metas


def assert_graph_stream(events: list[Ev]) -> None:
    """The stream of one lg_chaos run has what the graph produced, in order, in every mode
    asked for, subgraph events included (so a degenerate stream cannot pass the chaos)."""
    names = [normalise(e.event) for e in events]
    sub = "research:<uuid>"
    for name in ("values", "updates", "custom", "messages", f"values|{sub}", f"updates|{sub}", f"custom|{sub}"):
        assert name in names, f"no {name!r} event in {Counter(names)}"
    custom = [(normalise(e.event), e.data) for e in events if e.event.startswith("custom")]
    assert custom == [
        *[("custom", {"ns": "THOUGHT", "text": f"planning {TOPIC}: step {i}"}) for i in range(3)],
        *[(f"custom|{sub}", {"ns": "TOOL_USE", "tool": "search", "input": f"{TOPIC} #{i}"}) for i in range(3)],
        (f"custom|{sub}", {"ns": "THOUGHT", "text": "summarizing 3 findings"}),
    ], custom
    chunks = [e.data for e in events if e.event == "messages"]
    assert all(isinstance(c, list) and len(c) == 2 for c in chunks), chunks[:2]
    assert "".join(c[0]["content"] for c in chunks) == REPLY
    assert {c[1].get("langgraph_node") for c in chunks} == {"answer"}, chunks[0][1]
    assert [e.data["plan"] for e in events if e.event == "updates" and "plan" in e.data] == [
        {"notes": [f"plan for {TOPIC}"]}]
    last_values = [e.data for e in events if e.event == "values"][-1]
    assert last_values["answer"] == REPLY and last_values["notes"] == [f"plan for {TOPIC}"], last_values
    assert last_values["findings"] == [f"source {i} on {TOPIC}" for i in range(3)] + ["summary"]


# ----------------------------------------------------------------------------- clients


@dataclass
class Sdk:
    """An official SDK client, with a count of the HTTP requests it makes by kind."""

    url: str
    client: LangGraphClient = field(init=False)
    requests: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.client = get_client(url=self.url, api_key=None, timeout=httpx.Timeout(30.0, connect=5.0))

        async def count(request: httpx.Request) -> None:
            path = request.url.path
            kind = ("create_stream" if request.method == "POST" and path.endswith("/runs/stream")
                    else "join_stream" if request.method == "GET" and path.endswith("/stream")
                    else f"{request.method} other")
            self.requests[kind] += 1

        self.client.http.client.event_hooks["request"].append(count)

    async def aclose(self) -> None:
        await self.client.aclose()


@contextlib.asynccontextmanager
async def sdks(*urls: str) -> AsyncIterator[list[Sdk]]:
    made = [Sdk(u) for u in urls]
    try:
        yield made
    finally:
        for s in made:
            await s.aclose()


async def read_all(stream: AsyncIterator[Any], timeout: float = 60) -> list[Ev]:
    out: list[Ev] = []
    async with asyncio.timeout(timeout):
        async for part in stream:
            out.append(Ev.of(part))
    return out


async def uncut(sdk: Sdk, *, strict: bool = True) -> tuple[str, str, list[Ev]]:
    """One run streamed without a cut: (thread_id, run_id, events)."""
    thread = await sdk.client.threads.create()
    events = await read_all(sdk.client.runs.stream(
        thread["thread_id"], AGENT, input=INPUT, stream_mode=MODES, stream_subgraphs=True))
    run_id = events[0].data["run_id"]
    if strict:
        assert_well_formed(events, run_id, thread["thread_id"])
        assert_graph_stream(events)
    return thread["thread_id"], run_id, events


async def replay(sdk: Sdk, thread_id: str, run_id: str) -> list[Ev]:
    """The finished run joined from the start."""
    return await read_all(sdk.client.runs.join_stream(thread_id, run_id, last_event_id="-1", stream_mode=MODES))


# ----------------------------------------------------------------------------- chaos


@dataclass
class Follow:
    thread_id: str
    resumable: bool
    run_id: str = ""
    received: list[Ev] = field(default_factory=list)
    cuts: int = 0
    live_cuts: int = 0  # cuts after which the run was still pending or running
    by_time: int = 0  # cuts by a timer (possibly mid-frame) rather than after N events
    empty_connections: int = 0  # connections cut before they delivered anything
    apis: list[int] = field(default_factory=list)  # the API process of each connection
    failure: str | None = None  # measure mode: how following the run failed


class StreamClosedEarly(AssertionError):
    pass


async def take(stream: AsyncIterator[Any], into: list[Ev], *, count: int | None,
               seconds: float | None, strict: bool) -> bool:
    """Read parts until ``count`` of them, ``seconds``, or ``end``; then abandon the stream
    (closing the SDK's generator closes its httpx response). True when the run's stream is
    over: ``end`` came (or, measuring a server that sends no ``end``, the stream closed)."""
    taken = 0
    try:
        async with asyncio.timeout(seconds if seconds is not None else 30):
            async for part in stream:
                into.append(Ev.of(part))
                taken += 1
                if into[-1].event == "end":
                    return True
                if count is not None and taken >= count:
                    return False
            if strict:
                raise StreamClosedEarly(f"the stream closed without an end event after {into[-3:]}")
            return True
    except TimeoutError:
        if seconds is None:
            raise
        return False
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def follow_with_chaos(apis: list[Sdk], first_api: int, rng: random.Random, *,
                            strict: bool = True, join_modes: list[str] | None = MODES) -> Follow:
    """Create a run with runs.stream, cut CUTS times at random, resume each time with
    join_stream(last_event_id=...) on the next API process, read the last piece to ``end``."""
    thread = await apis[first_api].client.threads.create()
    out = Follow(thread["thread_id"], resumable=rng.random() < 0.5)
    created: list[str] = []
    for connection in range(CUTS + 1):
        api_index = (first_api + connection) % len(apis)
        sdk = apis[api_index]
        out.apis.append(api_index)
        final = connection == CUTS
        # The first piece must hold the metadata (the run id); the others may be empty.
        by_time = not final and connection > 0 and rng.random() < 0.4
        count = None if final or by_time else rng.randint(1, 6)
        seconds = rng.uniform(0.0, 0.25) if by_time else None
        if connection == 0:
            stream = sdk.client.runs.stream(
                out.thread_id, AGENT, input=INPUT, stream_mode=MODES, stream_subgraphs=True,
                # Half say on_disconnect="continue", half rely on it being the default.
                on_disconnect="continue" if rng.random() < 0.5 else None, stream_resumable=out.resumable,
                on_run_created=lambda meta: created.append(str(meta["run_id"])))
        else:
            assert out.received, "no event with an id to resume from"
            stream = sdk.client.runs.join_stream(
                out.thread_id, out.run_id, last_event_id=out.received[-1].id, stream_mode=join_modes)
        before = len(out.received)
        ended = await take(stream, out.received, count=count, seconds=seconds, strict=strict)
        if connection == 0:
            assert out.received and out.received[0].event == "metadata", out.received[:2]
            out.run_id = out.received[0].data["run_id"]
            assert created == [out.run_id], (created, out.received[0])
        if ended:
            return out
        assert not final
        out.cuts += 1
        out.by_time += by_time
        out.empty_connections += len(out.received) == before
        run = await sdk.client.runs.get(out.thread_id, out.run_id)
        out.live_cuts += run["status"] in ("pending", "running")
    return out


async def chaos(apis: list[Sdk], seed: int, *, strict: bool = True,
                join_modes: list[str] | None = MODES) -> dict[str, Any]:
    """RUNS runs, CONCURRENT at a time, each followed with chaos. Strict (our server): every
    run must equal its replay from -1 exactly (ids included), the replay an uncut stream.
    Measuring (another server): count what each run's pieces lost, repeated or reordered
    against an uncut stream, by content. Returns the numbers."""
    master = random.Random(seed)
    _, _, clean = await uncut(apis[0], strict=strict)
    requests_before = sum((s.requests for s in apis), Counter())
    limit = asyncio.Semaphore(CONCURRENT)

    async def one(index: int) -> Follow:
        rng = random.Random(master.random())
        async with limit:
            if strict:
                return await follow_with_chaos(apis, index % len(apis), rng, join_modes=join_modes)
            try:
                return await follow_with_chaos(apis, index % len(apis), rng, strict=False, join_modes=join_modes)
            except Exception as exc:  # measuring: a hang or an error is one of the numbers
                f = Follow("", resumable=False)
                f.failure = f"{type(exc).__name__}: {exc}"[:200]
                return f

    async with asyncio.timeout(150):
        follows = await asyncio.gather(*(one(i) for i in range(RUNS)))
    requests = sum((s.requests for s in apis), Counter()) - requests_before

    totals: Counter[str] = Counter()
    by_resumable = {True: Counter(), False: Counter()}
    for f in follows:
        if f.failure:
            totals["failed_runs"] += 1
            continue
        content = analyse_content(f.received, clean)
        totals.update({f"{k}_by_content": v for k, v in content.items()})
        by_resumable[f.resumable].update(content)
        by_resumable[f.resumable]["runs"] += 1
        totals["events"] += len(f.received)
        for key in ("cuts", "live_cuts", "by_time", "empty_connections"):
            totals[key] += getattr(f, key)
        if not strict:
            totals["runs_exact"] += content == dict.fromkeys(content, 0)
            continue
        ref = await replay(apis[-1], f.thread_id, f.run_id)
        assert_well_formed(ref, f.run_id, f.thread_id)
        assert comparable(ref) == comparable(clean), (
            f"seed {seed}: run {f.run_id} replayed from -1 differs from an uncut stream of the same graph")
        report = analyse(f.received, ref)
        totals.update(report)
        assert report == dict.fromkeys(report, 0), f"seed {seed}, run {f.run_id}: {report} over {f.cuts} cuts"
        assert f.received == ref, f"seed {seed}, run {f.run_id}"
        assert content == dict.fromkeys(content, 0), content
        totals["runs_exact"] += 1
        run = await apis[0].client.runs.get(f.thread_id, f.run_id)
        assert run["status"] == "success", run

    numbers = {
        "seed": seed, "join_stream_mode": join_modes, "runs": RUNS, "runs_exact": totals["runs_exact"], "failed_runs": totals["failed_runs"],
        "cuts_planned": RUNS * CUTS, "cuts": totals["cuts"],
        "cuts_mid_run": totals["live_cuts"], "cuts_by_timer": totals["by_time"],
        "empty_connections": totals["empty_connections"], "events": totals["events"],
        "events_per_run": len(clean),
        "missing": totals["missing_by_content"], "duplicated": totals["duplicated_by_content"],
        "reordered": totals["reordered_by_content"],
        # Stream requests the SDK made: one runs.stream a run, one join_stream a cut. More
        # would be the SDK reconnecting by itself after the server closed a stream early.
        "create_stream_requests": requests["create_stream"], "join_stream_requests": requests["join_stream"],
        "stream_resumable": {str(k).lower(): dict(v) for k, v in by_resumable.items()},
    }
    if strict:
        numbers.update({f"{k}_by_id": totals[k] for k in ("missing", "duplicated", "reordered", "altered",
                                                          "unexpected")})
        assert requests["create_stream"] == RUNS, numbers
        assert requests["join_stream"] == totals["cuts"], numbers
        # The chaos is real: nearly every planned cut happened, most of them mid-run.
        assert totals["cuts"] >= 0.9 * RUNS * CUTS, numbers
        assert totals["live_cuts"] >= totals["cuts"] // 2, numbers
    return numbers


def record(key: str, value: dict[str, Any]) -> None:
    """Keep a measurement in test-output/lg_chaos.json (merged with the other keys there)."""
    OUTPUT.parent.mkdir(exist_ok=True)
    try:
        data = json.loads(OUTPUT.read_text())
    except (OSError, ValueError):
        data = {}
    data[key] = {**value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    OUTPUT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n[lg_chaos] {key}: {json.dumps(value)}")


def chaos_seed() -> int:
    return int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))


# ----------------------------------------------------------------------------- embedded default


@pytest.fixture
def embedded() -> Iterator[ServerProcess]:
    server = start_server(*agent_flags(AGENTS), env=SERVER_ENV)
    try:
        yield server
    finally:
        server.stop()


async def test_sdk_stream_cut_and_join_stream_is_exact_embedded(embedded: ServerProcess) -> None:
    """20 runs x 5 cuts with runs.stream + join_stream(last_event_id): zero missing,
    duplicated, reordered; each equals its replay from -1, which equals an uncut stream."""
    seed = chaos_seed()
    async with sdks(embedded.url) as apis:
        numbers = await chaos(apis, seed)
    record("embedded", numbers)


FRAME_END = re.compile(rb"\n\n")
FRAME_ID = re.compile(rb"(?m)^id: ?(\S+?)\r?$")
END_EVENT = re.compile(rb"(?m)^event: ?end\r?$")
PROXY_PACE = 10.0  # ~12 s a run: three cuts, each followed by the SDK's >= 1 s reconnect delay, fit in it


class CuttingProxy:
    """A TCP proxy in front of the server that cuts the first ``per_thread`` stream responses
    of each thread (runs.stream and the SDK's own reconnects to its Location) while the run
    is still going, possibly mid-frame, as a proxy timeout or a restart does.

    Where: each armed response first lets 1-2 whole SSE frames through (so the SDK has an id
    to resume from), then is cut at a random byte of the frames it goes on to relay — bytes
    the proxy has actually seen, so the cut cannot fall past the stream's end. A frame that
    follows a ``<seq-1>.<k>`` frame is preferred, so the SDK often resumes from inside one
    log event's group of frames (``Last-Event-ID: N.k``); when the response has shown such
    ids but the chunk at hand has no such frame, the cut waits at most two more chunks for
    one. A response whose ``end`` arrives before its cut is not cut (a cut then would test
    nothing); with the graph slowed (``PROXY_PACE``) that does not happen."""

    def __init__(self, upstream_port: int, rng: random.Random, per_thread: int = 3) -> None:
        self.upstream_port = upstream_port
        self.rng = rng
        self.per_thread = per_thread
        self.armed: Counter[str] = Counter()
        self.cuts: Counter[str] = Counter()  # responses really cut (before their end event), by thread
        self.resumed_from: dict[str, list[str | None]] = {}  # the Last-Event-ID of each reconnect, by thread
        self.mid_frame = 0  # cuts inside a frame (not on a frame boundary)
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._relay(creader, cwriter)
        except asyncio.CancelledError:
            pass  # the proxy closing: its connections go with it
        finally:
            self.handlers.discard(task)

    def _cut_at(self, armed: dict[str, Any], chunk_start: int) -> int | None:
        """Where to cut the armed response, now that its body reaches ``len(body)``: an
        offset into the body (>= chunk_start: earlier bytes are sent), or None (not yet)."""
        body: bytes = armed["body"]
        ends = [m.end() for m in FRAME_END.finditer(body)]
        if len(ends) < armed["let_through"]:
            return None
        start = max(ends[armed["let_through"] - 1], chunk_start)
        if start >= len(body):
            return None
        # The frames (or their unsent parts) in [start, len(body)), each with whether the
        # frame before it carried a dotted id.
        bounds = [0, *ends]
        segments = []
        for i, lo in enumerate(bounds):
            hi = bounds[i + 1] if i + 1 < len(bounds) else len(body)
            lo, hi = max(lo, start), min(hi, len(body))
            if lo < hi:
                prev = FRAME_ID.findall(body[bounds[i - 1]:bounds[i]]) if i > 0 else []
                segments.append((lo, hi, bool(prev) and b"." in prev[-1]))
        preferred = [s for s in segments if s[2]]
        if not preferred and armed["dotted"] and armed["waited"] < 2:
            armed["waited"] += 1
            return None
        lo, hi, _ = self.rng.choice(preferred or segments)
        cut = self.rng.randrange(lo, hi)
        self.mid_frame += cut not in ends
        return cut

    async def _relay(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        armed: dict[str, Any] = {}  # the response being cut
        request_thread: list[str] = []

        async def upstream() -> None:
            while data := await creader.read(65536):
                m = re.search(rb"^(GET|POST) /threads/([^/ ]+)/runs/[^ ]*stream[ ?]", data, re.M)
                if m:
                    tid = m.group(2).decode()
                    if m.group(1) == b"GET":
                        header = re.search(rb"(?mi)^last-event-id: ?(\S+)\r?$", data)
                        self.resumed_from.setdefault(tid, []).append(header.group(1).decode() if header else None)
                    if self.armed[tid] < self.per_thread:
                        self.armed[tid] += 1
                        request_thread[:] = [tid]
                        armed.update(head=b"", body=None, let_through=self.rng.randint(1, 2), dotted=False,
                                     waited=0)
                uwriter.write(data)
                await uwriter.drain()

        async def downstream() -> None:
            while data := await ureader.read(65536):
                if armed:
                    if armed["body"] is None:  # still in the response's headers
                        armed["head"] += data
                        head = armed["head"].find(b"\r\n\r\n")
                        if head >= 0:
                            armed["body"] = armed["head"][head + 4:]
                            chunk_start = 0
                    else:
                        chunk_start = len(armed["body"])
                        armed["body"] += data
                    if armed["body"] is not None:
                        body = armed["body"]
                        if END_EVENT.search(body):
                            armed.clear()  # the run ended before the cut: let it through
                        else:
                            armed["dotted"] = armed["dotted"] or any(b"." in i for i in FRAME_ID.findall(body))
                            cut = self._cut_at(armed, chunk_start)
                            if cut is not None:
                                keep = len(data) - (len(body) - cut)
                                cwriter.write(data[:max(keep, 0)])
                                await cwriter.drain()
                                self.cuts[request_thread[0]] += 1
                                return  # cut: both sides closed below
                cwriter.write(data)
                await cwriter.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (cwriter, uwriter):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()


async def test_sdk_own_reconnect_through_a_cutting_proxy_is_exact(embedded: ServerProcess) -> None:
    """The SDK's built-in resume, unchanged: a proxy cuts each run's stream 3 times while the
    run goes on (the graph slowed to ~12 s so the SDK's reconnect delays fit); the SDK
    reconnects to the Location it was given with Last-Event-ID and no query (so the run's own
    stream_mode and stream_subgraphs must apply). What runs.stream yields equals the run's
    replay in those modes. A third of the runs stream every mode with subgraphs, a third only
    updates and custom of the root graph, a third add ``events`` (two frames per custom or
    message chunk: ids ``N.1`` and ``N+1``), so the SDK resumes from inside a group."""
    seed = chaos_seed()
    events_modes = ["updates", "custom", "messages-tuple", "events"]
    variants = [(MODES, True), (["updates", "custom"], False), (events_modes, True)]
    runs = 6
    slow = {**INPUT, "pace": PROXY_PACE}
    async with CuttingProxy(embedded.port, random.Random(seed)) as proxy, \
            sdks(proxy.url, embedded.url) as (through, direct):

        async def one(index: int) -> tuple[str, list[str], bool, list[Ev]]:
            modes, subgraphs = variants[index % len(variants)]
            thread = await through.client.threads.create()
            stream = through.client.runs.stream(
                thread["thread_id"], AGENT, input=slow, stream_mode=modes, stream_subgraphs=subgraphs,
                on_disconnect="continue")
            return thread["thread_id"], modes, subgraphs, await read_all(stream, timeout=90)

        results = await asyncio.gather(*(one(i) for i in range(runs)))
        totals: Counter[str] = Counter()
        for tid, modes, subgraphs, got in results:
            run_id = got[0].data["run_id"]
            ref = await read_all(direct.client.runs.join_stream(tid, run_id, last_event_id="-1", stream_mode=modes))
            if not subgraphs:
                ref = [e for e in ref if "|" not in e.event]
            assert_well_formed(ref, run_id, tid)
            if modes == MODES:
                assert_graph_stream(ref)
            report = analyse(got, ref)
            totals.update(report)
            names = Counter(normalise(e.event) for e in ref)
            names.subtract(Counter(normalise(e.event) for e in got))
            assert report == dict.fromkeys(report, 0), (
                f"seed {seed}, run {run_id} (stream_mode={modes}, stream_subgraphs={subgraphs}): {report}; "
                f"events the replay has more (-: fewer) of than the SDK's stream: {+names} / {-names}; "
                f"the SDK resumed from {proxy.resumed_from.get(tid)}")
            assert got == ref, f"seed {seed}, run {run_id}"
        cuts = dict(proxy.cuts)
        resumed_from = dict(proxy.resumed_from)
        reconnects = through.requests["join_stream"]
    dotted = sum(1 for ids in resumed_from.values() for i in ids if i and "." in i)
    numbers = {"seed": seed, "runs": runs, "proxy_cuts": sum(cuts.values()), "sdk_reconnects": reconnects,
               "reconnects_from_a_dotted_id": dotted, "mid_frame_cuts": proxy.mid_frame,
               "events": sum(len(r[-1]) for r in results), **{k: totals[k] for k in (
                   "missing", "duplicated", "reordered", "altered", "unexpected")}}
    record("embedded_sdk_reconnect", numbers)
    # Every run's stream was cut 3 times before its end (its first stream and two reconnects),
    # and the SDK reconnected once per cut, never else (a stream the server closed early
    # would make it reconnect more), each time with the id of the last frame it got.
    assert cuts == {tid: proxy.per_thread for tid, *_ in results}, (numbers, cuts)
    assert reconnects == sum(cuts.values()), numbers
    assert proxy.mid_frame >= sum(cuts.values()) // 3, numbers  # a random byte of a frame: mostly inside it
    for tid, modes, _, got in results:
        assert len(resumed_from[tid]) == proxy.per_thread and None not in resumed_from[tid], resumed_from[tid]
        assert set(resumed_from[tid]) <= {e.id for e in got}, (resumed_from[tid], [e.id for e in got])
        if modes == events_modes:
            assert any("." in i for i in resumed_from[tid]), (
                f"seed {seed}: no reconnect of the events run resumed from inside a group: {resumed_from[tid]}")


# ----------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def topology(request: pytest.FixtureRequest) -> Iterator[tuple[RedisServer, dict[str, ServerProcess]]]:
    """A durable redis-server (or a local Redis Cluster: 3 masters, 3 replicas), two API
    processes and one worker (a test may add a second)."""
    env = {**REDIS_ENV, "THOUGHTSTREAM_AGENTS": json.dumps([f"{k}={v}" for k, v in AGENTS.items()])}
    with redis_topology(["api1", "api2"], ["w1"], env, cluster=request.param == "redis-cluster") as (redis, procs):
        yield redis, procs


def backend_key(redis: Any, key: str) -> str:
    """The measurement's key: the cluster's are kept apart from one redis-server's."""
    return key.replace("redis", "redis_cluster", 1) if not isinstance(redis, RedisServer) else key


async def test_sdk_stream_cut_and_join_stream_is_exact_redis(topology) -> None:
    """The same chaos over Redis: two API processes, every reconnect to the other one."""
    redis, procs = topology
    seed = chaos_seed()
    async with sdks(procs["api1"].url, procs["api2"].url) as apis:
        numbers = await chaos(apis, seed)
    record(backend_key(redis, "redis"), numbers)


async def owner_of(api: ServerProcess, procs: dict[str, ServerProcess], run_id: str) -> ServerProcess:
    """The worker process executing the run (native GET /runs/{id} names it)."""
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        deadline = time.monotonic() + 10
        while True:
            snap = (await http.get(f"/runs/{run_id}")).json()
            if snap.get("worker") and snap.get("status") == "running":
                break
            assert time.monotonic() < deadline, snap
            await asyncio.sleep(0.02)
    return next(p for name, p in procs.items()
                if name.startswith("w") and p.proc is not None and f"-{p.proc.pid}-" in snap["worker"])


async def test_worker_killed_mid_run_folds_to_an_uncrashed_stream(topology) -> None:
    """A second worker joins; the run's worker is SIGKILLed mid-subgraph. The SDK's stream goes
    on (a second metadata: attempt 2, rewind_to), and folded it equals an uncrashed run's."""
    redis, procs = topology
    procs["w2"] = ServerProcess(command="worker", env=procs["w1"].env).start()
    wait_workers(redis, 2)
    async with sdks(procs["api1"].url, procs["api2"].url) as (api1, api2):
        _, _, clean = await uncut(api1)

        thread = await api1.client.threads.create()
        tid = thread["thread_id"]
        got: list[Ev] = []
        owner: ServerProcess | None = None
        killed_after: int | None = None
        async with asyncio.timeout(60):
            async for part in api1.client.runs.stream(
                    tid, AGENT, input=INPUT, stream_mode=MODES, stream_subgraphs=True, on_disconnect="continue"):
                got.append(Ev.of(part))
                if len(got) == 1:
                    owner = await owner_of(procs["api1"], procs, got[0].data["run_id"])
                # Kill it in the subgraph's search step, after its second TOOL_USE chunk.
                if (owner is not None and killed_after is None and got[-1].event.startswith("custom|")
                        and got[-1].data.get("input") == f"{TOPIC} #1"):
                    owner.kill()
                    killed_after = got[-1].seq
        run_id = got[0].data["run_id"]
        assert killed_after is not None, "the run ended before the kill"
        assert_well_formed(got, run_id, tid, attempts=2)
        resumed = [e for e in got if e.event == "metadata"][1]
        assert resumed.data["run_id"] == run_id and resumed.data["attempt"] == 2, resumed
        rewind_to = float(resumed.data["rewind_to"])
        assert rewind_to <= killed_after < resumed.seq, (rewind_to, killed_after, resumed)
        dropped = [e for e in got if rewind_to < e.seq < resumed.seq]
        # The other API process replays the same stream, resumed mark included.
        assert await replay(api2, tid, run_id) == got
        run = await api2.client.runs.get(tid, run_id)
        assert run["status"] == "success", run
        survivor = next(p for name, p in procs.items() if name in ("w1", "w2") and p is not owner)
        assert survivor.proc is not None and survivor.proc.poll() is None
        folded = fold(got)
        assert comparable(folded) == comparable(clean), (
            f"folded stream != uncrashed stream; killed after id {killed_after}, resumed at id {resumed.seq} "
            f"with rewind_to {rewind_to}\nthe SDK's stream: {[(e.seq, normalise(e.event)) for e in got]}"
            f"\nuncrashed: {[normalise(e.event) for e in clean]}")
        assert_graph_stream(folded)
    record(backend_key(redis, "redis_worker_killed"), {
        "events": len(got), "killed_after_id": killed_after, "rewind_to": rewind_to,
        "resumed_metadata_id": resumed.seq, "dropped_by_fold": len(dropped),
        "folded_equals_uncrashed": True, "folded_events": len(folded),
    })


# ----------------------------------------------------------------------------- the anchor


async def measure(url: str, key: str, seed: int) -> None:
    """Twice: join_stream with the run's stream_mode, then without one (the run's modes)."""
    async with sdks(url) as apis:
        record(key, {"url": url, **await chaos(apis, seed, strict=False)})
        record(f"{key}_join_without_stream_mode", {"url": url, **await chaos(apis, seed, strict=False,
                                                                              join_modes=None)})


if __name__ == "__main__":
    # The same SDK chaos against another server serving lg_chaos (``langgraph dev`` with a
    # langgraph.json naming tests/fixtures/lg_chaos_graph.py:graph), only measured:
    #   .venv/bin/python -m tests.integration.test_lg_chaos http://127.0.0.1:2024 langgraph_dev
    import sys

    asyncio.run(measure(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "anchor", chaos_seed()))
