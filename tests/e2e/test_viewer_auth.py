"""The viewer signing in (issue 10), in headless Chromium against a server with AUTH=jwt.

The test mints its own HS256 tokens (a random secret per run) and API keys (a keys file in a
temporary directory); nothing is checked in. What a person sees: without a credential the
sign-in box; after pasting a token, who they are; runs watched to the end over SSE (with
tickets, the credential never in a URL) and Socket.IO (the connect ``auth`` payload); another
tenant's runs invisible; a token that expires mid-run asks for a new one and the watch goes
on from where it stopped, nothing missing, nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.e2e.test_viewer import (
    CHROMIUM, LAPTOP, QUESTION, Page, browser, fold, lane_text, shot, thought_text, transports)
from tests.support import ServerProcess

jwt = pytest.importorskip("jwt", reason="PyJWT is not installed")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install the Debian package (apt-get install -y chromium); .ci/run does",
)

SECRET = secrets.token_hex(32)
API_KEY = "tsk_" + secrets.token_urlsafe(24)
# Slow enough that a run outlives a token minted to expire a few seconds into it.
TOKENS_PER_S = "15"
EXPIRING_S = "2"


def mint(tenant: str = "acme", sub: str | None = None, roles: list[str] | None = None, ttl: float = 600) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub or f"user-{uuid.uuid4().hex[:8]}", "tenant": tenant,
                              "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex}
    if roles is not None:
        claims["roles"] = roles
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    keys = Path(tempfile.mkdtemp(prefix="ts-keys-")) / "api_keys.json"
    keys.write_text(json.dumps({hashlib.sha256(API_KEY.encode()).hexdigest():
                                {"tenant": "keyco", "roles": ["member"], "name": "ci-bot"}}))
    env = {"THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": SECRET,
           "THOUGHTSTREAM_API_KEYS_FILE": str(keys), "THOUGHTSTREAM_AUTH_EXPIRING_S": EXPIRING_S,
           "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": TOKENS_PER_S}
    with ServerProcess(env=env) as proc:
        yield proc




class RecordingPage(Page):
    """A page that also keeps every request it made (to check where the credential went)."""

    def __init__(self, context: Any, base: str) -> None:
        super().__init__(context, base)
        self.requests: list[Any] = []
        self.page.on("request", lambda req: self.requests.append(req))


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[RecordingPage]:
    ctx = browser.new_context(viewport=LAPTOP, device_scale_factor=1)
    p = RecordingPage(ctx, server.url)
    try:
        yield p
        assert not p.errors, f"JavaScript errors in the page: {p.errors}"
    finally:
        ctx.close()


# --------------------------------------------------------------------------- helpers


def start_run(server: ServerProcess, headers: dict[str, str], question: str = QUESTION) -> str:
    res = httpx.post(server.url + "/runs", headers=headers, json={"agent": "reflective", "input": {"question": question}})
    assert res.status_code == 202, res.text
    return res.json()["run_id"]


def full_log(server: ServerProcess, headers: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/runs/{run_id}/events", params={"last_event_id": "0"},
                      headers=headers, timeout=httpx.Timeout(60.0)) as res:
        assert res.status_code == 200
        data: list[str] = []
        for line in res.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "" and data:
                ev = json.loads("\n".join(data))
                data = []
                events.append(ev)
                if ev["ns"] == "STATUS" and ev["data"].get("state") in ("succeeded", "failed", "cancelled"):
                    break
    return fold(events)


def assert_shows_log(page: RecordingPage, server: ServerProcess, headers: dict[str, str], run_id: str) -> None:
    """Every event of the run once, in order, and the THOUGHT lane equal to the log's text."""
    log = full_log(server, headers, run_id)
    assert page.evaluate("() => window.__ts.watch.events.map(e => e.seq)") == [e["seq"] for e in log]
    assert lane_text(page) == thought_text(log)
    assert page.locator("[data-metric='events']").inner_text() == str(len(log))


def sign_in(page: RecordingPage, credential: str) -> None:
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#signin-cred", credential)
    page.click("#signin-btn")
    page.wait_for_selector("#signin", state="hidden")
    page.wait_for_selector("#account[data-state='signed-in']")


