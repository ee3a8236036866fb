"""catchup: a client reconnects after missing N events: time to replay them, then live.

A firehose run of ``--missed + --live`` tokens at ``--rate``/s starts with nobody
watching; once about ``--missed`` tokens are out, ``--clients`` clients connect together
(a reconnect storm) from the start of the log (SSE ``Last-Event-ID: 0``; Socket.IO
``subscribe {after: 0}``). Per client: *missed* = tokens emitted before it connected,
*replay* = connect -> last missed token received, *caught up* = connect -> the last token
that arrived later than 50 ms after its emission (from then on the client is live).
Every client must get every token once, in order, across the replay-to-live handoff.
raw has no log, so nothing to catch up from.
"""

from __future__ import annotations

import time
import uuid

from ..core import Result, alternate, label_ratios, percentile, rounded, say
from ..procs import LoadGen
from .fanout import transport_labels

APPLIES = {"ours": None, "raw": "the raw broadcaster keeps no log: a late subscriber has nothing to replay",
           "langgraph-dev": None}
DEFAULTS = {"clients": 20, "missed": 5000, "live": 2000, "rate": 1000.0, "repeat": 3,
            "transports": "sse,socketio_batch"}
HEADLINE = ("replay_p50_ms", "caught_up_p50_ms", "caught_up_max_ms")
LIVE_MS = 50.0


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


def run(ctx) -> Result:
    labels = transport_labels(ctx)
    res = Result("catchup", ctx.primary, {k: ctx.opts[k] for k in DEFAULTS})
    runs = alternate(labels, ctx.repeat, lambda label, rep: trial(
        ctx.target(label.split("/")[0]), label.split("/")[1], missed=ctx.missed, live=ctx.live, rate=ctx.rate,
        clients=ctx.clients, tmp=ctx.tmp, label=f"{label} #{rep + 1}"))
    res.record(runs, HEADLINE, label_ratios(runs, ctx.primary, HEADLINE))
    return res
