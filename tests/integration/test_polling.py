"""Issue 13, clients that cannot stream: ETag / 304, ``?wait=`` long-polls, JSON event pages,
and a ``Retry-After`` that grows while nothing changes — against real servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from tests.auth_support import Minter, bearer
from tests.support import ServerProcess, redis_topology

from .conftest import (
    TIGHT_LOG_MAX_EVENTS,
    agent_flags,
    full_log,
    make_client,
    read_stream,
    run_to_end,
    start_run,
    wait_finished,
    wait_status,
)

# The server's rule (polling.retry_after_s): 1 s under 2 s of age, then the power of two at
# most the age, capped at 30.
RETRY_AT = {0.5: 1, 2.5: 2, 4.6: 4}


async def idle_run(client: httpx.AsyncClient) -> str:
    """A reflective run waiting for a human (approve_tools): nothing changes until answered."""
    run = await start_run(client, "reflective", {"question": "What is 12*7?", "approve_tools": True})
    await wait_status(client, run["run_id"], "interrupted")
    return run["run_id"]


async def page(client: httpx.AsyncClient, run_id: str, **params: Any) -> httpx.Response:
    return await client.get(f"/runs/{run_id}/events", params={"format": "json", **params})


async def all_pages(client: httpx.AsyncClient, run_id: str, *, headers: dict[str, str] | None = None,
                    **params: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page from the cursor in ``params`` (or none) to ``ended``; (events, pages)."""
    events: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    for _ in range(10_000):
        resp = await client.get(f"/runs/{run_id}/events", params={"format": "json", **params},
                                headers=headers or {})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/json"
        body = resp.json()
        assert set(body) == {"run_id", "events", "next_after", "ended", "first_seq", "last_seq"}, body
        pages.append(body)
        events += body["events"]
        if body["ended"]:
            return events, pages
        # The next page's cursor is next_after (a first page's Last-Event-ID / last_event_id
        # would take precedence over ?after=, as they do for the stream).
        params = {**{k: v for k, v in params.items() if k != "last_event_id"}, "after": body["next_after"]}
        headers = None
    raise AssertionError("the pages never ended")


async def last_event_ts(client: httpx.AsyncClient, run_id: str) -> float:
    last_seq = (await client.get(f"/runs/{run_id}")).json()["last_seq"]
    body = (await page(client, run_id, after=last_seq - 1, limit=1)).json()
    return body["events"][0]["ts"]


@pytest.fixture(scope="module")
def finished(main_server: ServerProcess) -> dict[str, Any]:
    """A reflective run that ended, with its SSE log (well over one page of events)."""
    return run_to_end(main_server, "reflective", {"question": "What is 12 times 12, and what is SSE?"})


# ----------------------------------------------------------------------------- ETag and 304


