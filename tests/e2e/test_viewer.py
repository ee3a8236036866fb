"""The live viewer (static/) in headless Chromium against a real server process.

What a person watching an agent sees: start a run from the page, text growing in the
THOUGHT lane, tool cards, critic verdicts, the final answer; and that a reload or a
network cut mid-run ends with lanes equal to the run's log - nothing missing, nothing
twice - over Socket.IO and over SSE. Screenshots go to test-output/ for review.

Needs the Debian ``chromium`` package (/usr/bin/chromium; .ci/run installs it) and, for
the Socket.IO tests, the browser library from ``npm ci --prefix static``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.support import ROOT, ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SOCKETIO_SERVER = ROOT / "server" / "transports" / "socketio.py"
SOCKETIO_LIB = ROOT / "static" / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
OUT = ROOT / "test-output"
# Slow enough that a run lasts several seconds: time to reload or cut the network mid-run.
TOKENS_PER_S = "30"
QUESTION = "What is 17*23 and when was the Eiffel tower built?"
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing: install the Debian package (apt-get install -y chromium); .ci/run does",
)


def transports() -> list[Any]:
    socketio = pytest.param("socketio", id="socketio")
    if not SOCKETIO_SERVER.exists():
        socketio = pytest.param("socketio", id="socketio", marks=pytest.mark.skip(
            reason="server/transports/socketio.py does not exist yet"))
    elif not SOCKETIO_LIB.exists():
        socketio = pytest.param("socketio", id="socketio", marks=pytest.mark.skip(
            reason="the Socket.IO browser library is not installed: run npm ci --prefix static"))
    return [socketio, pytest.param("sse", id="sse")]


# --------------------------------------------------------------------------- fixtures


FAILING_GRAPH = ROOT / "tests" / "fixtures" / "failing_graph.py"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # User graphs beside the built-in agent: their own namespaces get generic lanes.
    agents = ["--agent", "echo=tests.fixtures.echo_graph:graph"]
    if FAILING_GRAPH.exists():
        agents += ["--agent", "failing=tests.fixtures.failing_graph:graph"]
    with ServerProcess(*agents, env={"THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": TOKENS_PER_S}) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page plus the JavaScript errors it raised (any is a test failure)."""

    def __init__(self, context: Any, base: str) -> None:
        self.context = context
        self.base = base
        self.page = context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)


@pytest.fixture
def make_page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    contexts: list[Any] = []
    pages: list[Page] = []

    def make(viewport: dict[str, int] = LAPTOP) -> Page:
        ctx = browser.new_context(viewport=viewport, device_scale_factor=1)
        contexts.append(ctx)
        p = Page(ctx, server.url)
        pages.append(p)
        return p

    yield make
    errors = [e for p in pages for e in p.errors]
    for ctx in contexts:
        ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


# --------------------------------------------------------------------------- helpers


def start_run(server: ServerProcess, question: str = QUESTION) -> str:
    res = httpx.post(server.url + "/runs", json={"agent": "reflective", "input": {"question": question}})
    assert res.status_code == 202, res.text
    return res.json()["run_id"]


def run_status(server: ServerProcess, run_id: str) -> str:
    return httpx.get(f"{server.url}/runs/{run_id}").json()["status"]


def wait_log_past(server: ServerProcess, run_id: str, seq: int, timeout: float = 20.0) -> None:
    """GET /runs/{id} until the run's log holds an event after ``seq`` (its record's last_seq)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = httpx.get(f"{server.url}/runs/{run_id}").json()
        if (snap.get("last_seq") or 0) > seq:
            return
        assert snap["status"] == "running", f"the run ended before its log passed #{seq}: {snap['status']}"
        assert time.monotonic() < deadline, f"the log of {run_id} did not pass #{seq}: {snap.get('last_seq')}"
        time.sleep(0.05)


def full_log(server: ServerProcess, run_id: str) -> list[dict[str, Any]]:
    """Every event of a run, read over SSE from cursor 0 until the terminal STATUS."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/runs/{run_id}/events", params={"last_event_id": "0"},
                      timeout=httpx.Timeout(60.0)) as res:
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
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "the log itself has holes"
    return events