def wait_ended(page: Page) -> None:
    page.wait_for_selector("#conn[data-state='ended']", timeout=60_000)
    assert page.get_attribute("[data-testid='run-status']", "data-status") == "succeeded"


def conn_states(page: Page) -> list[str]:
    return page.evaluate("() => window.__ts.connLog.map(x => x.state)")


def assert_credential_only_in_headers(page: RecordingPage, credential: str) -> None:
    """Not in any URL, nor in localStorage; in sessionStorage (this tab only)."""
    for req in page.requests:
        assert credential not in req.url, req.url
    assert page.evaluate("(c) => sessionStorage.getItem('ts.credential') === c", credential)
    assert page.evaluate("(c) => !Object.values(localStorage).some(v => v.includes(c))", credential)


# --------------------------------------------------------------------------- tests


def test_without_a_credential_the_viewer_asks_to_sign_in(page: RecordingPage, server: ServerProcess) -> None:
    """No credential: the runs list is refused (401) and the sign-in box is shown; a bad token is refused with the server's reason."""
    page.goto(page.base + "/")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.locator("#account").is_hidden()
    assert page.locator("[data-testid='signin-reason']").is_hidden(), "a first visit is not an error"
    assert "Sign in" in page.inner_text("#runs-empty")
    refused = [r for r in page.requests if r.url.endswith("/runs?limit=30")]
    assert not refused or refused[0].response().status == 401
    assert httpx.get(server.url + "/runs").status_code == 401

    page.fill("#signin-cred", jwt.encode({"sub": "x", "tenant": "acme", "exp": int(time.time()) + 60},
                                         "not-the-secret-" * 3, algorithm="HS256"))
    page.click("#signin-btn")
    page.wait_for_selector("#signin-error:not([hidden])")
    assert page.locator("#signin").is_visible()
    assert page.evaluate("() => sessionStorage.getItem('ts.credential')") is None
    shot(page, "viewer-signin.png")


@pytest.mark.parametrize("transport", transports())
def test_member_token_signs_in_and_watches_a_run_to_the_end(
        page: RecordingPage, server: ServerProcess, transport: str) -> None:
    """A pasted member JWT shows who is signed in and carries a run from the form to its end, over SSE (tickets) and Socket.IO (auth payload)."""
    sub = f"alice-{uuid.uuid4().hex[:6]}"
    token = mint("acme", sub, ["member"])
    page.goto(f"{page.base}/#transport={transport}")
    sign_in(page, token)
    signed_in_at = len(page.requests)
    assert page.inner_text("[data-testid='who-tenant']") == "acme"
    assert page.inner_text("[data-testid='who-sub']") == sub
    assert "member" in page.inner_text("[data-testid='who-roles']")
    assert page.inner_text("[data-testid='who-expires']").startswith("in ")

    page.wait_for_selector("textarea[data-field='question']")
    page.fill("textarea[data-field='question']", QUESTION)
    page.click("#start-btn")
    page.wait_for_selector("[data-testid='run-status'][data-status='running']")
    run_id = page.get_attribute(".run", "data-run-id")
    label = "Socket.IO" if transport == "socketio" else "SSE"
    page.wait_for_function("(l) => document.querySelector('#conn .conn-label').textContent.includes(l)", arg=label)
    page.wait_for_selector(f".run-item[data-run-id='{run_id}']")
    wait_ended(page)
    assert page.evaluate("() => window.__ts.watch.transport") == transport
    assert_shows_log(page, server, bearer(token), run_id)
    assert "unauthorized" not in conn_states(page)
    assert_credential_only_in_headers(page, token)

    api_calls = [r for r in page.requests[signed_in_at:]
                 if r.resource_type == "fetch" and "/events" not in r.url and "/socket.io/" not in r.url]
    assert api_calls and all(r.all_headers().get("authorization") == f"Bearer {token}" for r in api_calls)
    streams = [r for r in page.requests if f"/runs/{run_id}/events" in r.url]
    if transport == "sse":
        assert streams and all("ticket=" in r.url for r in streams)
        # The ticket alone opens the stream: what a plain EventSource can do.
        assert all("authorization" not in r.all_headers() for r in streams)
    else:
        assert not streams
    shot(page, f"viewer-signed-in-{transport}.png")


