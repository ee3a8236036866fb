"""The viewer's Operations tab (issue 11, "The operator's view") in headless Chromium.

A real server with one run slot and a slow built-in agent, so runs started over HTTP make a
real backlog; the tab must show what GET /admin/overview says (queued, running against the
cap, an oldest wait that grows), draw sparklines, poll only while it is open and visible, and
fit a phone. With AUTH=jwt only an admin gets the tab. Screenshots: test-output/viewer-ops*.png.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx
import pytest

from tests.auth_support import Minter, bearer
from tests.e2e.test_viewer import CHROMIUM, LAPTOP, PHONE, Page, browser, shot
from tests.support import ServerProcess

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install the Debian package (apt-get install -y chromium); .ci/run does",
)

RUNS = 8
# One slot and 5 tokens/s: each run lasts several seconds, the others wait queued.
BACKLOG_ENV = {"THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "1", "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "5"}
OVERVIEW = "/admin/overview"


@pytest.fixture(scope="module")
def backlog() -> Iterator[ServerProcess]:
    with ServerProcess(env=BACKLOG_ENV) as proc:
        for i in range(RUNS):
            res = httpx.post(proc.url + "/runs",
                             json={"agent": "reflective", "input": {"question": f"What is {i + 2}*7?"}})
            assert res.status_code == 202, res.text
        yield proc




class OpsPage(Page):
    """A page that counts its GET /admin/overview requests (and raises nothing in JS)."""

    def __init__(self, context: Any, base: str) -> None:
        super().__init__(context, base)
        self.overview_requests: list[Any] = []
        self.page.on("request", lambda r: self.overview_requests.append(r) if OVERVIEW in r.url else None)


@pytest.fixture
def make_page(browser: Any) -> Iterator[Any]:
    pages: list[OpsPage] = []

    def make(base: str, viewport: dict[str, int] = LAPTOP) -> OpsPage:
        p = OpsPage(browser.new_context(viewport=viewport, device_scale_factor=1), base)
        pages.append(p)
        return p

    yield make
    errors = [e for p in pages for e in p.errors]
    for p in pages:
        p.context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


# --------------------------------------------------------------------------- helpers


def overview(server: ServerProcess, headers: dict[str, str] | None = None) -> dict[str, Any]:
    res = httpx.get(server.url + OVERVIEW, headers=headers or {})
    assert res.status_code == 200, res.text
    return res.json()


def samples(page: OpsPage) -> int:
    return page.evaluate("() => window.__ts.ops.samples.length")


def wait_next_sample(page: OpsPage, timeout: float = 10_000) -> int:
    n = samples(page)
    page.wait_for_function("(n) => window.__ts.ops.samples.length > n", arg=n, timeout=timeout)
    return samples(page)


def tenant_value(page: OpsPage, tenant: str, field: str) -> str:
    return page.get_attribute(f"[data-testid='ops-tenant'][data-tenant='{tenant}'] [data-field='{field}']",
                              "data-value") or ""


def open_ops(page: OpsPage) -> None:
    page.goto(page.base + "/")
    page.wait_for_selector("#tab-ops", state="visible")
    page.click("#tab-ops")
    page.wait_for_selector("#view-ops:not([hidden]) [data-testid='ops-state'][data-phase='live']")
    assert page.get_attribute("#tab-ops", "aria-selected") == "true"
    assert page.locator("#view-runs").is_hidden()


def requests_during(page: OpsPage, seconds: float) -> int:
    before = len(page.overview_requests)
    page.wait_for_timeout(seconds * 1000)
    return len(page.overview_requests) - before


# --------------------------------------------------------------------------- tests


def test_operations_tab_shows_the_live_backlog(make_page: Any, backlog: ServerProcess) -> None:
    """Queued as the server counts it (±1 as runs move), running 1 of the one slot, an oldest wait
    that grows from one tick to the next, sparklines; polling stops in the background and on the
    Runs tab."""
    page = make_page(backlog.url)
    open_ops(page)
    row = "[data-testid='ops-tenant'][data-tenant='default']"
    page.wait_for_selector(row)

    wait_next_sample(page)
    server = overview(backlog)["tenants"]["default"]
    shown = int(tenant_value(page, "default", "queued"))
    assert server["queued"] >= 3, f"no real backlog: {server}"
    assert abs(shown - server["queued"]) <= 1, (shown, server)
    assert page.inner_text(f"{row} [data-field='running']") == "1"
    assert page.get_attribute(f"{row} [data-field='running']", "data-value") == "1"
    assert page.get_attribute("[data-total='running']", "data-value") == "1"
    assert abs(int(page.get_attribute("[data-total='queued']", "data-value") or -9) - server["queued"]) <= 1
    assert page.inner_text(f"{row} [data-field='weight']") == "1"

    age1 = float(tenant_value(page, "default", "oldest"))
    wait_next_sample(page)
    age2 = float(tenant_value(page, "default", "oldest"))
    assert age2 > age1, f"the oldest wait should grow between ticks: {age1} then {age2}"
    assert page.inner_text(f"{row} [data-field='oldest']").endswith(" s")

    # A sparkline per figure, with a line once there are two samples.
    assert page.locator(f"{row} svg.spark").count() == 3
    assert page.locator(f"{row} svg.spark polyline").count() >= 1
    assert page.locator("[data-testid='ops-totals'] svg.spark").count() == 5
    # Not reported by this server (yet): shown as "—", never a made-up number.
    for key in ("events_per_s", "delivery_lag_p99_s"):
        if key not in overview(backlog):
            assert page.inner_text(f"[data-total='{key}']") == "—"
    # The one worker takes every agent: reflective is covered.
    assert page.get_attribute("[data-testid='ops-agent'][data-agent='reflective']", "data-covered") == "true"
    assert page.inner_text("[data-testid='ops-backend']") == "memory · up"
    shot(page, "viewer-ops.png", full_page=True)

    # In the background: no polling, and it says so; back in front: polling at once.
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    assert page.get_attribute("[data-testid='ops-state']", "data-phase") == "paused"
    assert requests_during(page, 2.6) == 0
    # Counted while paused (nothing polls): the visibilitychange polls at once, and its
    # answer can land before a count taken after it, leaving only the next tick to wait for.
    paused_at = samples(page)
    page.evaluate("""() => {
        delete document.hidden;
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_function("(n) => window.__ts.ops.samples.length > n", arg=paused_at, timeout=10_000)
    assert page.get_attribute("[data-testid='ops-state']", "data-phase") == "live"

    # The Runs tab: no polling either, and the runs list is back.
    page.click("#tab-runs")
    assert page.locator("#view-ops").is_hidden()
    page.wait_for_selector(".run-item")
    assert requests_during(page, 2.6) == 0


def test_operations_tab_at_phone_width(make_page: Any, backlog: ServerProcess) -> None:
    """#view=ops opens the tab directly; nothing is wider than the screen."""
    page = make_page(backlog.url, PHONE)
    page.goto(page.base + "/#view=ops")
    page.wait_for_selector("[data-testid='ops-tenant'][data-tenant='default']")
    wait_next_sample(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for sel in ("[data-testid='ops-tenant']", "[data-testid='ops-totals']", "#tab-ops"):
        box = page.locator(sel).first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, sel
    shot(page, "viewer-ops-phone.png", full_page=True)


def fake_overview(i: int) -> dict[str, Any]:
    """What a Redis deployment with a metrics-enabled server could answer, tick i."""
    return {
        "tenants": {
            "acme": {"queued": 12 - i, "running": 2, "cap": 2, "weight": 3, "oldest_age_s": 41.2 + 2 * i,
                     "by_agent": {"reflective": {"queued": 12 - i, "running": 2}}},
            "gamma": {"queued": 3, "running": 0, "cap": None, "weight": 1, "oldest_age_s": 9.5 + 2 * i,
                      "by_agent": {"heavy": {"queued": 3, "running": 0}}},
        },
        "workers": {"reflective": 2},
        "queued_total": 15 - i, "running_total": 2,
        "backend": {"name": "redis", "up": i < 2},
        "agents": ["heavy", "reflective"],
        "events_per_s": 1234.4, "delivery_lag_p99_s": 0.012,
        "ts": time.time(),
    }


def test_reported_figures_caps_and_agents_without_a_worker(make_page: Any, backlog: ServerProcess) -> None:
    """Answers as a Redis deployment with metrics gives them: events/s and lag p99 shown, a
    tenant at its cap marked, an agent no worker serves highlighted, the backend going down."""
    page = make_page(backlog.url)
    ticks = {"n": 0}

    def answer(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(fake_overview(ticks["n"])))
        ticks["n"] += 1

    page.route(f"**{OVERVIEW}", answer)
    open_ops(page)
    page.wait_for_function("() => window.__ts.ops.samples.length >= 2")
    assert page.inner_text("[data-total='events_per_s']") == "1,234"
    assert page.inner_text("[data-total='delivery_lag_p99_s']") == "12 ms"
    assert "not reported" not in page.inner_text("[data-testid='ops-totals']")
    acme = "[data-testid='ops-tenant'][data-tenant='acme']"
    assert "at-cap" in (page.get_attribute(acme, "class") or "")
    assert page.inner_text(f"{acme} .ops-running") == "2 / 2"
    assert page.inner_text(f"{acme} [data-field='weight']") == "3"
    # The busiest tenant first.
    assert page.locator("[data-testid='ops-tenant']").evaluate_all("rs => rs.map(r => r.dataset.tenant)") == [
        "acme", "gamma"]
    heavy = "[data-testid='ops-agent'][data-agent='heavy']"
    assert page.get_attribute(heavy, "data-covered") == "false"
    assert "no worker · 3 waiting" in page.inner_text(heavy)
    assert page.get_attribute("[data-testid='ops-agent'][data-agent='reflective']", "data-covered") == "true"
    assert page.locator("[data-testid='ops-agent'][data-agent='*']").count() == 0
    assert "1 agent has none" in page.inner_text("[data-card='workers']")
    page.wait_for_function("() => window.__ts.ops.samples.length >= 3")
    assert page.inner_text("[data-testid='ops-backend']") == "redis · down"
    assert page.locator("[data-testid='ops-totals'] svg.spark polyline").count() == 5
    shot(page, "viewer-ops-figures.png", full_page=True)


# --------------------------------------------------------------------------- with auth


@pytest.fixture(scope="module")
def minter() -> Minter:
    return Minter.hs256()


@pytest.fixture(scope="module")
def jwt_server(minter: Minter) -> Iterator[ServerProcess]:
    env = {"THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": minter.secret}
    with ServerProcess(env=env) as proc:
        yield proc


def sign_in(page: OpsPage, token: str) -> None:
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#signin-cred", token)
    page.click("#signin-btn")
    page.wait_for_selector("#signin", state="hidden")
    page.wait_for_selector("#account[data-state='signed-in']")


def test_only_admins_get_the_operations_tab(make_page: Any, jwt_server: ServerProcess, minter: Minter) -> None:
    """A member sees no tab (not even through #view=ops) and gets 403 from the endpoint; an
    admin's tab polls with the admin's token; signing out takes the tab away."""
    member = minter.token(tenant="acme", sub="mia", roles=["member"])
    admin = minter.token(tenant="ops", sub="ada", roles=["admin"])
    assert httpx.get(jwt_server.url + OVERVIEW, headers=bearer(member)).status_code == 403
    res = httpx.post(jwt_server.url + "/runs", headers=bearer(member),
                     json={"agent": "reflective", "input": {"question": "What is 6*7?"}})
    assert res.status_code == 202, res.text

    page = make_page(jwt_server.url)
    page.goto(page.base + "/#view=ops")
    sign_in(page, member)
    page.wait_for_selector(".run-item")
    assert page.locator("#tabbar").is_hidden()
    assert page.locator("#tab-ops").is_hidden()
    assert page.locator("#view-ops").is_hidden()
    assert page.locator("#view-runs").is_visible()
    assert "view=ops" not in page.evaluate("location.hash")
    assert not page.overview_requests

    page.click("#switch-cred")
    sign_in(page, admin)
    page.wait_for_selector("#tab-ops", state="visible")
    page.click("#tab-ops")
    page.wait_for_selector("[data-testid='ops-state'][data-phase='live']")
    assert page.locator("[data-testid='ops-tenants']").is_visible()
    queued = overview(jwt_server, bearer(admin))["queued_total"]
    assert page.get_attribute("[data-total='queued']", "data-value") == str(queued)
    assert page.overview_requests
    assert all(r.all_headers().get("authorization") == f"Bearer {admin}" for r in page.overview_requests)
    assert all(admin not in r.url for r in page.overview_requests), "the token never goes in a URL"

    page.click("#tab-runs")
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.locator("#tabbar").is_hidden()
    assert page.locator("#view-ops").is_hidden()
