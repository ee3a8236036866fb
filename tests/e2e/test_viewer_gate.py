"""The viewer and the delivery gate (issue 13), in headless Chromium against real server processes.

What a person sees: a run started from the form on a document ("context", with mark or hold);
the document panel beside it with its version and "Edit the document"; pressing it while the
run is in flight ends the run ``stale`` - the verdict and both versions shown instead of the
answer - and, held, "Apply anyway" releases it (POST /runs/{id}/deliver), shown marked
"delivered anyway". A fresh result is the answer, with a small "fresh" badge. Results that
finish while the page is closed wait in the document's inbox (the context stream's INBOX)
and "Dismiss" acks them. With authentication on, the context stream (no ticket exists for
it) opens with the credential in a header, never in a URL.

The runs are the ``ticker`` test graph (tests/integration/graphs.py): as long as asked, so
the edit lands mid-run. Every wait is on a DOM condition or on the server's record.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import httpx
import pytest

from tests.e2e.test_viewer import CHROMIUM, LAPTOP, Page, browser, shot, transports  # noqa: F401 - browser: fixture
from tests.support import ServerProcess

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install the Debian package (apt-get install -y chromium); .ci/run does",
)

TICKER = ["--agent", "ticker=tests/integration/graphs.py:ticker"]
# Long enough for the page to see the run in flight and press "Edit the document".
LONG = {"count": 80, "interval_s": 0.1}
SHORT = {"count": 3, "interval_s": 0.05}
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(*TICKER) as proc:
        yield proc


@pytest.fixture
def make_page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    contexts: list[Any] = []
    pages: list[Page] = []

    def make(context: Any = None) -> Page:
        if context is None:
            context = browser.new_context(viewport=LAPTOP, device_scale_factor=1)
            contexts.append(context)
        p = Page(context, server.url)
        pages.append(p)
        return p

    yield make
    errors = [e for p in pages for e in p.errors]
    for ctx in contexts:
        ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


# --------------------------------------------------------------------------- helpers


def new_key() -> str:
    return f"doc-{uuid.uuid4().hex[:10]}"


def fill_ticker_run(page: Page, key: str, ticks: dict[str, Any], on_stale: str) -> None:
    page.wait_for_selector("#agent-select option[value='ticker']", state="attached")
    page.select_option("#agent-select", "ticker")
    page.fill("input[data-field='count']", str(ticks["count"]))
    page.fill("input[data-field='interval_s']", str(ticks["interval_s"]))
    page.fill("#ctx-key", key)
    page.select_option("#ctx-onstale", on_stale)


def start_from_form(page: Page) -> str:
    """Start a run from the form; its id is the POST's answer (a run shown before may still be
    on the page until the new one replaces it, so the page's first ``.run`` is not the answer)."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/runs")) as posted:
        page.click("#start-btn")
    assert posted.value.status == 202, posted.value.text()
    run_id = posted.value.json()["run_id"]
    page.wait_for_selector(f".run[data-run-id='{run_id}']")
    return run_id


def wait_version(page: Page, version: str) -> None:
    page.wait_for_selector(f"[data-testid='ctx-version']:text-is('{version}')")


def edit_mid_run(page: Page, server: ServerProcess, key: str, run_id: str, to: str) -> None:
    """Press "Edit the document" while the run is in flight (the PUT's answer says it was)."""
    page.wait_for_selector("[data-testid='run-status'][data-status='running']")
    page.wait_for_selector("[data-testid='ctx-inflight'][data-count='1']")
    with page.expect_response(lambda r: r.request.method == "PUT" and r.url.endswith(f"/contexts/{key}")) as put:
        page.click("[data-testid='ctx-edit']")
    view = put.value.json()
    assert put.value.status == 200, view
    assert view["version"] == to
    assert run_id in [r["run_id"] for r in view["runs"]], f"the edit did not land mid-run: {view}"
    wait_version(page, to)


def wait_ended(page: Page) -> str:
    page.wait_for_selector("#conn[data-state='ended']", timeout=60_000)
    return page.get_attribute("[data-testid='run-status']", "data-status")