def test_api_key_signs_in_and_lists_its_tenants_runs(page: RecordingPage, server: ServerProcess) -> None:
    """A pasted API key is sent as X-Api-Key: the viewer shows the key's tenant and lists that tenant's runs."""
    run_id = start_run(server, {"X-Api-Key": API_KEY}, "What is 6*7?")
    page.goto(page.base + "/")
    sign_in(page, API_KEY)
    assert page.inner_text("[data-testid='who-tenant']") == "keyco"
    assert page.inner_text("[data-testid='who-sub']") == "key:ci-bot"
    assert page.inner_text("[data-testid='who-via']") == "API key"
    assert "never" in page.inner_text("[data-testid='who-expires']")
    page.wait_for_selector(f".run-item[data-run-id='{run_id}']")
    calls = [r for r in page.requests if r.url.endswith("/runs?limit=30")]
    assert calls[-1].all_headers().get("x-api-key") == API_KEY
    assert_credential_only_in_headers(page, API_KEY)


def test_another_tenants_runs_stay_invisible(page: RecordingPage, server: ServerProcess) -> None:
    """Tenant B's viewer neither lists tenant A's run nor opens it by its link."""
    a = mint("tenant-a", roles=["member"])
    b = mint("tenant-b", roles=["member"])
    run_a = start_run(server, bearer(a), "What is 2*21?")
    run_b = start_run(server, bearer(b), "What is 3*14?")
    page.goto(page.base + "/")
    sign_in(page, b)
    page.wait_for_selector(f".run-item[data-run-id='{run_b}']")
    assert page.locator(f".run-item[data-run-id='{run_a}']").count() == 0

    page.evaluate("(h) => { location.hash = h; }", f"run={run_a}&transport=sse")
    # Two answers put up a .notice-error: GET /runs/{id} (404: "Unknown run.") and the watch
    # failing (ticket, then the stream: 404, "Cannot watch this run."), in either order.
    page.wait_for_selector(".run .notice-error:has-text('Unknown run')")
    assert "Unknown run" in page.inner_text(".run")
    assert page.evaluate("() => window.__ts.watch.events.length") == 0


@pytest.mark.parametrize("transport", transports())
def test_token_expiring_mid_run_asks_to_sign_in_and_resumes_without_a_gap(
        page: RecordingPage, server: ServerProcess, transport: str) -> None:
    """The token expires while the run streams: the sign-in box says so, and a new token continues the watch from the last event shown."""
    sub = f"bob-{uuid.uuid4().hex[:6]}"
    page.goto(page.base + "/")
    page.wait_for_selector("#signin:not([hidden])")
    # Minted once the page is up, not before it loads: its few seconds are for signing in,
    # opening the watch and streaming (exp is whole seconds: 4-5 s from here), and a run
    # lasts about 9 s at this pace, so it still runs when the token ends.
    short = mint("acme", sub, ["member"], ttl=5)
    sign_in(page, short)
    run_id = start_run(server, bearer(mint("acme", sub, ["member"])))
    page.evaluate("(h) => { location.hash = h; }", f"run={run_id}&transport={transport}")
    page.wait_for_selector("#conn[data-state='live']")

    page.wait_for_selector("#signin:not([hidden])[data-code='token_expired']", timeout=15_000)
    page.wait_for_selector("#conn[data-state='unauthorized']", timeout=10_000)
    assert page.get_attribute("#signin", "data-code") == "token_expired"
    assert "expired" in page.inner_text("[data-testid='signin-reason']").lower()
    shown = page.evaluate("() => window.__ts.watch.lastSeq")
    assert shown and shown > 1
    assert page.evaluate("() => sessionStorage.getItem('ts.credential')") is None, "a dead token stays stored"
    status = httpx.get(f"{server.url}/runs/{run_id}", headers=bearer(mint("acme", sub))).json()["status"]
    assert status == "running", "the run ended before the token did: nothing to resume"
    shot(page, f"viewer-token-expired-{transport}.png")

    fresh = mint("acme", sub, ["member"])
    page.fill("#signin-cred", fresh)
    page.click("#signin-btn")
    page.wait_for_selector("#account[data-state='signed-in']")
    wait_ended(page)
    states = conn_states(page)
    resumed = states[states.index("unauthorized"):]
    assert "resynced" in resumed, states
    resync = page.evaluate("() => window.__ts.connLog.filter(x => x.state === 'resynced').map(x => x.after)")
    assert resync[-1] is not None and resync[-1] >= shown
    assert_shows_log(page, server, bearer(fresh), run_id)