def fold(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply ``resumed`` rewinds (DESIGN.md contract item 7)."""
    out: list[dict[str, Any]] = []
    for ev in events:
        if ev["ns"] == "STATUS" and ev["data"].get("state") == "resumed":
            out = [e for e in out if e["seq"] <= ev["data"]["rewind_to"]]
        out.append(ev)
    return out


def thought_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"].get("text", "") for e in events if e["ns"] == "THOUGHT")


def lane_text(page: Page, ns: str = "THOUGHT") -> str:
    return page.evaluate(
        "(ns) => Array.from(document.querySelectorAll(`[data-lane='${ns}'] .tblock-text`))"
        ".map(e => e.textContent).join('')", ns)


def conn_states(page: Page) -> list[str]:
    return page.evaluate("() => window.__ts.connLog.map(x => x.state)")


def assert_matches_log(page: Page, server: ServerProcess, run_id: str) -> list[dict[str, Any]]:
    """The page shows exactly the (folded) log: same THOUGHT text, cards, verdicts, seqs."""
    log = fold(full_log(server, run_id))
    expected = thought_text(log)
    shown = lane_text(page)
    assert shown == expected, (
        f"THOUGHT lane differs from the log ({len(shown)} vs {len(expected)} chars)\n"
        f"page: {shown!r}\nlog:  {expected!r}")
    seqs = page.evaluate("() => window.__ts.watch.events.map(e => e.seq)")
    assert seqs == [e["seq"] for e in log], "the client kept events other than the log's, once each"
    calls = {e["data"]["call_id"] for e in log if e["ns"] == "TOOL_USE"}
    assert page.locator("[data-lane='TOOL_USE'] .tool").count() == len(calls)
    verdicts = [e["data"]["verdict"] for e in log if e["ns"] == "CRITIC_EVAL" and "verdict" in e["data"]]
    shown_verdicts = page.locator("[data-testid='verdict']").all_inner_texts()
    assert [v.strip().lower() for v in shown_verdicts] == verdicts
    assert page.locator("[data-metric='events']").inner_text() == str(len(log))
    output = next(e["data"]["output"] for e in log if e["ns"] == "RESULT")
    assert page.locator("[data-testid='answer-text']").inner_text().strip() == output["answer"].strip()
    # Progress: one chip per completed step, named after the nodes that ran.
    chips = [" ".join(t.split()[1:]) for t in page.locator(".steps .step.done").all_inner_texts()]
    assert chips == completed_steps(log)
    # THOUGHT grouped per node and round: one planner block per round, then the answer.
    blocks = page.locator("[data-lane='THOUGHT'] .tblock").evaluate_all("els => els.map(e => e.dataset.agent)")
    assert blocks == ["planner"] * output["rounds"] + ["answer"], blocks
    return log


def completed_steps(log: list[dict[str, Any]]) -> list[str]:
    """Nodes finished at each STEP boundary: its "completed", else the previous boundary's "next"."""
    out: list[str] = []
    pending: list[str] = []
    last: int | None = None
    for e in log:
        if e["ns"] != "STEP":
            continue
        d = e["data"]
        advanced = last is None or d.get("step", last + 1) > last
        done = d.get("completed", d.get("nodes", pending if advanced else []))
        done = [n for n in done if not n.startswith("__")]
        if done:
            out.append(" + ".join(done))
        pending = [n for n in d.get("next", []) if not n.startswith("__")]
        last = d.get("step", last)
    return out


def wait_text_longer(page: Page, than: int, timeout: float = 20_000) -> None:
    page.wait_for_function(
        "(n) => Array.from(document.querySelectorAll(\"[data-lane='THOUGHT'] .tblock-text\"))"
        ".map(e => e.textContent).join('').length > n", arg=than, timeout=timeout)


def wait_succeeded(page: Page) -> None:
    """The terminal STATUS arrived (the stream ended), and it says succeeded."""
    page.wait_for_selector("#conn[data-state='ended']", timeout=60_000)
    assert page.get_attribute("[data-testid='run-status']", "data-status") == "succeeded"


def watch_new_run(page: Page, server: ServerProcess, transport: str) -> str:
    """Load the viewer, then start a run over HTTP and open it by its link (#run=...)."""
    page.goto(f"{page.base}/#transport={transport}")
    page.wait_for_selector("textarea[data-field='question']")
    run_id = start_run(server)
    page.evaluate("(h) => { location.hash = h; }", f"run={run_id}&transport={transport}")
    page.wait_for_selector(f".run[data-run-id='{run_id}']")
    page.wait_for_selector("#conn[data-state='live']")
    return run_id


def shot(page: Page, name: str, **kw: Any) -> None:
    page.screenshot(path=str(OUT / name), **kw)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("transport", transports())
def test_start_a_run_and_watch_it_live(make_page: Any, server: ServerProcess, transport: str) -> None:
    page = make_page()
    page.goto(page.base + "/")
    page.wait_for_selector("textarea[data-field='question']")
    page.click(f"#transport-switch [data-transport='{transport}']")
    assert page.get_attribute(f"#transport-switch [data-transport='{transport}']", "aria-checked") == "true"
    page.fill("textarea[data-field='question']", QUESTION)
    page.click("#start-btn")

    page.wait_for_selector("[data-testid='run-status'][data-status='running']")
    run_id = page.get_attribute(".run", "data-run-id")
    assert f"run={run_id}" in page.evaluate("location.hash")
    label = "Socket.IO" if transport == "socketio" else "SSE"
    page.wait_for_function("(l) => document.querySelector('#conn .conn-label').textContent.includes(l)", arg=label)

    # THOUGHT text grows while we watch.
    wait_text_longer(page, 0)
    first = len(lane_text(page))
    wait_text_longer(page, first + 20)
    assert page.get_attribute("[data-testid='run-status']", "data-status") == "running"

    # A tool card with its arguments and result, then a critic verdict with a score.
    page.wait_for_selector("[data-lane='TOOL_USE'] .tool[data-state='ok'] .tool-args")
    # The arithmetic goes to the calculator first, in question order (issue 9: it multiplies).
    assert page.locator("[data-lane='TOOL_USE'] .tool-name").first.inner_text() == "calculator"
    page.wait_for_selector("[data-lane='CRITIC_EVAL'] [data-testid='verdict']")
    assert page.locator("[data-lane='CRITIC_EVAL'] .score-n").first.inner_text()
    if run_status(server, run_id) == "running":
        time.sleep(0.6)  # let the second round's thoughts start: a fuller picture to review
        shot(page, "viewer-midrun.png" if transport == "socketio" else "viewer-midrun-sse.png")

    wait_succeeded(page)
    page.wait_for_selector("[data-testid='answer-text']")
    assert page.locator("[data-lane='TOOL_USE'] .tool-name").all_inner_texts() == ["calculator", "search_corpus"]
    answer = page.inner_text("[data-testid='answer-text']")
    assert "391" in answer and "1887" in answer and "1889" in answer, answer
    assert_matches_log(page, server, run_id)
    states = conn_states(page)
    assert states[-1] == "ended" and "live" in states, states
    time.sleep(0.4)  # entrance animations settle
    shot(page, "viewer-done.png" if transport == "socketio" else "viewer-done-sse.png")


@pytest.mark.parametrize("transport", transports())
def test_reload_mid_run_shows_history_then_live(make_page: Any, server: ServerProcess, transport: str) -> None:
    page = make_page()
    run_id = watch_new_run(page, server, transport)
    wait_text_longer(page, 40)
    before = lane_text(page)
    assert run_status(server, run_id) == "running"

    page.reload()
    page.wait_for_selector(f".run[data-run-id='{run_id}']")
    # Everything from the start comes back (history), then the run goes on live.
    wait_text_longer(page, len(before))
    assert lane_text(page).startswith(before)
    page.wait_for_selector("[data-testid='run-status'][data-status='running']", timeout=5_000)
    assert "live" in conn_states(page)
    wait_succeeded(page)
    assert_matches_log(page, server, run_id)


@pytest.mark.parametrize("transport", transports())
def test_network_cut_mid_run_resyncs_without_gaps_or_duplicates(
        make_page: Any, server: ServerProcess, transport: str) -> None:
    page = make_page()
    run_id = watch_new_run(page, server, transport)
    wait_text_longer(page, 0)
    assert run_status(server, run_id) == "running"

    page.context.set_offline(True)
    page.wait_for_selector("#conn[data-state='reconnecting']", timeout=5_000)
    frozen = lane_text(page)
    # Offline until the run has gone on without the page (events the resync must bring), not
    # for a fixed time: at 30 tokens/s the whole run lasts about 4.5 s.
    cut_at = page.evaluate("() => window.__ts.watch.lastSeq")
    wait_log_past(server, run_id, cut_at + 15)
    assert run_status(server, run_id) == "running", "the run ended while offline: nothing left to see live"
    page.context.set_offline(False)

    page.wait_for_function(
        "() => { const s = window.__ts.connLog.map(x => x.state);"
        " const r = s.lastIndexOf('reconnecting'); return r >= 0 && s.indexOf('resynced', r) > r; }",
        timeout=15_000)
    assert page.get_attribute("#conn", "data-state") in ("resynced", "live", "ended")
    assert lane_text(page).startswith(frozen)
    if transport == "socketio":
        shot(page, "viewer-resynced.png")
    wait_succeeded(page)
    assert_matches_log(page, server, run_id)
    assert page.evaluate("() => window.__ts.watch.stats.reconnects") >= 1


@pytest.mark.parametrize("transport", transports())
def test_dropped_connection_reconnects_by_itself(make_page: Any, server: ServerProcess, transport: str) -> None:
    """A drop the browser does not announce (no offline event): the transport's own reconnect."""
    page = make_page()
    run_id = watch_new_run(page, server, transport)
    wait_text_longer(page, 10)
    page.evaluate("() => import('/client.js').then(m => m.dropConnections())")
    page.wait_for_function(
        "() => { const s = window.__ts.connLog.map(x => x.state);"
        " const r = s.lastIndexOf('reconnecting'); return r >= 0 && s.indexOf('resynced', r) > r; }",
        timeout=15_000)
    assert run_status(server, run_id) == "running"
    wait_succeeded(page)
    assert_matches_log(page, server, run_id)


@pytest.mark.parametrize("first,second", [pytest.param(
    "socketio", "sse", id="socketio-to-sse", marks=transports()[0].marks)])
def test_switching_transport_mid_run_continues_from_the_last_event(
        make_page: Any, server: ServerProcess, first: str, second: str) -> None:
    page = make_page()
    run_id = watch_new_run(page, server, first)
    wait_text_longer(page, 30)
    page.click(f"#transport-switch [data-transport='{second}']")
    assert f"transport={second}" in page.evaluate("location.hash")
    page.wait_for_function("() => document.querySelector('#conn .conn-label').textContent.includes('SSE')")
    after = page.evaluate("() => window.__ts.watch.events.length")
    assert after > 0, "the new watch carries the events already shown"
    assert run_status(server, run_id) == "running"
    wait_succeeded(page)
    assert_matches_log(page, server, run_id)


def test_phone_width_layout(make_page: Any, server: ServerProcess) -> None:
    page = make_page(PHONE)
    page.goto(page.base + "/")
    page.wait_for_selector("textarea[data-field='question']")
    page.fill("textarea[data-field='question']", QUESTION)
    page.click("#start-btn")
    page.wait_for_selector("[data-lane='CRITIC_EVAL'] [data-testid='verdict']", timeout=30_000)
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "viewer-phone-midrun.png")
    wait_succeeded(page)
    run_id = page.get_attribute(".run", "data-run-id")
    assert_matches_log(page, server, run_id)

    # Nothing wider than the screen; lanes stack in one column; the run comes before the form.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    boxes = [page.locator(f"[data-lane='{ns}']").bounding_box() for ns in ("THOUGHT", "TOOL_USE", "CRITIC_EVAL")]
    assert all(b is not None and b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] + 0.5 for b in boxes)
    assert len({round(b["x"]) for b in boxes}) == 1, "lanes should stack at phone width"
    assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]
    assert page.locator(".run").bounding_box()["y"] < page.locator("#new-run").bounding_box()["y"]
    for sel in ("#conn", "#transport-switch", "[data-testid='answer']"):
        box = page.locator(sel).bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"] + 0.5, sel
    page.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.4)
    shot(page, "viewer-phone.png")
    shot(page, "viewer-phone-full.png", full_page=True)