def record(server: ServerProcess, run_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    res = httpx.get(f"{server.url}/runs/{run_id}", headers=headers or {})
    assert res.status_code == 200, res.text
    return res.json()


def wait_record_ended(server: ServerProcess, run_id: str, headers: dict[str, str] | None = None,
                      timeout: float = 60.0) -> dict[str, Any]:
    """Plain GETs of the record (a poller is not a watcher: it never counts as presence)."""
    deadline = time.monotonic() + timeout
    while True:
        rec = record(server, run_id, headers)
        if rec["status"] in TERMINAL:
            return rec
        assert time.monotonic() < deadline, f"run {run_id} did not end: {rec['status']}"
        time.sleep(0.1)


def wait_inbox(server: ServerProcess, key: str, run_ids: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    """GET /contexts/{key} until its inbox holds exactly ``run_ids``. An unwatched ending goes to
    the inbox after the run's record and its terminal event (lifecycle ``_end``, then
    ``gate.ended``): a record that reads ended does not mean the inbox entry is there yet."""
    deadline = time.monotonic() + timeout
    while True:
        inbox = httpx.get(f"{server.url}/contexts/{key}").json()["inbox"]
        if {e["run_id"] for e in inbox} == run_ids:
            return inbox
        assert time.monotonic() < deadline, f"the inbox of {key} is not {run_ids}: {inbox}"
        time.sleep(0.1)


def start_http(server: ServerProcess, key: str, version: str, ticks: dict[str, Any], on_stale: str = "mark",
               headers: dict[str, str] | None = None) -> str:
    res = httpx.post(f"{server.url}/runs", headers=headers or {}, json={
        "agent": "ticker", "input": ticks, "context": {"key": key, "version": version, "on_stale": on_stale}})
    assert res.status_code == 202, res.text
    return res.json()["run_id"]


def event_names(page: Page) -> list[str]:
    return page.evaluate("() => window.__ts.watch.events.map(e => e.ns)")


def assert_stale_not_the_answer(page: Page, before: str, after: str) -> None:
    page.wait_for_selector("[data-testid='gate-badge'][data-state='stale']", timeout=60_000)
    gate = page.locator("[data-testid='gate']")
    assert gate.is_visible() and gate.get_attribute("data-state") == "stale"
    assert page.inner_text("[data-testid='gate-version']") == before
    assert page.inner_text("[data-testid='gate-current-version']") == after
    reason = page.inner_text("[data-testid='gate-reason']")
    assert before in reason and after in reason, reason
    assert page.locator("[data-testid='answer-text']").count() == 0, "a stale result was shown as the answer"
    assert page.locator("[data-testid='answer']").is_hidden()
    assert page.locator("[data-testid='fresh-badge']").count() == 0


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("transport", transports())
def test_edit_mid_run_holds_a_stale_result_until_applied_anyway(
        make_page: Any, server: ServerProcess, transport: str) -> None:
    key = new_key()
    page = make_page()
    page.goto(f"{page.base}/#transport={transport}")
    fill_ticker_run(page, key, LONG, "hold")
    page.wait_for_selector(f"[data-testid='ctx-key-shown']:text-is('{key}')")
    page.wait_for_selector("[data-testid='ctx-version']:text-is('not created yet')")
    assert page.inner_text("[data-testid='ctx-key-version']") == "new · rev-1"
    run_id = start_from_form(page)
    page.wait_for_selector("[data-testid='run-status'][data-status='running']")

    # The run answers rev-1; the panel shows the new document, the run in flight, its stream live.
    wait_version(page, "rev-1")
    page.wait_for_selector("#ctx-live[data-state='live']")
    # The chip comes from the run's record (GET /runs/{id}; over Socket.IO also the subscribe
    # ack), which nothing above waits for: over SSE the events can arrive before it.
    page.wait_for_selector(f"[data-testid='run-context']:not([hidden]):has-text('{key}')")
    chip = page.inner_text("[data-testid='run-context']")
    assert key in chip and "rev-1" in chip and "hold" in chip, chip
    ctx = record(server, run_id)["context"]
    assert (ctx["key"], ctx["version"], ctx["on_stale"]) == (key, "rev-1", "hold"), ctx

    edit_mid_run(page, server, key, run_id, "rev-2")
    assert page.inner_text("[data-testid='ctx-key-version']") == "@ rev-2"

    # Succeeded, but not delivered: the stale badge with both versions, no answer, Apply anyway.
    assert_stale_not_the_answer(page, "rev-1", "rev-2")
    assert wait_ended(page) == "succeeded"
    assert_stale_not_the_answer(page, "rev-1", "rev-2")
    assert page.get_attribute("[data-testid='gate']", "data-held") == "true"
    assert "held" in page.inner_text("[data-testid='gate-badge']")
    assert page.locator("[data-testid='apply-anyway']").is_visible()
    names = event_names(page)
    assert "RESULT_HELD" in names and "RESULT" not in names, names
    assert page.locator("[data-lane='RESULT_HELD']").count() == 0, "RESULT_HELD is no lane"
    rec = record(server, run_id)
    assert rec["verdict"]["state"] == "stale"
    assert (rec["verdict"]["version"], rec["verdict"]["current_version"]) == ("rev-1", "rev-2")
    assert rec["delivery"] == {"held": True, "delivered_at": None}
    # The panel saw the verdict: nothing in flight any more. The page watched the run (over
    # this transport) and its document, so the ending is no inbox entry.
    page.wait_for_selector("[data-testid='ctx-inflight'][data-count='0']")
    assert httpx.get(f"{server.url}/contexts/{key}").json()["inbox"] == []
    assert page.locator("[data-testid='ctx-inbox-empty']").is_visible()
    shot(page, f"viewer-gate-held-{transport}.png")

    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/runs/{run_id}/deliver")) as d:
        page.click("[data-testid='apply-anyway']")
    body = d.value.json()
    assert d.value.status == 200 and body["delivered_anyway"] is True, body
    page.wait_for_selector("[data-testid='delivered-anyway']")
    answer = page.inner_text("[data-testid='answer-text']")
    assert "ticks" in answer and str(LONG["count"]) in answer, answer
    assert page.get_attribute("[data-testid='answer']", "data-delivered") == "true"
    assert page.locator("[data-testid='apply-anyway']").count() == 0
    assert page.locator("[data-testid='gate-delivered']").is_visible()
    assert "delivered anyway" in page.inner_text("[data-testid='gate-badge']")
    assert record(server, run_id)["delivery"]["delivered_at"] is not None
    # The panel's stream saw it all happen on the document: the edit, the verdict, the release.
    page.wait_for_function("(id) => window.__ts.ctx.events.some(e => e.ns === 'RESULT' && e.run_id === id)", arg=run_id)
    seen = [e["ns"] for e in page.evaluate("() => window.__ts.ctx.events")]
    assert [n for n in seen if n in ("VERSION", "VERDICT", "RESULT")] == ["VERSION", "VERDICT", "RESULT"], seen
    time.sleep(0.4)  # entrance animations settle for the screenshot
    shot(page, f"viewer-gate-delivered-{transport}.png")

    # A reload rebuilds it from the log and the record: delivered, nothing left to apply.
    page.reload()
    page.wait_for_selector("[data-testid='delivered-anyway']")
    assert page.locator("[data-testid='apply-anyway']").count() == 0
    assert str(LONG["count"]) in page.inner_text("[data-testid='answer-text']")
    assert page.get_attribute("[data-testid='gate-badge']", "data-state") == "stale"


def test_fresh_result_has_a_fresh_badge_and_a_marked_stale_one_is_not_the_answer(
        make_page: Any, server: ServerProcess) -> None:
    key = new_key()
    page = make_page()
    page.goto(f"{page.base}/#transport=sse")
    fill_ticker_run(page, key, SHORT, "mark")
    run_id = start_from_form(page)
    assert wait_ended(page) == "succeeded"
    page.wait_for_selector("[data-testid='fresh-badge']")
    assert page.get_attribute("[data-testid='gate-badge']", "data-state") == "fresh"
    assert page.inner_text("[data-testid='gate-badge']").strip().lower() == "fresh"
    # From GET /runs/{id}, which the end of the SSE stream does not imply has been answered.
    page.wait_for_selector(f"[data-testid='run-context']:not([hidden]):has-text('{key}')")
    chip = page.inner_text("[data-testid='run-context']")
    assert " ".join(chip.split()) == f"{key} @ rev-1", chip
    assert page.locator("[data-testid='gate']").is_hidden()
    assert "ticks" in page.inner_text("[data-testid='answer-text']")
    assert record(server, run_id)["verdict"]["state"] == "fresh"
    wait_version(page, "rev-1")

    # mark: the same document edited mid-run; the result arrives (RESULT), marked, not as the answer.
    page.fill("input[data-field='count']", str(LONG["count"]))
    page.fill("input[data-field='interval_s']", str(LONG["interval_s"]))
    second = start_from_form(page)
    page.wait_for_selector(f".run[data-run-id='{second}']")
    edit_mid_run(page, server, key, second, "rev-2")
    assert wait_ended(page) == "succeeded"
    assert_stale_not_the_answer(page, "rev-1", "rev-2")
    assert page.get_attribute("[data-testid='gate']", "data-held") == "false"
    assert page.locator("[data-testid='apply-anyway']").count() == 0
    assert "RESULT" in event_names(page)
    # The stale result is there to look at, behind "Show the result anyway".
    assert page.locator("[data-testid='gate-output']").is_hidden()
    page.click("[data-testid='gate'] summary")
    assert str(LONG["count"]) in page.inner_text("[data-testid='gate-output']")
    rec = record(server, second)
    assert rec["verdict"]["state"] == "stale" and rec["delivery"] is None
    # The recent-runs list marks it too.
    page.wait_for_selector(f".run-item[data-run-id='{second}'] .gate-mini[data-state='stale']")
    shot(page, "viewer-gate-marked.png")


def test_results_that_finish_while_the_page_is_closed_wait_in_the_inbox(
        make_page: Any, server: ServerProcess) -> None:
    key = new_key()
    first = make_page()
    first.goto(first.base + "/")
    first.wait_for_selector("#agent-select option[value='ticker']", state="attached")
    first.fill("#ctx-key", key)
    first.wait_for_selector(f"[data-testid='ctx-key-shown']:text-is('{key}')")
    first.wait_for_selector("[data-testid='ctx-version']:text-is('not created yet')")
    browser_context = first.context
    first.page.close()  # the tab is closed; the browser (and its localStorage) stays

    # Two runs end while nobody watches: the first is superseded by the second, which is fresh.
    assert httpx.put(f"{server.url}/contexts/{key}", json={"version": "rev-1"}).status_code == 200
    older = start_http(server, key, "rev-1", {"count": 15, "interval_s": 0.1})
    newer = start_http(server, key, "rev-1", SHORT)
    verdicts = {r: wait_record_ended(server, r)["verdict"]["state"] for r in (older, newer)}
    assert verdicts == {older: "superseded", newer: "fresh"}, verdicts
    wait_inbox(server, key, {older, newer})

    # The page opens again on the same document: its inbox, from the stream's INBOX event.
    page = make_page(browser_context)
    page.goto(page.base + "/")
    page.wait_for_selector(f"[data-testid='ctx-key-shown']:text-is('{key}')")
    assert page.input_value("#ctx-key") == key
    page.wait_for_selector("[data-testid='ctx-inbox'][data-count='2']")
    assert page.inner_text("[data-testid='ctx-inbox-title']") == "2 results finished while you were away"
    shown = page.locator("[data-testid='ctx-inbox-entry']").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.runId, e.dataset.verdict]))")
    assert shown == verdicts
    assert page.inner_text(f"[data-testid='ctx-inbox-entry'][data-run-id='{older}'] [data-testid='ctx-entry-verdict']") \
        .lower() == "superseded"
    # The first GET may paint the inbox before the stream opens; the stream's INBOX follows.
    page.wait_for_function("() => window.__ts.ctx.inboxFromStream === true")
    page.wait_for_selector("#ctx-live[data-state='live']")
    assert page.locator("[data-testid='ctx-inbox-entry']").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.runId, e.dataset.verdict]))") == verdicts
    shot(page, "viewer-gate-inbox.png")

    with page.expect_response(lambda r: r.url.endswith(f"/contexts/{key}/inbox/ack")) as ack:
        page.click("[data-testid='ctx-dismiss']")
    assert ack.value.status == 200 and ack.value.json()["inbox"] == []
    page.wait_for_selector("[data-testid='ctx-inbox-empty']")
    assert page.locator("[data-testid='ctx-inbox-entry']").count() == 0
    assert httpx.get(f"{server.url}/contexts/{key}").json()["inbox"] == []

    # With the page open, the document is watched: a run ending now is no inbox entry.
    third = start_http(server, key, "rev-1", SHORT)
    page.wait_for_function("(id) => window.__ts.ctx.events.some(e => e.ns === 'VERDICT' && e.run_id === id)", arg=third)
    assert wait_record_ended(server, third)["verdict"]["state"] == "fresh"
    assert httpx.get(f"{server.url}/contexts/{key}").json()["inbox"] == []
    assert page.locator("[data-testid='ctx-inbox-entry']").count() == 0
    page.reload()
    page.wait_for_selector("[data-testid='ctx-inbox-empty']")


