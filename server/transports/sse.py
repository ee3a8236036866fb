"""Server-Sent Events: a thin adapter over ``bus.subscribe``.

Ordering, dedup and resync live in the subscription; this module only frames events,
batching whatever is ready into one write (per-write cost is what limits fan-out).
Failures before the stream starts are raised and rendered by ``common.api_error``.
"""

from __future__ import annotations

import logging
import re
from typing import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from ..bus.base import BusError, CursorExpired, Subscription, UnknownLog, subscribe
from ..events import Event, dumps
from .common import MAX_CURSOR_DIGITS, RequestError, api_error, parse_seq, request_caller
from .api_models import EventView, ResetView
from .openapi import Operation, Param, ref

log = logging.getLogger(__name__)

NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
RETRY_MS = 2000


def ping_comment() -> ServerSentEvent:
    """The keep-alive comment, exactly ``: ping`` as the wire format documents."""
    return ServerSentEvent(comment="ping", sep="\n")


def frame(event: Event) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.ns.encode(), event.encode())


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
    caller = await request_caller(request)
    await app_state.runs.get(run_id, tenant=caller.tenant)  # another tenant's run is a 404
    after = parse_cursor(request)
    ns_filter = parse_ns(request)
    sub = await subscribe(app_state.bus, run_id, after)  # cursor errors: 400 / 410
    settings = app_state.settings
    return EventSourceResponse(
        _frames(sub, ns_filter),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping=settings.sse_ping_s,
        ping_message_factory=ping_comment,
        sep="\n",  # the same line ending as our own frames
        send_timeout=settings.sse_send_timeout_s,
    )


def reset_frame(body: dict[str, object]) -> bytes:
    return b"event: reset\ndata: %s\n\n" % dumps(body)


async def _frames(sub: Subscription, ns_filter: frozenset[str] | None) -> AsyncIterator[bytes]:
    try:
        head = b"retry: %d\n\n" % RETRY_MS
        if sub.trimmed_from is not None:
            # No cursor, but the log's start was trimmed: say so, never a silent partial replay.
            head += reset_frame({"reason": "log_trimmed", "first_seq": sub.trimmed_from})
        yield head
        try:
            async for batch in sub:
                chunk = b"".join(
                    frame(e) for e in batch
                    if ns_filter is None or e.ns in ns_filter or e.is_terminal
                )
                if chunk:
                    yield chunk
        except (CursorExpired, UnknownLog) as exc:
            # The subscriber fell behind the retained log mid-stream, or the log went away.
            body = api_error(exc).reset(sub.run_id)
            del body["run_id"]  # an SSE stream is one run's
            yield reset_frame(body)
        except BusError as exc:
            log.warning("SSE stream of run %s ended: %s", sub.run_id, exc)
    finally:
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
                            "no longer holds what the cursor needs; `: ping` comments keep it alive"),
            "properties": {
                "event": {"type": "string"},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "retry": {"type": "integer"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"anyOf": [ref(EventView), ref(ResetView)]}},
            }},
        models=(EventView, ResetView),
        params=(Param("run_id", "path", {"type": "string", "minLength": 1}),
                Param("Last-Event-ID", "header", CURSOR, "resume after this seq (browsers resend it)"),
                Param("last_event_id", "query", CURSOR, "the same cursor, for clients that cannot set headers"),
                Param("after", "query", CURSOR, "alias of last_event_id"),
                Param("ns", "query", {"type": "string"}, "comma-separated namespaces to keep, e.g. THOUGHT,TOOL_USE")),
        errors=(400, 404, 410), tags=("runs",))),
]