def test_without_the_socketio_library_the_viewer_says_why_and_uses_sse(
        make_page: Any, server: ServerProcess) -> None:
    page = make_page()
    page.route("**/node_modules/socket.io-client/**", lambda route: route.fulfill(status=404, body="not found"))
    page.goto(page.base + "/")
    page.wait_for_selector("#transport-note:not([hidden])")
    note = page.inner_text("#transport-note")
    assert "Socket.IO is unavailable" in note and "npm" in note and "SSE" in note
    assert page.is_disabled("#transport-switch [data-transport='socketio']")
    assert page.get_attribute("#transport-switch [data-transport='sse']", "aria-checked") == "true"
    page.fill("textarea[data-field='question']", "What is 6*7?")
    page.click("#start-btn")
    page.wait_for_function("() => document.querySelector('#conn .conn-label').textContent.includes('SSE')")
    wait_succeeded(page)
    run_id = page.get_attribute(".run", "data-run-id")
    assert_matches_log(page, server, run_id)


@pytest.mark.parametrize("transport", transports()[:1])
def test_unreachable_socketio_endpoint_falls_back_to_sse(
        make_page: Any, server: ServerProcess, transport: str) -> None:
    """The library loads but no Socket.IO connection gets through (say, a proxy without WebSocket)."""
    page = make_page()
    page.route_web_socket("**/socket.io/**", lambda ws: ws.close(code=1011, reason="no"))
    page.route("**/socket.io/**", lambda route: route.continue_() if "transport=probe" in route.request.url
               else route.fulfill(status=502, body="bad gateway"))
    run_id = start_run(server, "What is 6*7?")
    page.goto(f"{page.base}/#run={run_id}&transport=socketio")
    page.wait_for_selector("#transport-note:not([hidden])", timeout=30_000)
    assert "cannot connect to the Socket.IO endpoint" in page.inner_text("#transport-note")
    wait_succeeded(page)
    assert page.evaluate("() => window.__ts.watch.transport") == "sse"
    assert page.get_attribute("#transport-switch [data-transport='sse']", "aria-checked") == "true"
    assert_matches_log(page, server, run_id)