async def test_etag_is_stable_and_a_match_answers_304(client: httpx.AsyncClient) -> None:
    """Nothing changes: the same strong ETag and body every time; If-None-Match -> 304, no body, the tag."""
    run_id = await idle_run(client)
    first = await client.get(f"/runs/{run_id}")
    again = await client.get(f"/runs/{run_id}")
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert again.headers["etag"] == etag and again.content == first.content
    for inm in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        resp = await client.get(f"/runs/{run_id}", headers={"If-None-Match": inm})
        assert resp.status_code == 304, (inm, resp.text)
        assert resp.content == b"" and resp.headers["etag"] == etag
        assert "content-type" not in resp.headers
    other = await client.get(f"/runs/{run_id}", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content and other.headers["etag"] == etag


async def test_etag_changes_with_the_snapshot(client: httpx.AsyncClient) -> None:
    """Equal bodies have equal tags, different bodies different tags; an old tag is no longer a 304."""
    run = await start_run(client, "ticker", {"count": 4, "interval_s": 0.3})
    seen: dict[str, bytes] = {}
    while True:
        resp = await client.get(f"/runs/{run['run_id']}")
        tag = resp.headers["etag"]
        assert seen.setdefault(tag, resp.content) == resp.content
        if resp.json()["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert len(seen) >= 5, seen  # queued/running, 4 ticks, the end
    assert len(set(seen.values())) == len(seen)
    for tag in list(seen)[:-1]:
        resp = await client.get(f"/runs/{run['run_id']}", headers={"If-None-Match": tag})
        assert resp.status_code == 200 and resp.headers["etag"] == list(seen)[-1]
    assert "retry-after" not in resp.headers  # an ended run: nothing to back off from


# ----------------------------------------------------------------------------- long-polls


async def test_long_poll_returns_as_soon_as_the_run_changes(client: httpx.AsyncClient) -> None:
    """A held request answers the moment an event lands (the doorbell, not a 1 s recheck)."""
    run = await start_run(client, "ticker", {"count": 3, "interval_s": 1.5})
    run_id = run["run_id"]
    snap = await wait_status(client, run_id, "running")
    while snap["last_seq"] < 3:  # queued, running, the first tick
        snap = (await client.get(f"/runs/{run_id}")).json()
        await asyncio.sleep(0.05)
    held = await client.get(f"/runs/{run_id}")
    sent = time.monotonic()
    resp = await client.get(f"/runs/{run_id}", params={"wait": 10}, headers={"If-None-Match": held.headers["etag"]})
    got_at, took = time.time(), time.monotonic() - sent
    assert resp.status_code == 200 and took < 2.5, (resp.status_code, took)
    body = resp.json()
    assert body["last_seq"] > held.json()["last_seq"] and resp.headers["etag"] != held.headers["etag"]
    landed = await last_event_ts(client, run_id)
    assert got_at - landed < 0.8, f"answered {got_at - landed:.2f}s after the event landed"
    await wait_finished(client, run_id)


async def test_long_poll_answers_304_after_wait_when_nothing_changes(client: httpx.AsyncClient) -> None:
    """An interrupted run does not change: the request is held the whole wait, then 304 with the same tag."""
    run_id = await idle_run(client)
    etag = (await client.get(f"/runs/{run_id}")).headers["etag"]
    sent = time.monotonic()
    resp = await client.get(f"/runs/{run_id}", params={"wait": 1.5}, headers={"If-None-Match": etag})
    took = time.monotonic() - sent
    assert resp.status_code == 304 and resp.content == b"" and resp.headers["etag"] == etag
    assert 1.45 <= took < 3.0, took
    assert int(resp.headers["retry-after"]) >= 1
    # Without If-None-Match (or with a stale one), ?wait= does not hold: the snapshot comes at once.
    for headers in ({}, {"If-None-Match": '"stale"'}):
        sent = time.monotonic()
        resp = await client.get(f"/runs/{run_id}", params={"wait": 5}, headers=headers)
        assert resp.status_code == 200 and time.monotonic() - sent < 2.5  # not held the 5 s


async def test_the_result_is_seen_within_one_long_poll_of_landing(client: httpx.AsyncClient) -> None:
    """A poller that long-polls through a quiet run sees its result the moment it lands, with
    one request held through the quiet part, not a stream of polls."""
    run = await start_run(client, "napper", {"nap_s": 2.5})
    run_id = run["run_id"]
    resp = await client.get(f"/runs/{run_id}")
    polls: list[tuple[int, float, dict[str, Any] | None]] = []
    while True:
        sent = time.monotonic()
        resp = await client.get(f"/runs/{run_id}", params={"wait": 20},
                                headers={"If-None-Match": resp.headers["etag"]})
        polls.append((resp.status_code, time.monotonic() - sent, resp.json() if resp.status_code == 200 else None))
        assert resp.status_code == 200, polls  # it never waits 20 s: the run changes first
        if resp.json()["status"] == "succeeded":
            break
    got_at = time.time()
    snap = resp.json()
    assert snap["result"] == {"nap_s": 2.5, "woke": True}
    # Below the 1 s recheck (the doorbell woke it), with room for a loaded machine.
    assert got_at - snap["ended_at"] < 0.8, f"result seen {got_at - snap['ended_at']:.2f}s after it landed"
    # At most one answer per change of the snapshot: each of the run's events, and the record's
    # own moves (a quiet machine sees them coalesce into about six; a loaded one may not).
    assert len(polls) <= snap["last_seq"] + 2, polls
    assert max(took for _, took, _ in polls) >= 1.5, polls  # one request was held through the nap


async def test_long_poll_of_a_queued_run_sees_its_start(tight_server: ServerProcess) -> None:
    """One run at a time: the second waits queued (position 1) and the held request sees it start."""
    async with make_client(tight_server) as c:
        blocker = await start_run(c, "ticker", {"count": 3, "interval_s": 0.5})
        await wait_status(c, blocker["run_id"], "running")
        run = await start_run(c, "ticker", {"count": 1, "interval_s": 0})
        snap = await c.get(f"/runs/{run['run_id']}")
        assert snap.json()["status"] == "queued" and snap.json()["queue_position"] == 1, snap.text
        # Held while it waits (its queued STATUS may become visible first: that is a change too).
        polls = []
        while snap.json()["status"] == "queued":
            resp = await c.get(f"/runs/{run['run_id']}", params={"wait": 10},
                               headers={"If-None-Match": snap.headers["etag"]})
            assert resp.status_code == 200 and resp.content != snap.content
            polls.append(resp.json())
            snap = resp
        assert len(polls) <= 3, polls
        await wait_finished(c, run["run_id"])


async def test_long_poll_sees_a_change_without_an_event(client: httpx.AsyncClient) -> None:
    """Releasing a held result changes the ended run's record, not its log: a held request
    sees it at its next recheck (RECHECK_S, 1 s), not after the whole wait."""
    key = f"poll-doc-{time.time_ns()}"
    assert (await client.put(f"/contexts/{key}", json={"version": "v1"})).status_code == 200
    resp = await client.post("/runs", json={"agent": "ticker", "input": {"count": 3, "interval_s": 0.2},
                                            "context": {"key": key, "version": "v1", "on_stale": "hold"}})
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["run_id"]
    assert (await client.put(f"/contexts/{key}", json={"version": "v2"})).status_code == 200
    snap = await wait_finished(client, run_id)
    assert snap["delivery"] == {"held": True, "delivered_at": None}, snap
    before = await client.get(f"/runs/{run_id}")
    assert "retry-after" not in before.headers
    held = asyncio.create_task(client.get(f"/runs/{run_id}", params={"wait": 10},
                                          headers={"If-None-Match": before.headers["etag"]}))
    await asyncio.sleep(0.2)
    sent = time.monotonic()
    assert (await client.post(f"/runs/{run_id}/deliver")).status_code == 200
    resp = await held
    assert resp.status_code == 200 and time.monotonic() - sent < 5  # not held the 10 s
    assert resp.json()["delivery"]["delivered_at"] is not None


# ----------------------------------------------------------------------------- JSON pages


@pytest.mark.parametrize("limit", [1, 7, 1000])
async def test_json_pages_are_exactly_the_sse_stream(client: httpx.AsyncClient, finished: dict[str, Any],
                                                     limit: int) -> None:
    """Pages chained by next_after, concatenated, are the SSE stream's events, exactly."""
    run_id = finished["run_id"]
    events, pages = await all_pages(client, run_id, limit=limit)
    assert events == finished["events"]
    assert [p["ended"] for p in pages] == [False] * (len(pages) - 1) + [True]
    assert all(len(p["events"]) <= limit for p in pages)
    assert pages[-1]["next_after"] == pages[-1]["last_seq"] == len(events)
    assert all(p["first_seq"] == 1 and p["run_id"] == run_id for p in pages)
    # Past the end: an empty page, still ended, no backoff hint.
    past = await page(client, run_id, after=len(events))
    assert past.json()["events"] == [] and past.json()["ended"] is True
    assert past.json()["next_after"] == len(events) and "retry-after" not in past.headers


async def test_json_pages_take_the_streams_cursors_and_ns_filter(client: httpx.AsyncClient,
                                                                  finished: dict[str, Any]) -> None:
    """Last-Event-ID, ?last_event_id= and ?after= start where the stream would; ?ns= keeps what it keeps."""
    run_id = finished["run_id"]
    cut = 9
    for how in ({"headers": {"Last-Event-ID": str(cut)}}, {"last_event_id": cut}, {"after": cut}):
        events, _ = await all_pages(client, run_id, limit=5, **how)
        assert events == finished["events"][cut:], how
    ns = "THOUGHT,RESULT"
    stream = await read_stream(client, f"/runs/{run_id}/events", params={"ns": ns})
    events, pages = await all_pages(client, run_id, limit=10, ns=ns)
    assert events == stream.events and {e["ns"] for e in events} <= {"THOUGHT", "RESULT", "STATUS"}
    assert pages[-1]["next_after"] == len(finished["events"])


async def test_json_pages_of_a_live_run_with_wait(client: httpx.AsyncClient) -> None:
    """Paging a live run with ?wait=: every held page comes back with events, and the pages are the log."""
    run = await start_run(client, "ticker", {"count": 5, "interval_s": 0.3})
    events, pages = await all_pages(client, run["run_id"], limit=2, wait=10)
    assert all(p["events"] for p in pages), pages
    assert events == await full_log(client, run["run_id"])


async def test_json_long_poll_holds_then_answers_an_empty_page(client: httpx.AsyncClient) -> None:
    """Nothing past the cursor of an idle run: held for the wait, then no events, not ended, a Retry-After."""
    run_id = await idle_run(client)
    last_seq = (await client.get(f"/runs/{run_id}")).json()["last_seq"]
    sent = time.monotonic()
    resp = await page(client, run_id, after=last_seq, wait=1)
    assert 0.95 <= time.monotonic() - sent < 2.5
    body = resp.json()
    assert body["events"] == [] and body["ended"] is False and body["next_after"] == last_seq
    assert int(resp.headers["retry-after"]) >= 1
    # Answered while held: resume it, and the held page returns with what followed.
    held = asyncio.create_task(page(client, run_id, after=last_seq, wait=10))
    await asyncio.sleep(0.3)
    assert (await client.post(f"/runs/{run_id}/resume", json={"value": True})).status_code == 202
    resp = await held
    assert resp.json()["events"] and resp.json()["events"][0]["seq"] == last_seq + 1
    assert "retry-after" not in resp.headers
    await wait_finished(client, run_id)


async def test_trimmed_log_pages_like_the_stream(tight_server: ServerProcess) -> None:
    """Logs kept to their last 20 events: a cursor before them is 410 (first_seq given); no cursor
    starts at first_seq, as the stream does."""
    async with make_client(tight_server) as c:
        run = await start_run(c, "ticker", {"count": 3 * TIGHT_LOG_MAX_EVENTS, "interval_s": 0})
        await wait_finished(c, run["run_id"])
        expired = await page(c, run["run_id"], after=1)
        assert expired.status_code == 410 and expired.json()["error"]["code"] == "cursor_expired"
        first_seq = expired.json()["error"]["first_seq"]
        assert first_seq > 2
        events, pages = await all_pages(c, run["run_id"], limit=6)
        assert events[0]["seq"] == first_seq == pages[0]["first_seq"]
        stream = await read_stream(c, f"/runs/{run['run_id']}/events")
        assert events == stream.events


# ----------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("where, query, code", [
    ("run", "wait=0", "bad_query"), ("run", "wait=31", "bad_query"), ("run", "wait=-1", "bad_query"),
    ("run", "wait=abc", "bad_query"), ("run", "wait=nan", "bad_query"), ("run", "wait=inf", "bad_query"),
    ("run", "wait=", "bad_query"),
    ("events", "format=json&limit=0", "bad_query"), ("events", "format=json&limit=1001", "bad_query"),
    ("events", "format=json&limit=abc", "bad_query"), ("events", "format=json&limit=1.5", "bad_query"),
    ("events", "format=json&limit=-3", "bad_query"),
    ("events", "format=json&wait=0", "bad_query"), ("events", "format=json&wait=30.5", "bad_query"),
    ("events", "format=json&wait=soon", "bad_query"),
    ("events", "format=xml", "bad_query"), ("events", "format=", "bad_query"),
    ("events", "format=json&after=abc", "bad_cursor"), ("events", "format=json&after=-1", "bad_cursor"),
    ("events", "format=json&after=999999", "cursor_ahead"), ("events", "format=json&ns=no%20spaces", "bad_ns"),
])
async def test_bad_parameters_are_400(client: httpx.AsyncClient, finished: dict[str, Any],
                                      where: str, query: str, code: str) -> None:
    run_id = finished["run_id"]
    url = f"/runs/{run_id}?{query}" if where == "run" else f"/runs/{run_id}/events?{query}"
    resp = await client.get(url, headers={"If-None-Match": "*"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == code, resp.text


async def test_unknown_run_is_404_for_pollers(client: httpx.AsyncClient) -> None:
    for url, params in (("/runs/nope", {"wait": 5}), ("/runs/nope/events", {"format": "json", "wait": 5})):
        sent = time.monotonic()
        resp = await client.get(url, params=params, headers={"If-None-Match": "*"})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        assert time.monotonic() - sent < 2.5  # not held the 5 s


# ----------------------------------------------------------------------------- tenants


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[tuple[ServerProcess, Minter]]:
    minter = Minter.hs256()
    server = ServerProcess(*agent_flags({"ticker": "tests/integration/graphs.py:ticker"}), env={
        "THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": minter.secret,
        "THOUGHTSTREAM_JOURNAL": "false"}).start()
    try:
        yield server, minter
    finally:
        server.stop()


@pytest.fixture
async def tenants(jwt_server: tuple[ServerProcess, Minter]) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    server, minter = jwt_server
    async with (httpx.AsyncClient(base_url=server.url, headers=bearer(minter.token(tenant="acme")), timeout=20) as acme,
                httpx.AsyncClient(base_url=server.url, headers=bearer(minter.token(tenant="umbrella", sub="eve")),
                                  timeout=20) as other):
        yield acme, other


async def test_another_tenants_run_is_404_to_every_poll(tenants: tuple[httpx.AsyncClient, ...]) -> None:
    """Its ETag does not leak through a 304, its events not through a page, and nothing is held."""
    acme, other = tenants
    run = await start_run(acme, "ticker", {"count": 20, "interval_s": 0.2})
    run_id = run["run_id"]
    mine = await acme.get(f"/runs/{run_id}")
    assert mine.status_code == 200 and mine.headers["etag"]
    for params, headers in (({}, {}), ({}, {"If-None-Match": mine.headers["etag"]}),
                            ({"wait": 5}, {"If-None-Match": mine.headers["etag"]}), ({"wait": 5}, {"If-None-Match": "*"})):
        sent = time.monotonic()
        resp = await other.get(f"/runs/{run_id}", params=params, headers=headers)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text
        assert "etag" not in resp.headers and time.monotonic() - sent < 2.5  # not held the 5 s
    for params in ({"format": "json"}, {"format": "json", "after": 1, "wait": 5}):
        resp = await other.get(f"/runs/{run_id}/events", params=params)
        assert resp.status_code == 404 and "events" not in resp.text, resp.text
    assert (await page(acme, run_id)).status_code == 200
    assert (await acme.post(f"/runs/{run_id}/cancel")).status_code == 200


# ----------------------------------------------------------------------------- Retry-After


async def test_retry_after_grows_while_nothing_changes(client: httpx.AsyncClient) -> None:
    """1 s while the run's last change is fresh, then 2, 4, ... with its age: on 200s, 304s and
    empty pages alike; a change starts it over; an ended run gets none."""
    run_id = await idle_run(client)
    landed = await last_event_ts(client, run_id)
    snap = await client.get(f"/runs/{run_id}")
    last_seq = snap.json()["last_seq"]
    for age, want in RETRY_AT.items():
        await asyncio.sleep(max(0.0, landed + age - time.time()))
        full = await client.get(f"/runs/{run_id}")
        cond = await client.get(f"/runs/{run_id}", headers={"If-None-Match": snap.headers["etag"]})
        empty = await page(client, run_id, after=last_seq)
        assert cond.status_code == 304
        got = [int(r.headers["retry-after"]) for r in (full, cond, empty)]
        assert got == [want] * 3, (age, got)
    assert (await client.post(f"/runs/{run_id}/resume", json={"value": True})).status_code == 202
    moving = await page(client, run_id, after=last_seq, wait=5)
    assert moving.json()["events"] and "retry-after" not in moving.headers  # events: read on at once
    snap = await client.get(f"/runs/{run_id}")
    assert snap.json()["status"] != "interrupted"
    if snap.json()["status"] == "running":
        assert snap.headers["retry-after"] == "1"  # it changed: back to 1 s
    await wait_finished(client, run_id)
    ended = await client.get(f"/runs/{run_id}")
    assert "retry-after" not in ended.headers
    assert "retry-after" not in (await page(client, run_id, after=ended.json()["last_seq"])).headers


# ----------------------------------------------------------------------------- Redis, two API processes


@pytest.fixture(scope="module")
def redis_apis() -> Iterator[dict[str, ServerProcess]]:
    env = {"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "3000"}
    with redis_topology(["api1", "api2"], ["w1"], env, durable=False) as (_redis, procs):
        yield procs


async def test_polling_across_api_processes_on_redis(redis_apis: dict[str, ServerProcess]) -> None:
    """On Redis, with the run on a worker: both API processes give the same ETag (so a poller may
    switch), a long-poll on one wakes on what the worker publishes, and its JSON pages are the
    other's SSE stream."""
    async with make_client(redis_apis["api1"]) as one, make_client(redis_apis["api2"]) as two:
        run_id = await idle_run(one)
        a, b = await one.get(f"/runs/{run_id}"), await two.get(f"/runs/{run_id}")
        assert a.headers["etag"] == b.headers["etag"] and a.content == b.content
        assert (await two.get(f"/runs/{run_id}", headers={"If-None-Match": a.headers["etag"]})).status_code == 304
        sent = time.monotonic()
        quiet = await two.get(f"/runs/{run_id}", params={"wait": 1}, headers={"If-None-Match": a.headers["etag"]})
        assert quiet.status_code == 304 and time.monotonic() - sent >= 0.95
        held = asyncio.create_task(two.get(f"/runs/{run_id}", params={"wait": 20},
                                           headers={"If-None-Match": a.headers["etag"]}))
        await asyncio.sleep(0.3)
        assert (await one.post(f"/runs/{run_id}/resume", json={"value": True})).status_code == 202
        resp = await held
        got_at = time.time()
        assert resp.status_code == 200 and resp.headers["etag"] != a.headers["etag"]
        changed_at = (await page(two, run_id, after=a.json()["last_seq"], limit=1)).json()["events"][0]["ts"]
        # Below the 1 s recheck (the doorbell woke it), with room for a loaded machine.
        assert got_at - changed_at < 0.8, f"answered {got_at - changed_at:.2f}s after the change"
        await wait_finished(one, run_id)
        events, _ = await all_pages(two, run_id, limit=25, wait=5)
        assert events == await full_log(one, run_id)
