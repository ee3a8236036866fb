"""User graphs loaded with --agent: listed with their schema, streamed in their own namespaces."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support import ROOT, free_port

from .conftest import assert_gapless, is_terminal, read_stream, start_run


async def test_agents_lists_user_graphs_with_their_input_schema(client: httpx.AsyncClient) -> None:
    """GET /agents lists the built-in and every --agent graph, each with a JSON input schema."""
    resp = await client.get("/agents")
    assert resp.status_code == 200
    agents = {a["name"]: a for a in resp.json()["agents"]}
    assert {"reflective", "echo", "research"} <= set(agents)
    echo = agents["echo"]
    assert echo["input_schema"]["properties"]["text"]["type"] == "string"
    assert echo["input_schema"]["required"] == ["text"]
    assert echo["description"].startswith("Echo:")  # the module docstring's first line
    research = agents["research"]
    assert research["input_schema"]["properties"]["topic"]["type"] == "string"
    assert research["description"].startswith("Research:")
    assert agents["reflective"]["input_schema"]["required"] == ["question"]


async def test_echo_graph_streams_its_own_namespaces(client: httpx.AsyncClient) -> None:
    """Custom chunks of the echo graph arrive as SEARCH and SUMMARY events, in order, with their data."""
    run = await start_run(client, "echo", {"text": "alpha beta gamma"})
    stream = await read_stream(client, run["events_url"])
    events = stream.events
    assert_gapless(events)
    search = [e for e in events if e["ns"] == "SEARCH"]
    assert [(e["data"]["index"], e["data"]["word"]) for e in search] == [(0, "alpha"), (1, "beta"), (2, "gamma")]
    summary = [e for e in events if e["ns"] == "SUMMARY"]
    assert len(summary) == 1
    assert summary[0]["data"]["count"] == 3
    assert summary[0]["seq"] > search[-1]["seq"]
    result = [e for e in events if e["ns"] == "RESULT"]
    assert result[0]["data"]["output"]["summary"] == "3 words: alpha beta gamma"
    assert is_terminal(events[-1]) and events[-1]["data"]["state"] == "succeeded"


async def test_example_research_graph_streams_search_and_note(client: httpx.AsyncClient) -> None:
    """examples/04_custom_graph.py served as `research`: SEARCH per query, NOTE per source, then success."""
    run = await start_run(client, "research", {"topic": "SSE reconnect"})
    events = (await read_stream(client, run["events_url"])).events
    assert_gapless(events)
    searches = [e for e in events if e["ns"] == "SEARCH"]
    assert [e["data"]["query"] for e in searches] == ["sse", "reconnect"]
    assert "sse" in searches[0]["data"]["hits"]
    notes = [e for e in events if e["ns"] == "NOTE"]
    assert notes and {n["data"]["source"] for n in notes} >= {"sse", "reconnect"}
    assert min(n["seq"] for n in notes) > max(s["seq"] for s in searches)
    assert is_terminal(events[-1]) and events[-1]["data"]["state"] == "succeeded"
    output = next(e for e in events if e["ns"] == "RESULT")["data"]["output"]
    assert output["summary"].startswith(f"{len(notes)} source(s)")


async def test_custom_events_name_the_node_that_wrote_them(client: httpx.AsyncClient) -> None:
    """A custom chunk's `agent` is the node that emitted it (SEARCH from search, SUMMARY from summarize)."""
    run = await start_run(client, "echo", {"text": "one two"})
    events = (await read_stream(client, run["events_url"])).events
    by_ns = {(e["ns"], e["agent"]) for e in events if e["ns"] in ("SEARCH", "SUMMARY")}
    assert by_ns == {("SEARCH", "search"), ("SUMMARY", "summarize")}


@pytest.mark.parametrize("entry, message", [
    ("echo=tests/fixtures/no_such_graph.py:graph", "file not found"),
    ("echo=tests/fixtures/echo_graph.py:nothing_here", "has no attribute 'nothing_here'"),
])
def test_bad_agent_spec_exits_non_zero_with_a_clear_message(entry: str, message: str) -> None:
    """`serve --agent <bad>` exits non-zero before serving, saying what is wrong, without a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", str(free_port()), "--agent", entry],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Uvicorn running" not in proc.stderr + proc.stdout