def test_resumed_run_discards_the_failed_attempt(make_page: Any, server: ServerProcess) -> None:
    """A log with a worker crash (DESIGN.md item 7), served as SSE: the view folds the rewind."""
    run_id = "f" * 32
    t = time.time()

    call = {"phase": "call", "tool": "calculator", "args": {"expression": "17*23"}, "call_id": "call_1"}
    parts: list[tuple[str, str, dict[str, Any]]] = [
        ("STATUS", "server", {"state": "queued"}),
        ("STATUS", "server", {"state": "running", "attempt": 1}),
        ("STEP", "graph", {"step": 0, "next": ["planner"]}),
        ("THOUGHT", "planner", {"text": "Multiply the "}),
        ("THOUGHT", "planner", {"text": "two numbers."}),
        ("STEP", "graph", {"step": 1, "next": ["tools"]}),  # seq 6: the last completed step
        ("TOOL_USE", "tools", call),  # the worker dies here: the tools step runs again
        ("STATUS", "server", {"state": "resumed", "attempt": 2, "rewind_to": 6}),
        ("STEP", "graph", {"step": 1, "next": ["tools"]}),  # the checkpoint it resumes from
        ("TOOL_USE", "tools", call),
        ("TOOL_USE", "tools", {"phase": "result", "tool": "calculator", "call_id": "call_1",
                               "result": "391", "ok": True, "duration_ms": 0.4}),
        ("STEP", "graph", {"step": 2, "next": ["answer"]}),
        ("THOUGHT", "answer", {"text": "17 × 23 = 391."}),
        ("STEP", "graph", {"step": 3, "next": []}),
        ("RESULT", "graph", {"output": {"answer": "17 × 23 = 391.", "rounds": 1, "score": 0.9}}),
        ("STATUS", "server", {"state": "succeeded", "duration_s": 0.7}),
    ]
    log = [{"run_id": run_id, "seq": i, "ns": ns, "agent": agent, "data": data, "ts": t + i * 0.05}
           for i, (ns, agent, data) in enumerate(parts, start=1)]
    body = "retry: 2000\n\n" + "".join(
        f"id: {e['seq']}\nevent: {e['ns']}\ndata: {json.dumps(e)}\n\n" for e in log)
    snapshot = {"run_id": run_id, "agent": "reflective", "input": {"question": "What is 17*23?"},
                "status": "succeeded", "created_at": t, "attempt": 2}

    page = make_page()
    page.route(f"**/runs/{run_id}/events*", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body=body))
    page.route(f"**/runs/{run_id}", lambda route: route.fulfill(status=200, json=snapshot))
    page.goto(f"{page.base}/#run={run_id}&transport=sse")
    wait_succeeded(page)
    assert lane_text(page) == "Multiply the two numbers.17 × 23 = 391."
    assert page.locator(".tool").count() == 1
    assert page.get_attribute(".tool", "data-state") == "ok"
    marker = page.locator("[data-lane='TOOL_USE'] [data-testid='resumed-marker'], "
                          "[data-lane='THOUGHT'] [data-testid='resumed-marker']")
    assert marker.count() >= 1 and "resumed (attempt 2)" in marker.first.inner_text()
    assert "attempt 2" in page.inner_text(".chip-resumed")
    seqs = page.evaluate("() => window.__ts.watch.events.map(e => e.seq)")
    assert seqs == [e["seq"] for e in fold(log)] == [1, 2, 3, 4, 5, 6, *range(8, 17)]
    assert page.locator("[data-metric='steps']").inner_text() == "3"
    assert [" ".join(t.split()) for t in page.locator(".steps .step.done").all_inner_texts()] == [
        "1 planner", "2 tools", "3 answer"]
    shot(page, "viewer-resumed.png")


