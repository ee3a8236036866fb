"""Clients that cannot stream: conditional GETs, long-polls and JSON pages of events.

Browsers behind proxies that buffer event streams, and mobile clients that sleep, poll.
What they get, so that polling costs little and still sees a change at once:

* ``GET /runs/{id}`` sends a strong ``ETag`` (a hash of the snapshot's body: any change —
  a new event, a queue position — is a new tag, on every process alike); ``If-None-Match``
  with it answers ``304`` and no body.
* ``?wait=S`` (0 < S <= 30) with a matching ``If-None-Match`` holds the request until the
  snapshot changes (200) or S passes (304). It wakes on the run's bus doorbell and
  re-reads, at most once per ``REREAD_MIN_S``, and every ``RECHECK_S`` anyway (a queue
  position moves with no event of its own) — never a tight loop.
* ``GET /runs/{id}/events?format=json&after=N&limit=M``: a page of the SSE stream's
  events, the same cursor rules (``subscribe()`` validates it; ``bus.read`` reads it, in
  order), optionally long-polled with ``wait`` when nothing is past the cursor.
* ``Retry-After`` on what a poller gets back while the run has not ended: the backoff it
  should use, deterministic from the run's state. See ``retry_after_s``.

A poller is not a watcher: the doorbell is a bare sink, not a ``Subscription``, so it never
counts as presence for the delivery gate (between two polls nobody would be watching; a
run ending then lands in its context's inbox either way).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from ..bus.base import Bus, BusError, Sink, UnknownLog
from ..bus.subscription import subscribe
from ..events import TERMINAL_STATES, Event, dumps
from .api_models import EventView, RunSnapshot, dump
from .common import RequestError

MAX_WAIT_S = 30.0
REREAD_MIN_S = 0.05  # however fast events come, a long-poll re-reads at most this often
RECHECK_S = 1.0  # a quiet long-poll re-reads this often anyway (changes without an event)
RETRY_AFTER_CAP_S = 30
PAGE_DEFAULT, PAGE_MAX = 100, 1000
DOORBELL_BUFFER = 8  # the doorbell's events are never read, only its ringing counts

RETRY_AFTER_RULE = (
    "Retry-After (seconds) is sent while the run has not ended: 1 while its last change "
    "(its newest event's ts) is under 2 s old, then the power of two at most that age "
    "(2, 4, 8, 16), capped at 30; never on an ended run")
WAIT_DOC = (f"long-poll: with a matching If-None-Match, hold the request until the snapshot "
            f"changes (200) or this many seconds pass (304); 0 < wait <= {MAX_WAIT_S:g}")


class EventPage(BaseModel):
    """``GET /runs/{id}/events?format=json``: a page of the run's log, for clients that cannot
    stream. Concatenated pages (``after`` = the previous ``next_after``) are exactly the SSE
    stream's events; with no cursor and ``first_seq`` > 1 the log's start was trimmed (SSE's
    ``reset log_trimmed``)."""

    run_id: str
    events: list[EventView] = Field(description="the events, exactly as SSE data lines carry them")
    next_after: int = Field(ge=0, description="the next page's cursor: the last seq read (or the cursor)")
    ended: bool = Field(description="the terminal event is in this page or was passed: no more pages")
    first_seq: int = Field(description="the oldest seq the log still holds")
    last_seq: int = Field(description="the newest seq in the log")


# --------------------------------------------------------------------------- parameters


def parse_wait(request: Request) -> float | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_WAIT_S:  # nan and inf fail here too
        raise RequestError("bad_query", f"wait must be a number of seconds, 0 < wait <= {MAX_WAIT_S:g}")
    return value


def parse_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return PAGE_DEFAULT
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= PAGE_MAX):
        raise RequestError("bad_query", f"limit must be an integer between 1 and {PAGE_MAX}")
    return int(raw)


def wants_json(request: Request) -> bool:
    """``?format=json``: a page of events instead of a stream."""
    fmt = request.query_params.get("format")
    if fmt is None:
        return False
    if fmt != "json":
        raise RequestError("bad_query", 'format must be "json" (or absent, for the SSE stream)')
    return True


# --------------------------------------------------------------------------- ETag and backoff


def etag_of(body: bytes) -> str:
    """A strong tag of exactly these bytes (the same on every process)."""
    return '"%s"' % hashlib.sha256(body).hexdigest()[:32]


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match``'s weak comparison (RFC 9110 13.1.2): a list of tags, or ``*``."""
    if header is None:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def retry_after_s(age_s: float) -> int:
    """The backoff for a poller of something unchanged for ``age_s``: 1 s while fresh, then
    it doubles with the age (a poller that keeps getting 304s waits longer and longer),
    capped. From the state alone, so every process and every poll agrees."""
    if age_s < 2:
        return 1
    return min(RETRY_AFTER_CAP_S, 2 ** int(math.log2(age_s)))


