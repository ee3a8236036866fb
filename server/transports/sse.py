"""Server-Sent Events: a thin adapter over ``bus.subscribe``.

Ordering, dedup and resync live in the subscription; this module only frames events,
batching whatever is ready into one write (per-write cost is what limits fan-out), and
paging a big batch (a replay, a resync) into writes of at most ``WRITE_MAX`` bytes.
Failures before the stream starts are raised and rendered by ``common.api_error``.
"""

from __future__ import annotations

import logging
import re
import time
from bisect import bisect_right
from itertools import accumulate
from typing import TYPE_CHECKING, AsyncIterator, Iterator

from sse_starlette import ServerSentEvent
from sse_starlette.event import ensure_bytes
from starlette.requests import Request
from starlette.responses import Response

from ..auth import EXPIRED, VIEWER, Caller, Sessions
from ..bus.base import BusError, CursorExpired, UnknownLog
from ..bus.subscription import Subscription, subscribe
from ..events import Event, dumps
from . import polling
from .common import MAX_CURSOR_DIGITS, RequestError, api_error, parse_seq, request_caller
from .api_models import EventView, ResetView
from .openapi import Operation, Param, ref
from .sse_response import LeanEventSourceResponse

if TYPE_CHECKING:
    from ..observability.metrics import TransportMetrics

log = logging.getLogger(__name__)

NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
RETRY_MS = 2000
# The most bytes one write carries (whole frames; a single bigger frame goes alone). A
# replay's first page leaves as soon as its first events are read, and no write holds
# megabytes in the transport. A live batch under the bound stays one write.
WRITE_MAX = 64 * 1024
# A batch of at most this many events is joined at once and paged only if it is too big.
SMALL_BATCH = 64


def ping_comment() -> ServerSentEvent:
    """The keep-alive comment, exactly ``: ping`` as the wire format documents."""
    return ServerSentEvent(comment="ping", sep="\n")


PING = ensure_bytes(ping_comment(), "\n")


def frame(event: Event) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.ns.encode(), event.encode())


class _Templates(dict[str, bytes]):
    """ns -> ``frame``'s format with the ns already in (one ``%`` per event, not an encode
    and a three-field format: a replay frames tens of thousands of events)."""

    def __missing__(self, ns: str) -> bytes:
        template = b"id: %%d\nevent: %s\ndata: %%s\n\n" % ns.encode().replace(b"%", b"%%")
        if len(self) < 1024:  # namespaces are few; never an unbounded cache of odd ones
            self[ns] = template
        return template


_TEMPLATES = _Templates()


def frames(events: list[Event]) -> list[bytes]:
    """``[frame(e) for e in events]``, the same bytes, faster (``_raw`` is the encoding
    ``encode`` keeps; read directly it saves a call per event)."""
    t = _TEMPLATES
    return [t[e.ns] % (e.seq, e._raw or e.encode()) for e in events]


def writes(framed: list[bytes], limit: int = WRITE_MAX) -> Iterator[bytes]:
    """``framed`` joined into writes of at most ``limit`` bytes, in order, never split."""
    ends = list(accumulate(map(len, framed)))
    i, n, done = 0, len(framed), 0
    while i < n:
        j = bisect_right(ends, done + limit, i)
        if j == i:
            j = i + 1  # one frame bigger than the bound: alone
        yield b"".join(framed[i:j])
        done = ends[j - 1]
        i = j


def parse_cursor(request: Request) -> int | None:
    """Last-Event-ID header first (browsers resend it), then ?last_event_id= or ?after=.

    A blank value means no cursor (from the first event).
    """
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        raw = request.query_params.get("last_event_id") or request.query_params.get("after")
    if raw is None or not raw.strip():
        return None
    return parse_seq(raw.strip())


def parse_ns(request: Request) -> frozenset[str] | None:
    raw = request.query_params.get("ns")
    if not raw:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not NS_RE.match(n)]
    if bad or not names:
        raise RequestError("bad_ns", f"ns must be a comma-separated list of names; got {bad or names}")
    return frozenset(names)