def test_interrupted_run_asks_and_the_answer_resumes_it(make_page: Any, server: ServerProcess) -> None:
    """Human in the loop: the viewer shows the run's question and sends the answer back."""
    agents = httpx.get(server.url + "/agents").json()["agents"]
    schema = next(a for a in agents if a["name"] == "reflective")["input_schema"]
    if "approve_tools" not in schema.get("properties", {}):
        pytest.skip("this server's reflective agent has no approve_tools input (human in the loop)")
    page = make_page()
    page.goto(page.base + "/")
    page.wait_for_selector("textarea[data-field='question']")
    page.fill("textarea[data-field='question']", "What is 17*23?")
    page.check("input[data-field='approve_tools']")
    page.click("#start-btn")
    page.wait_for_selector("[data-testid='interrupt']:not([hidden])", timeout=30_000)
    assert page.get_attribute("[data-testid='run-status']", "data-status") == "interrupted"
    assert "calculator" in page.inner_text("[data-testid='interrupt'] .ask-question")
    page.click("[data-testid='interrupt'] .ask-answers button:text-is('yes')")
    wait_succeeded(page)
    assert page.locator("[data-testid='interrupt']").is_hidden()
    assert page.locator("[data-lane='TOOL_USE'] .tool[data-state='ok'] .tool-name").inner_text() == "calculator"
    assert "391" in page.inner_text("[data-testid='answer-text']")