# --------------------------------------------------------------------------- with authentication


@pytest.fixture(scope="module")
def auth_server() -> Iterator[ServerProcess]:
    from tests.e2e.test_viewer_auth import SECRET

    env = {"THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": SECRET}
    with ServerProcess(*TICKER, env=env) as proc:
        yield proc


def test_with_auth_the_context_stream_carries_the_credential_in_a_header(
        browser: Any, auth_server: ServerProcess) -> None:
    pytest.importorskip("jwt", reason="PyJWT is not installed")
    from tests.e2e.test_viewer_auth import RecordingPage, assert_credential_only_in_headers, bearer, mint, sign_in

    tenant = f"gate-{uuid.uuid4().hex[:6]}"
    token = mint(tenant, roles=["member"])
    key = new_key()
    ctx = browser.new_context(viewport=LAPTOP, device_scale_factor=1)
    try:
        page = RecordingPage(ctx, auth_server.url)
        page.goto(f"{page.base}/#transport=sse")
        sign_in(page, token)
        fill_ticker_run(page, key, LONG, "hold")
        run_id = start_from_form(page)
        page.wait_for_selector("#ctx-live[data-state='live']")
        edit_mid_run(page, auth_server, key, run_id, "rev-2")
        assert_stale_not_the_answer(page, "rev-1", "rev-2")
        assert wait_ended(page) == "succeeded"
        page.click("[data-testid='apply-anyway']")
        page.wait_for_selector("[data-testid='delivered-anyway']")
        assert str(LONG["count"]) in page.inner_text("[data-testid='answer-text']")

        # No ticket exists for a context stream: fetch sends the credential as a header.
        streams = [r for r in page.requests if f"/contexts/{key}/events" in r.url]
        assert streams, "the panel never opened the context stream"
        assert all(r.all_headers().get("authorization") == f"Bearer {token}" for r in streams)
        assert_credential_only_in_headers(page, token)
        assert page.evaluate("() => window.__ts.ctx.polling") is False
        # Contexts are the tenant's: another tenant does not see this one.
        other = httpx.get(f"{auth_server.url}/contexts/{key}", headers=bearer(mint("someone-else", roles=["member"])))
        assert other.status_code == 404
        assert httpx.get(f"{auth_server.url}/contexts/{key}", headers=bearer(token)).json()["version"] == "rev-2"
        assert not page.errors, f"JavaScript errors in the page: {page.errors}"
    finally:
        ctx.close()


