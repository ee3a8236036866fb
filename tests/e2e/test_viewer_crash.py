"""The viewer while the worker running a run is killed (-9): it resumes on another worker.

One durable redis-server, one API process (no workers of its own) and two worker processes
sharing a checkpoint directory. The page watches a slow ``reflective`` run; a few steps in,
the worker that owns it is killed. After the lease (2 s) the other worker resumes it, the log
carries STATUS {state: "resumed", attempt: 2, rewind_to}, and the page must show a
"resumed (attempt 2)" marker and end with lanes equal to the log folded at the rewind.
The screenshot goes to test-output/viewer-after-crash.png (SSE: viewer-after-crash-sse.png).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest

from tests.e2e.test_viewer import (
    CHROMIUM, CHROMIUM_ARGS, LAPTOP, OUT, TOKENS_PER_S, Page, assert_matches_log, full_log, shot,
    transports, wait_succeeded, watch_new_run)
from tests.support import ServerProcess, redis_topology

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install the Debian package (apt-get install -y chromium); .ci/run does",
)

LEASE_S = 2


@pytest.fixture
def topology() -> Iterator[tuple[ServerProcess, dict[str, ServerProcess]]]:
    """A durable redis-server, an API process with ``--workers 0``, two worker processes."""
    env = {"THOUGHTSTREAM_WORKER_LEASE_S": str(LEASE_S),
           "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": TOKENS_PER_S}
    with redis_topology(["api"], ["w1", "w2"], env) as (_redis, procs):
        yield procs["api"], {"w1": procs["w1"], "w2": procs["w2"]}


@pytest.fixture
def page(topology: Any) -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    api, _ = topology
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport=LAPTOP, device_scale_factor=1)
            p = Page(ctx, api.url)
            yield p
            assert not p.errors, f"JavaScript errors in the page: {p.errors}"
        finally:
            browser.close()


def wait_owner_a_few_steps_in(api: ServerProcess, workers: dict[str, ServerProcess],
                              run_id: str, timeout: float = 30) -> ServerProcess:
    """The worker process running the run, once the run has completed a couple of steps."""
    deadline = time.monotonic() + timeout
    while True:
        snap = httpx.get(f"{api.url}/runs/{run_id}", timeout=5).json()
        assert snap["status"] in ("queued", "running"), f"run ended before the kill: {snap}"
        if snap["status"] == "running" and snap.get("worker") and snap.get("progress", {}).get("step", -1) >= 2:
            break
        assert time.monotonic() < deadline, f"run not 2 steps in after {timeout}s: {snap}"
        time.sleep(0.05)
    owners = [p for p in workers.values() if f"-{p.proc.pid}-" in snap["worker"]]
    assert len(owners) == 1, f"no single worker process owns {snap['worker']!r}"
    return owners[0]


@pytest.mark.parametrize("transport", transports())
def test_killed_worker_mid_run_shows_resumed_and_ends_equal_to_the_folded_log(
        page: Page, topology: Any, transport: str) -> None:
    api, workers = topology
    run_id = watch_new_run(page, api, transport)
    owner = wait_owner_a_few_steps_in(api, workers, run_id)
    time.sleep(0.3)  # mid-step: the failed attempt emits something the rewind must discard
    assert httpx.get(f"{api.url}/runs/{run_id}", timeout=5).json()["status"] == "running"
    killed_at = time.monotonic()
    owner.kill()

    # The other worker picks it up after the lease; the page says so while the run goes on.
    page.wait_for_selector("[data-testid='resumed-marker']", timeout=(LEASE_S + 15) * 1000)
    print(f"resumed marker shown {time.monotonic() - killed_at:.2f}s after kill -9 (lease {LEASE_S}s)")
    wait_succeeded(page)

    log = full_log(api, run_id)
    resumed = [e for e in log if e["ns"] == "STATUS" and e["data"].get("state") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["attempt"] == 2, resumed
    print(f"rewind to #{resumed[0]['data']['rewind_to']}: dropped "
          f"{resumed[0]['seq'] - 1 - resumed[0]['data']['rewind_to']} events of attempt 1")

    markers = page.locator("[data-testid='resumed-marker']")
    assert markers.count() >= 1
    assert markers.first.is_visible()
    assert "resumed (attempt 2)" in markers.first.inner_text()
    assert "attempt 2" in page.inner_text(".chip-resumed")
    assert page.get_attribute("[data-testid='run-status']", "data-status") == "succeeded"
    # THOUGHT text, tool cards, verdicts, kept seqs, answer and step chips equal the folded log.
    assert_matches_log(page, api, run_id)

    page.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.4)  # entrance animations settle
    shot(page, "viewer-after-crash.png" if transport == "socketio" else "viewer-after-crash-sse.png")
