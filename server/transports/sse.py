"""Server-Sent Events: a thin adapter over ``bus.subscribe``.

Ordering, dedup and resync live in the subscription; this module only frames events,
batching whatever is ready into one write (per-write cost is what limits fan-out).
"""

from __future__ import annotations

import logging
import re
from typing import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..bus.base import BusError, CursorAhead, CursorExpired, Subscription, UnknownLog, subscribe
from ..events import Event, dumps
from ..runs.service import ServiceError
from .errors import error_response
from .http import service_error, tenant_of

log = logging.getLogger(__name__)

NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
RETRY_MS = 2000
MAX_CURSOR_DIGITS = 18  # seqs are far below 10**18; longer is garbage, not a cursor


def ping_comment() -> ServerSentEvent:
    """The keep-alive comment, exactly ``: ping`` as the wire format documents."""
    return ServerSentEvent(comment="ping", sep="\n")


def frame(event: Event) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.ns.encode(), event.encode())


def parse_cursor(request: Request) -> int | None:
    """Last-Event-ID header first (browsers resend it), then ?last_event_id= or ?after=.

    A blank value means no cursor. Anything else must be a plain ASCII decimal seq:
    ``str.isdigit`` alone lets through digits of other scripts (Arabic-Indic three is 3
    to ``int``) and superscripts (which ``int`` rejects with an unhelpful message).
    """
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        raw = request.query_params.get("last_event_id") or request.query_params.get("after")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_CURSOR_DIGITS:
        raise ValueError(f"cursor {raw[:40]!r} is not a non-negative integer seq")
    return int(raw)


async def stream_events(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    app_state = request.app.state
    try:
        await app_state.runs.get(run_id, tenant=tenant_of(request))
    except ServiceError as exc:
        return service_error(exc)
    try:
        after = parse_cursor(request)
    except ValueError as exc:
        return error_response(400, "bad_cursor", str(exc))
    ns_filter: frozenset[str] | None = None
    if request.query_params.get("ns"):
        names = [n.strip() for n in request.query_params["ns"].split(",") if n.strip()]
        bad = [n for n in names if not NS_RE.match(n)]
        if bad or not names:
            return error_response(400, "bad_ns", f"ns must be a comma-separated list of names; got {bad or names}")
        ns_filter = frozenset(names)
    try:
        sub = await subscribe(app_state.bus, run_id, after)
    except CursorExpired as exc:
        return error_response(410, exc.code, str(exc), first_seq=exc.first_seq)
    except UnknownLog as exc:
        return error_response(410, "log_expired", str(exc))
    except CursorAhead as exc:
        return error_response(400, exc.code, str(exc))
    settings = app_state.settings
    return EventSourceResponse(
        _frames(sub, ns_filter),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        ping=settings.sse_ping_s,
        ping_message_factory=ping_comment,
        sep="\n",  # the same line ending as our own frames
        send_timeout=settings.sse_send_timeout_s,
    )


async def _frames(sub: Subscription, ns_filter: frozenset[str] | None) -> AsyncIterator[bytes]:
    try:
        head = b"retry: %d\n\n" % RETRY_MS
        if sub.trimmed_from is not None:
            # No cursor, but the log's start was trimmed: say so, never a silent partial replay.
            head += b"event: reset\ndata: %s\n\n" % dumps(
                {"reason": "log_trimmed", "first_seq": sub.trimmed_from})
        yield head
        try:
            async for batch in sub:
                chunk = b"".join(
                    frame(e) for e in batch
                    if ns_filter is None or e.ns in ns_filter or e.is_terminal
                )
                if chunk:
                    yield chunk
        except CursorExpired as exc:
            # The subscriber fell behind the retained log mid-stream.
            yield b"event: reset\ndata: %s\n\n" % dumps(
                {"reason": "cursor_expired", "first_seq": exc.first_seq, "message": str(exc)})
        except BusError as exc:
            log.warning("SSE stream of run %s ended: %s", sub.run_id, exc)
    finally:
        await sub.aclose()


routes = [Route("/runs/{run_id}/events", stream_events, methods=["GET"])]