@pytest.mark.parametrize("transport", transports()[:1])
def test_signing_in_again_before_expiry_refreshes_the_socket(
        page: RecordingPage, server: ServerProcess, transport: str) -> None:
    """auth_expiring prompts for a new token; pasting one refreshes the open socket: no disconnect, no gap."""
    sub = f"carol-{uuid.uuid4().hex[:6]}"
    page.goto(page.base + "/")
    page.wait_for_selector("#signin:not([hidden])")
    # Minted once the page is up: exp is 6-7 s from here (whole seconds). Signing in and
    # going live must come before the prompt at exp - AUTH_EXPIRING_S, or it comes at once,
    # with less than AUTH_EXPIRING_S left to sign in again and refresh the socket.
    short = mint("acme", sub, ["member"], ttl=7)
    sign_in(page, short)
    run_id = start_run(server, bearer(mint("acme", sub, ["member"])))
    page.evaluate("(h) => { location.hash = h; }", f"run={run_id}&transport=socketio")
    page.wait_for_selector("#conn[data-state='live']")
    # AUTH_EXPIRING_S before exp: a soft prompt (the token still works, the run goes on).
    page.wait_for_selector("#signin:not([hidden])", timeout=10_000)
    assert "expires" in page.inner_text("[data-testid='signin-reason']")
    assert page.get_attribute("#conn", "data-state") == "live"

    page.fill("#signin-cred", mint("acme", sub, ["member"]))
    page.click("#signin-btn")
    page.wait_for_selector("#signin", state="hidden")
    page.wait_for_function("() => window.__ts.auth.who && window.__ts.auth.who.expires_at > Date.now() / 1000 + 60")
    time.sleep(4)  # past the first token's exp: the socket must still be the same, live one
    wait_ended(page)
    states = conn_states(page)
    assert "unauthorized" not in states and "reconnecting" not in states, states
    assert_shows_log(page, server, bearer(mint("acme", sub)), run_id)


@pytest.mark.parametrize("transport", transports())
def test_revoked_token_ends_the_stream_with_the_reason(
        page: RecordingPage, server: ServerProcess, transport: str) -> None:
    """POST /admin/revoke of the signed-in subject: the open stream ends with auth_revoked and the viewer asks to sign in again."""
    sub = f"dave-{uuid.uuid4().hex[:6]}"
    token = mint("acme", sub, ["member"])
    page.goto(page.base + "/")
    sign_in(page, token)
    run_id = start_run(server, bearer(token))
    page.evaluate("(h) => { location.hash = h; }", f"run={run_id}&transport={transport}")
    page.wait_for_selector("#conn[data-state='live']")
    res = httpx.post(server.url + "/admin/revoke", headers=bearer(mint("acme", "root", ["admin"])), json={"sub": sub})
    assert res.status_code == 200, res.text
    page.wait_for_selector("#signin:not([hidden])[data-code='revoked']", timeout=5_000)
    assert page.get_attribute("#conn", "data-state") == "unauthorized"
    assert "revoked" in page.inner_text("[data-testid='signin-reason']").lower()


def test_viewer_role_watches_but_cannot_start_runs(page: RecordingPage, server: ServerProcess) -> None:
    """A viewer-role token lists its tenant's runs while the form says it cannot start one (the server would answer 403)."""
    run_id = start_run(server, bearer(mint("acme", roles=["member"])), "What is 5*5?")
    page.goto(page.base + "/")
    sign_in(page, mint("acme", "eve", ["viewer"]))
    page.wait_for_selector(f".run-item[data-run-id='{run_id}']")
    assert page.is_disabled("#start-btn")
    assert "not start" in page.inner_text("#role-note")