def test_user_graph_namespaces_get_generic_lanes(make_page: Any, server: ServerProcess) -> None:
    page = make_page()
    page.goto(page.base + "/")
    page.wait_for_selector("#agent-select option[value='echo']", state="attached")
    page.select_option("#agent-select", "echo")
    page.fill("textarea[data-field='text']", "streams of thought flow through lanes")
    page.click("#start-btn")
    wait_succeeded(page)
    assert page.locator("[data-lane='SEARCH'] .chunk").count() == 6
    assert page.locator("[data-lane='SEARCH'] .lane-count").inner_text() == "6"
    assert "word" in page.inner_text("[data-lane='SEARCH'] .chunk >> nth=0")
    assert "6 words" in page.inner_text("[data-lane='SUMMARY']")
    result = page.inner_text("[data-testid='answer']")
    assert "Result" in result or "RESULT" in result
    assert "6 words: streams of thought flow through lanes" in result
    assert page.locator("[data-lane='THOUGHT']").count() == 0


@pytest.mark.skipif(not FAILING_GRAPH.exists(), reason="tests/fixtures/failing_graph.py is not there")
def test_failed_run_says_why(make_page: Any, server: ServerProcess) -> None:
    page = make_page()
    page.goto(page.base + "/")
    page.wait_for_selector("#agent-select option[value='failing']", state="attached")
    page.select_option("#agent-select", "failing")
    page.fill("[data-field='reason']", "a test")
    page.click("#start-btn")
    page.wait_for_selector("#conn[data-state='ended']", timeout=30_000)
    assert page.get_attribute("[data-testid='run-status']", "data-status") == "failed"
    notice = page.inner_text(".notice-error")
    assert "gave up on purpose" in notice
    assert "about to fail because a test" in page.inner_text("[data-lane='NOTE']")
    assert page.locator("[data-testid='cancel']").is_hidden()
