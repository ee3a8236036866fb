"""catchup: a client reconnects after missing N events: time to replay them, then live.

A firehose run of ``--missed + --live`` tokens at ``--rate``/s starts with nobody
watching; once about ``--missed`` tokens are out, ``--clients`` clients connect together
(a reconnect storm) from the start of the log (SSE ``Last-Event-ID: 0``; Socket.IO
``subscribe {after: 0}``). Per client: *missed* = tokens emitted before it connected,
*replay* = connect -> last missed token received, *caught up* = connect -> the last token
that arrived later than 50 ms after its emission (from then on the client is live).
Every client must get every token once, in order, across the replay-to-live handoff.
raw has no log, so nothing to catch up from.

*replay* trials (``--events``, default 20,000; 0 skips them): a finished run of that many
firehose tokens, whose log is still in memory, replayed from the start (``Last-Event-ID:
0``) by one client at a time, ``REPLAYS`` times per trial. The server is wrapped in
``bench.replay_timing`` and says, in its own clock, when the request began to be served,
when its first body bytes and its first event frame were handed to the transport, when
the last write was, and the sizes of its writes; the client (raw asyncio socket, the
driver's process) notes when it sent the request, when the first body byte, the first
event frame and the last byte arrived, and checks every event arrived once and in order.
Rate = events / replay time, client (request sent -> last frame received) and server
(request served -> last write handed to the transport; for one huge write that is not when
it left). raw here is ``bench.raw_replay``: the same events, their JSON encoded once, framed
on replay as ours frames them and written in whole-frame writes of at most 64 KiB (the
ceiling); ``raw/sse-replay-preframed`` only joins frames built in advance.
``ours/sse-replay-disk`` is the same replay of a log that left memory for the journal
(``THOUGHTSTREAM_FINISHED_LOGS_MAX_EVENTS=0``): reads from SQLite, for reference.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import sys
import time
import uuid
from bisect import bisect_right
from itertools import accumulate

import httpx

from tests.support import ROOT, ServerProcess

from ..core import Result, alternate, label_ratios, percentile, ratios, rounded, say
from ..procs import FIREHOSE, LoadGen, Subprocess, server_env
from .fanout import transport_labels

# raw keeps no log for the reconnect storm (its broadcaster has nothing to replay); it takes
# part in the replay trials only, as bench.raw_replay.
APPLIES = {"ours": None, "raw": None, "langgraph-dev": None}
DEFAULTS = {"clients": 20, "missed": 5000, "live": 2000, "rate": 1000.0, "repeat": 3,
            "transports": "sse,socketio_batch", "events": 20000}
HEADLINE = ("replay_p50_ms", "caught_up_p50_ms", "caught_up_max_ms")
LIVE_MS = 50.0
REPLAYS = 10  # per replay trial, one after another; the trial keeps their medians
REPLAY_HEADLINE = ("server_first_event_ms", "client_first_event_ms", "server_eps", "client_eps",
                   "server_cpu_us_per_event", "max_write_kib")
FIRST_EVENT_GOAL_MS = 2.0
RATE_GOAL_EPS = 900_000
WRITE_GOAL_BYTES = 64 * 1024


def client_catchup(summary: dict, tri) -> dict | None:
    i, t, recv = tri[0::3], tri[1::3], tri[2::3]
    if not len(t):
        return None
    start = summary["started"]
    missed = sum(1 for x in t if x < start)
    last_missed = max((r for x, r in zip(t, recv) if x < start), default=start)
    late = [k for k in range(len(t)) if (recv[k] - t[k]) * 1000 >= LIVE_MS]
    caught = recv[late[-1]] if late else recv[0]
    live_lat = [(r - x) * 1000 for x, r in zip(t, recv) if r > caught]
    return {"missed": missed, "duplicates": len(i) - len(set(i)), "replay_ms": (last_missed - start) * 1000, "caught_up_ms": (caught - start) * 1000,
            "live_p99_ms": percentile(live_lat, 0.99), "first_i": i[0]}


def trial(target, transport: str, *, missed: int, live: int, rate: float, clients: int, tmp, label: str) -> dict:
    gate = tmp / f"gate-{uuid.uuid4().hex}"
    run = target.new_run(missed + live, rate, gate)
    gate.touch()
    time.sleep(missed / rate)
    lg = LoadGen.watch(target, run, clients, transport=transport, timeout=120 + 3 * (missed + live) / rate,
                       last_event_id="0" if transport == "sse" else None)
    try:
        lg.wait_ready()
        d = lg.collect()
    finally:
        lg.kill()
    per = [c for c in (client_catchup(s, tri) for s, tri in zip(d.clients, d.triplets)) if c]
    bad = d.incomplete(missed + live)
    replay = [c["replay_ms"] for c in per]
    caught = [c["caught_up_ms"] for c in per]
    m = {
        "clients": clients,
        "missed_p50": rounded(percentile([c["missed"] for c in per], 0.5), 0),
        "replay_p50_ms": rounded(percentile(replay, 0.5)), "replay_max_ms": rounded(max(replay, default=None)),
        "replay_eps": rounded(sum(c["missed"] for c in per) / (max(replay) / 1000), 0) if replay and max(replay) else None,
        "caught_up_p50_ms": rounded(percentile(caught, 0.5)), "caught_up_max_ms": rounded(max(caught, default=None)),
        "live_p99_ms_after": rounded(percentile([c["live_p99_ms"] for c in per if c["live_p99_ms"]], 0.5)),
        "violations": d.violations() + sum(1 for c in per if c["first_i"] != 0),
        "duplicates_per_client": rounded(percentile([c["duplicates"] for c in per], 0.5), 0),
        "incomplete_clients": len(bad),
        "errors": (d.errors + [str(c["error"]) for c in bad if c["error"]])[:5],
    }
    say(f"{label:34s} missed~{m['missed_p50']} replay p50={m['replay_p50_ms']}ms max={m['replay_max_ms']}ms "
        f"caught up p50={m['caught_up_p50_ms']}ms max={m['caught_up_max_ms']}ms "
        f"viol={m['violations']} dup/client={m['duplicates_per_client']} incomplete={m['incomplete_clients']}")
    return m


# -- replay trials ---------------------------------------------------------------------

class TimedOurs(ServerProcess):
    """``python -m bench.replay_timing serve`` (thoughtstream, timed) serving the firehose."""

    def start(self) -> TimedOurs:
        argv = [sys.executable, "-m", "bench.replay_timing", "serve", *self.args,
                "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server did not become healthy:\n{self.output()}")


class ReplayTarget:
    """A timed server that makes finished logs of ``count`` firehose tokens."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind.startswith("raw"):
            self.proc = Subprocess([sys.executable, "-m", "uvicorn", "bench.raw_replay:app", "--host", "127.0.0.1",
                                    "--port", "{port}", "--log-level", "warning"]).start()
        else:
            # ours: the log stays in memory after the run (as a recent run's does); ours-disk:
            # a finished log leaves memory at once and is read back from the journal.
            keep = "0" if kind == "ours-disk" else "1000000"
            self.proc = TimedOurs("--agent", FIREHOSE, env=server_env({
                "THOUGHTSTREAM_FINISHED_LOGS_MAX_EVENTS": keep,
                "THOUGHTSTREAM_FINISHED_LOGS_MAX_BYTES": str(1 << 30)})).start()
        self.url = self.proc.url

    def new_log(self, count: int) -> str:
        """A finished log; returns its events URL."""
        if self.kind.startswith("raw"):
            r = httpx.post(self.url + "/runs", json={"count": count, "preframed": self.kind == "raw-preframed"},
                           timeout=60).raise_for_status()
            return r.json()["events_url"]
        r = httpx.post(self.url + "/runs", json={"agent": "firehose", "input": {"count": count, "rate": 1e7}},
                       timeout=30).raise_for_status()
        run_id, url = r.json()["run_id"], r.json()["events_url"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/runs/{run_id}", timeout=10).json()["status"] in ("succeeded", "failed", "cancelled"):
                time.sleep(0.3)  # the journal commits the end, the log settles where it stays
                return url
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} did not end")

    def timings(self) -> list[dict]:
        return httpx.get(self.url + "/__timing", timeout=10).json()

    def stop(self) -> None:
        self.proc.stop()