async def last_change(bus: Bus, run_id: str, last_seq: int | None, fallback: float) -> float:
    """When the run last changed: its newest event's ts (every state change is an event)."""
    if last_seq:
        try:
            newest = await bus.read(run_id, last_seq - 1, 1)
        except BusError:
            newest = []
        if newest:
            return newest[0].ts
    return fallback


# --------------------------------------------------------------------------- the long-poll


class Doorbell:
    """Rings when a log grows: a bare sink on the bus (the poller re-reads what it needs,
    so it needs neither the events nor their order)."""

    def __init__(self, bus: Bus, log_id: str) -> None:
        self.bus = bus
        self.log_id = log_id
        self._sink = Sink(DOORBELL_BUFFER)

    async def __aenter__(self) -> Doorbell:
        await self.bus.attach(self.log_id, self._sink)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.detach(self.log_id, self._sink)

    async def wait(self, timeout: float) -> None:
        """Until it rang (since the last wait) or ``timeout`` passed."""
        try:
            await asyncio.wait_for(self._sink.wait(), timeout)
        except TimeoutError:
            pass
        self._sink.take()


async def hold(request: Request, bell: Doorbell, wait_s: float,
               changed: Callable[[], Awaitable[bool]]) -> bool:
    """Re-check ``changed()`` at once, then on each ring (at most every REREAD_MIN_S) and every
    RECHECK_S, until it says yes (True), ``wait_s`` passes or the client left (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    last_read = -math.inf
    while True:
        pause = last_read + REREAD_MIN_S - loop.time()
        if pause > 0:
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        last_read = loop.time()
        if await changed():
            return True
        remaining = deadline - loop.time()
        if remaining <= 0 or await request.is_disconnected():
            return False
        await bell.wait(min(remaining, RECHECK_S))


# --------------------------------------------------------------------------- conditional GETs


@dataclass(slots=True)
class Version:
    """One read of a polled resource: its body, as sent, and its tag."""

    body: bytes
    etag: str
    data: dict[str, Any]

    @classmethod
    def of(cls, data: dict[str, Any]) -> Version:
        body = dumps(data)
        return cls(body, etag_of(body), data)


async def current(request: Request, log_id: str, read: Callable[[], Awaitable[Version]]) -> Version:
    """The resource now; with ``?wait=`` and an ``If-None-Match`` it matches, the first version
    that does not match, or the same one once the wait is over. ``log_id``: the bus log whose
    growth may change it (a run's; a context's)."""
    wait = parse_wait(request)
    inm = request.headers.get("if-none-match")
    version = await read()
    if wait is not None and etag_matches(inm, version.etag):
        async with Doorbell(request.app.state.bus, log_id) as bell:
            async def changed() -> bool:
                nonlocal version
                version = await read()
                return not etag_matches(inm, version.etag)

            await hold(request, bell, wait, changed)
    return version


def respond(request: Request, version: Version, retry_after: int | None = None) -> Response:
    """200 with the body, or 304 and no body when the client's If-None-Match still matches."""
    headers = {"ETag": version.etag, "Cache-Control": "private, no-cache"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if etag_matches(request.headers.get("if-none-match"), version.etag):
        return Response(status_code=304, headers=headers)
    return Response(version.body, media_type="application/json", headers=headers)


# --------------------------------------------------------------------------- GET /runs/{id}


async def run_snapshot(request: Request, run_id: str, tenant: str | None) -> Response:
    """``GET /runs/{id}``: the snapshot as a conditional GET, long-polled with ``?wait=``."""
    async def read() -> Version:
        snap = await request.app.state.runs.snapshot(run_id, tenant=tenant)
        return Version.of(dump(RunSnapshot.model_validate(snap)))

    version = await current(request, run_id, read)
    snap = version.data
    retry = None
    if snap["status"] not in TERMINAL_STATES:
        since = await last_change(request.app.state.bus, run_id, snap["last_seq"],
                                  snap["started_at"] or snap["created_at"])
        retry = retry_after_s(time.time() - since)
    return respond(request, version, retry)


# --------------------------------------------------------------------------- GET /runs/{id}/events?format=json


async def events_page(request: Request, run_id: str, after: int | None,
                      ns_filter: frozenset[str] | None) -> Response:
    """A JSON page of the events after the cursor (the caller already checked who asks for
    which run and parsed the cursor and ``ns``, as for the stream)."""
    limit = parse_limit(request)
    wait = parse_wait(request)
    bus: Bus = request.app.state.bus
    # The stream's cursor rules, from the one place that has them: 400 ahead, 410 trimmed.
    cursor = (await subscribe(bus, run_id, after, attach=False)).last
    raw: list[Event] = []

    def keep(events: list[Event]) -> list[Event]:
        if ns_filter is None:
            return events
        return [e for e in events if e.ns in ns_filter or e.is_terminal]

    async def read() -> bool:
        """One page past the cursor; True when it holds something to send, or nothing ever will."""
        nonlocal raw, cursor
        raw = await bus.read(run_id, cursor, limit)
        if keep(raw) or (raw and raw[-1].is_terminal):
            return True
        if raw:  # all filtered out: step past them, keep looking
            cursor = raw[-1].seq
            return False
        bounds = await bus.bounds(run_id)
        if bounds is None:
            raise UnknownLog(run_id)
        return bounds.ended and cursor >= bounds.last_seq

    if not await read() and wait is not None:
        async with Doorbell(bus, run_id) as bell:
            await hold(request, bell, wait, read)
    bounds = await bus.bounds(run_id)
    if bounds is None:
        raise UnknownLog(run_id)
    next_after = raw[-1].seq if raw else cursor
    kept = keep(raw)
    ended = bool(raw and raw[-1].is_terminal) or (bounds.ended and next_after >= bounds.last_seq)
    headers = {"Cache-Control": "no-cache"}
    if not kept and not ended:
        since = raw[-1].ts if raw else await last_change(bus, run_id, bounds.last_seq, time.time())
        headers["Retry-After"] = str(retry_after_s(time.time() - since))
    # The events' own encodings, as the SSE data lines carry them (nothing re-encoded).
    body = b'{"run_id":%s,"events":[%s],"next_after":%d,"ended":%s,"first_seq":%d,"last_seq":%d}' % (
        dumps(run_id), b",".join(e.encode() for e in kept), next_after, b"true" if ended else b"false",
        bounds.first_seq, max(bounds.last_seq, next_after))
    return Response(body, media_type="application/json", headers=headers)


__all__ = ["EventPage", "RETRY_AFTER_RULE", "WAIT_DOC", "Doorbell", "Version", "current", "etag_matches", "etag_of",
           "events_page", "hold", "parse_limit", "parse_wait", "respond", "retry_after_s", "run_snapshot", "wants_json"]