def test_without_a_context_stream_the_panel_polls(make_page: Any, server: ServerProcess) -> None:
    """A proxy that refuses the stream (here: 400): GET /contexts/{key} every few seconds instead."""
    key = new_key()
    assert httpx.put(f"{server.url}/contexts/{key}", json={"version": "rev-4"}).status_code == 200
    ended = wait_record_ended(server, start_http(server, key, "rev-4", SHORT))
    page = make_page()
    page.route("**/contexts/*/events*", lambda route: route.fulfill(
        status=400, json={"error": {"code": "bad_request", "message": "no streams through this proxy"}}))
    page.goto(page.base + "/")
    page.wait_for_selector("#agent-select option[value='ticker']", state="attached")
    page.fill("#ctx-key", key)
    page.wait_for_selector("#ctx-live[data-state='polling']")
    wait_version(page, "rev-4")
    page.wait_for_selector(f"[data-testid='ctx-inbox-entry'][data-run-id='{ended['run_id']}'][data-verdict='fresh']")
    assert page.inner_text("[data-testid='ctx-inbox-title']") == "1 result finished while you were away"
    # An edit made elsewhere shows up within a poll.
    assert httpx.put(f"{server.url}/contexts/{key}", json={"version": "rev-5"}).status_code == 200
    page.wait_for_selector("[data-testid='ctx-version']:text-is('rev-5')", timeout=10_000)
    page.click("[data-testid='ctx-dismiss']")
    page.wait_for_selector("[data-testid='ctx-inbox-empty']")
    assert httpx.get(f"{server.url}/contexts/{key}").json()["inbox"] == []