async def stream_events(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    app_state = request.app.state
    caller = await request_caller(request)  # checked on every (re)connect: a replay is a request
    await app_state.runs.get(run_id, tenant=caller.scope)  # another tenant's run is a 404
    after = parse_cursor(request)
    ns_filter = parse_ns(request)
    if polling.wants_json(request):  # a page for clients that cannot stream, same cursor rules
        return await polling.events_page(request, run_id, after, ns_filter)
    sub = await subscribe(app_state.bus, run_id, after, attach=False)  # cursor errors: 400 / 410
    settings = app_state.settings
    pings = Pings(sub)
    return LeanEventSourceResponse(
        _frames(sub, ns_filter, app_state.identity.sessions, caller, app_state.metrics.transport("sse"), pings),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping_period=settings.sse_ping_s, on_ping=pings.due_now, interrupt=sub.stop,
        sep="\n",  # the same line ending as our own frames
        send_timeout=settings.sse_send_timeout_s,
    )


class Pings:
    """A keep-alive is due (the shared wheel said so): the body writes ``PING`` at its next
    step, which ``poke`` brings about even on a silent run."""

    __slots__ = ("due", "_sub")

    def __init__(self, sub: Subscription) -> None:
        self.due = False
        self._sub = sub

    def due_now(self) -> None:
        self.due = True
        self._sub.poke()


def reset_frame(body: dict[str, object]) -> bytes:
    return b"event: reset\ndata: %s\n\n" % dumps(body)


class CredentialEnded(Exception):
    """The stream's credential expired or was revoked (``why``: auth_expired / auth_revoked)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def ended_frame(why: str) -> bytes:
    if why == EXPIRED:
        body = {"code": "token_expired", "message": "the credential expired; reconnect with a new one "
                                                    "and Last-Event-ID to continue where this ended"}
    else:
        body = {"code": "revoked", "message": "the credential was revoked"}
    return b"event: %s\ndata: %s\n\n" % (why.encode(), dumps(body))


async def _frames(sub: Subscription, ns_filter: frozenset[str] | None, sessions: Sessions,
                  caller: Caller, metrics: TransportMetrics, pings: Pings) -> AsyncIterator[bytes]:
    # The stream lives no longer than its credential: it ends at exp, or when revoked.
    # (Opened here, not before: a generator that never starts never runs its ``finally``.)
    session = sessions.open(caller, lambda why: sub.stop(CredentialEnded(why)))
    metrics.subscribers.inc()
    since, drops = time.time(), 0
    try:
        head = b"retry: %d\n\n" % RETRY_MS
        if sub.trimmed_from is not None:
            # No cursor, but the log's start was trimmed: say so, never a silent partial replay.
            head += reset_frame({"reason": "log_trimmed", "first_seq": sub.trimmed_from})
        yield head
        del head
        try:
            await sub.open()  # before the history is read: the one algorithm's first step
            async for batch in sub:
                if pings.due:  # before the batch: a poke's batch is empty, a busy stream's is not
                    pings.due = False
                    yield PING
                if not batch:
                    continue
                kept = batch if ns_filter is None else [
                    e for e in batch if e.ns in ns_filter or e.is_terminal]
                if kept:
                    framed = frames(kept)
                    # The live case, a few events: one write, checked against the bound once.
                    data = b"".join(framed) if len(framed) <= SMALL_BATCH else b""
                    if data and len(data) <= WRITE_MAX:
                        yield data
                    else:
                        for data in writes(framed):
                            yield data
                metrics.batch(batch, len(kept), since)  # per batch, never per event: fan-out pays it
                if sub.drops != drops:
                    metrics.drops.inc(sub.drops - drops)
                    drops = sub.drops
                # Nothing of this batch is held while the stream waits for the next (a replay
                # page's frames would stay in this frame for as long as the run is quiet).
                batch = kept = framed = data = None  # type: ignore[assignment]
        except (CursorExpired, UnknownLog) as exc:
            # The subscriber fell behind the retained log mid-stream, or the log went away.
            body = api_error(exc).reset(sub.run_id)
            del body["run_id"]  # an SSE stream is one run's
            yield reset_frame(body)
        except CredentialEnded as exc:
            yield ended_frame(exc.why)
        except BusError as exc:
            log.warning("SSE stream of run %s ended: %s", sub.run_id, exc)
    finally:
        metrics.subscribers.dec()
        session.close()
        await sub.aclose()


CURSOR = {"type": "string", "pattern": f"^[0-9]{{1,{MAX_CURSOR_DIGITS}}}$"}

operations = [
    (stream_events, Operation(
        "GET", "/runs/{run_id}/events",
        "Watch a run: every event after the cursor, in order, once, then live ones until the end",
        ok_media="text/event-stream",
        # One SSE event (OpenAPI 3.1: the schema of a text/event-stream describes each event).
        ok_schema={
            "type": "object", "required": ["event", "data"],
            "description": ("`id: <seq>`, `event: <ns>`, `data: <event JSON>`; `event: reset` when the log "
                            "no longer holds what the cursor needs; `event: auth_expired` / `auth_revoked` "
                            "when the credential ends (reconnect with a new one and Last-Event-ID); "
                            "`: ping` comments keep it alive"),
            "properties": {
                "event": {"type": "string"},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "retry": {"type": "integer"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"anyOf": [ref(EventView), ref(ResetView)]}},
            }},
        models=(EventView, ResetView, polling.EventPage),
        params=(Param("run_id", "path", {"type": "string", "minLength": 1}),
                Param("Last-Event-ID", "header", CURSOR, "resume after this seq (browsers resend it)"),
                Param("last_event_id", "query", CURSOR, "the same cursor, for clients that cannot set headers"),
                Param("after", "query", CURSOR, "alias of last_event_id"),
                Param("ns", "query", {"type": "string"}, "comma-separated namespaces to keep, e.g. THOUGHT,TOOL_USE"),
                Param("ticket", "query", {"type": "string"}, "from POST /runs/{run_id}/ticket, for EventSource"),
                Param("format", "query", {"type": "string", "enum": ["json"]},
                      "json: one page of events as application/json (EventPage) instead of the stream"),
                Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": polling.PAGE_MAX,
                                         "default": polling.PAGE_DEFAULT}, "format=json: events per page"),
                Param("wait", "query", {"type": "number", "exclusiveMinimum": 0, "maximum": polling.MAX_WAIT_S},
                      "format=json: when nothing is past the cursor, hold the request until an event "
                      "comes or this many seconds pass. A page with no new events of a run not ended "
                      f"carries Retry-After. {polling.RETRY_AFTER_RULE}")),
        ok_headers=("Retry-After",), ok_alt=(("application/json", ref(polling.EventPage)),),
        errors=(400, 404, 410), tags=("runs",), role=VIEWER, ticket=True)),
]