class ReplayClient(asyncio.Protocol):
    """One GET of a stream; keeps (perf_counter, bytes) per read and parses after the end."""

    def __init__(self, req: bytes) -> None:
        self.req = req
        self.reads: list[tuple[float, bytes]] = []
        self.t_sent = 0.0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.t_sent = time.perf_counter()
        transport.write(self.req)

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.perf_counter(), data))

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(exc)


ID_LINE = re.compile(rb"^id: (\d+)$", re.M)
TOKEN_I = re.compile(rb'"i":(\d+),"t":')


async def replay_once(url: str, timeout: float) -> dict:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
           f"Last-Event-ID: 0\r\nConnection: close\r\n\r\n").encode()
    client = ReplayClient(req)
    transport, _ = await asyncio.get_running_loop().create_connection(lambda: client, host, int(port))
    try:
        await asyncio.wait_for(client.done, timeout)
    finally:
        transport.close()
    raw = b"".join(d for _, d in client.reads)
    ends = list(accumulate(len(d) for _, d in client.reads))

    def at(offset: int) -> float:  # arrival time of the byte at ``offset``
        return client.reads[bisect_right(ends, offset)][0] - client.t_sent

    head_end = raw.index(b"\r\n\r\n") + 4
    status = int(raw.split(b" ", 2)[1])
    # de-chunk: every chunk is one write of the server's
    chunks, pos, body = [], head_end, []
    while pos < len(raw):
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        if size == 0:
            break
        chunks.append(size)
        body.append(raw[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2
    data = b"".join(body)
    ids = [int(x) for x in ID_LINE.findall(data)]
    tokens = [int(x) for x in TOKEN_I.findall(data)]
    first_event = raw.find(b"id: ", head_end)
    last_frame = raw.rfind(b"\n\n") + 1
    return {
        "status": status,
        "events": len(ids), "tokens": len(tokens), "bytes": len(data),
        "in_order": ids == list(range(1, len(ids) + 1)) and tokens == list(range(len(tokens))),
        "ended": b'"state":"succeeded"' in data[-2000:],
        "client_chunks": len(chunks), "client_max_chunk": max(chunks, default=0),
        "client_first_body_ms": 1000 * at(head_end) if len(raw) > head_end else None,
        "client_first_event_ms": 1000 * at(first_event) if first_event >= 0 else None,
        "client_replay_ms": 1000 * at(last_frame),
    }


def replay_trial(target: ReplayTarget, count: int, label: str) -> dict:
    url = target.url + target.new_log(count)
    target.timings()  # forget what came before
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    per = []
    for _ in range(REPLAYS):
        c = run(replay_once(url, timeout=60))
        recs = [r for r in target.timings() if r["path"].endswith("/events")]
        s = recs[-1] if recs else {}
        if s.get("t_first_event") is not None:
            c["server_first_body_ms"] = 1000 * (s["t_first_body"] - s["t_call"])
            c["server_first_event_ms"] = 1000 * (s["t_first_event"] - s["t_call"])
            c["server_replay_ms"] = 1000 * (s["t_last_body"] - s["t_call"])
            c["server_cpu_ms"] = 1000 * (s["cpu_last_body"] - s["cpu_call"])
            c["server_writes"] = s["writes"]
            c["server_max_write"] = s["max_write"]
        per.append(c)
        time.sleep(0.1)

    def med(key: str, digits: int = 3) -> float | None:
        vals = [c[key] for c in per if c.get(key) is not None]
        return rounded(statistics.median(vals), digits) if vals else None

    events = statistics.median(c["events"] for c in per)
    bad = [c for c in per if c["status"] != 200 or not c["in_order"] or not c["ended"] or c["tokens"] != count]
    m = {
        "events": events,
        "bytes": med("bytes", 0),
        "server_first_body_ms": med("server_first_body_ms"),
        "server_first_event_ms": med("server_first_event_ms"),
        "server_replay_ms": med("server_replay_ms"),
        "server_eps": rounded(events / (med("server_replay_ms") / 1000), 0) if med("server_replay_ms") else None,
        "server_cpu_ms": med("server_cpu_ms"),
        "server_cpu_us_per_event": rounded(1000 * med("server_cpu_ms") / events, 3) if med("server_cpu_ms") else None,
        "client_first_body_ms": med("client_first_body_ms"),
        "client_first_event_ms": med("client_first_event_ms"),
        "client_replay_ms": med("client_replay_ms"),
        "client_eps": rounded(events / (med("client_replay_ms") / 1000), 0) if med("client_replay_ms") else None,
        "writes": med("client_chunks", 0),
        "max_write_kib": rounded(max(c["client_max_chunk"] for c in per) / 1024, 1),
        "server_first_event_ms_max": rounded(max((c.get("server_first_event_ms") or 0) for c in per), 3),
        "replays": len(per),
        "violations": sum(1 for c in per if not c["in_order"]),
        "incomplete_clients": len(bad),
        "errors": [f"status {c['status']}, {c['tokens']} tokens, ended={c['ended']}" for c in bad][:5],
    }
    say(f"{label:34s} {events:.0f} events, {m['bytes']:.0f} B in {m['writes']:.0f} writes (max "
        f"{m['max_write_kib']} KiB); server: first body {m['server_first_body_ms']} ms, first event "
        f"{m['server_first_event_ms']} ms, replay {m['server_replay_ms']} ms = {m['server_eps']}/s, cpu "
        f"{m['server_cpu_ms']} ms; client: first "
        f"event {m['client_first_event_ms']} ms, replay {m['client_replay_ms']} ms = {m['client_eps']}/s; "
        f"bad={len(bad)}")
    return m


def replay(ctx, res: Result) -> dict[str, list[dict]]:
    kinds = {"ours/sse-replay": "ours", "ours/sse-replay-disk": "ours-disk", "raw/sse-replay": "raw",
             "raw/sse-replay-preframed": "raw-preframed"}
    labels = [label for label in kinds if label.split("/")[0] in ctx.targets]
    targets: dict[str, ReplayTarget] = {}

    def target(label: str) -> ReplayTarget:
        if label not in targets:
            say(f"starting {kinds[label]} (timed, for replays)")
            targets[label] = ReplayTarget(kinds[label])
            ctx.stack.callback(targets[label].stop)
        return targets[label]

    say(f"replay: {ctx.events} events, {REPLAYS} replays per trial, {ctx.repeat} trials per label")
    runs = alternate(labels, ctx.repeat, lambda label, rep: replay_trial(
        target(label), ctx.events, f"{label} #{rep + 1}"))
    for label, m in res.record(runs, REPLAY_HEADLINE, {}).items():
        if label.startswith("ours/sse-replay") and not label.endswith("disk"):
            res.checks[f"{label} first event written within {FIRST_EVENT_GOAL_MS:g} ms (server)"] = bool(
                m["server_first_event_ms"] is not None and m["server_first_event_ms"] <= FIRST_EVENT_GOAL_MS)
            res.checks[f"{label} >= {RATE_GOAL_EPS:,} events/s (client)"] = bool(
                m["client_eps"] and m["client_eps"] >= RATE_GOAL_EPS)
        if label.startswith("ours/"):
            res.checks[f"{label} writes <= {WRITE_GOAL_BYTES // 1024} KiB"] = m["max_write_kib"] <= WRITE_GOAL_BYTES / 1024
    return runs


def run(ctx) -> Result:
    res = Result("catchup", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    measured: dict[str, dict] = {}
    all_ratios: dict = {}
    storm_targets = [t for t in ctx.targets if t != "raw"]
    if storm_targets:
        saved = ctx.targets
        ctx.targets = storm_targets
        labels = transport_labels(ctx)
        ctx.targets = saved
        runs = alternate(labels, ctx.repeat, lambda label, rep: trial(
            ctx.target(label.split("/")[0]), label.split("/")[1], missed=ctx.missed, live=ctx.live, rate=ctx.rate,
            clients=ctx.clients, tmp=ctx.tmp, label=f"{label} #{rep + 1}"))
        measured.update(res.record(runs, HEADLINE, {}))
        all_ratios.update(label_ratios(runs, ctx.primary, HEADLINE))
    if ctx.events:
        runs = replay(ctx, res)
        measured.update(res.measured)
        for label in runs:
            for ref in runs:
                if label != ref and label.startswith("ours/") and ref.startswith("raw/"):
                    all_ratios[f"{label} / {ref}"] = ratios(runs, label, ref, REPLAY_HEADLINE)
    res.measured, res.ratios = measured, all_ratios
    return res
