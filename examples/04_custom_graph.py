# Serve it:   thoughtstream serve --agent research=examples/04_custom_graph.py:graph
# Run it:     curl -sS -X POST http://127.0.0.1:8000/runs -H 'Content-Type: application/json' \
#                  -d '{"agent": "research", "input": {"topic": "server-sent events"}}'
#             then `curl -N http://127.0.0.1:8000/runs/<run_id>/events` to watch SEARCH and NOTE events.
"""Research: searches a tiny offline library for a topic and takes notes (a custom-namespace example graph).

A user-defined LangGraph graph served by thoughtstream. Every chunk written with
``get_stream_writer()`` that carries an ``ns`` key becomes an event in that namespace,
so clients see ``event: SEARCH`` and ``event: NOTE`` frames next to the server's own
``STATUS`` and ``RESULT`` events. The module attribute the server loads is ``graph``
(a compiled graph; an uncompiled StateGraph or a zero-argument factory works too).
"""

from __future__ import annotations

import asyncio
import re

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

# A stand-in for a real search backend, so the example runs offline and deterministically.
LIBRARY = {
    "sse": "Server-sent events stream text frames over one long HTTP response; browsers reconnect "
           "by themselves and resend the last event id.",
    "events": "An event stream is an ordered log: a reader that knows its position can resume "
              "exactly where it stopped.",
    "langgraph": "LangGraph runs a graph of nodes over a shared state and can stream custom "
                 "chunks from inside any node.",
    "reconnect": "Reconnecting clients send Last-Event-ID; the server replays what they missed.",
    "streaming": "Streaming shows progress while work happens instead of after it finishes.",
}


class ResearchInput(TypedDict):
    topic: str


class ResearchState(TypedDict, total=False):
    topic: str
    findings: list[dict[str, str]]
    notes: list[str]
    summary: str


def _terms(topic: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", topic.lower())
    return [w for w in words if len(w) > 2] or [topic.lower()]


async def search(state: ResearchState) -> dict:
    """One SEARCH event per query, saying what it found."""
    write = get_stream_writer()
    findings: list[dict[str, str]] = []
    for term in _terms(state["topic"]):
        await asyncio.sleep(0.05)  # pretend the search takes a moment
        hits = [key for key, text in LIBRARY.items() if term in key or term in text.lower()]
        write({"ns": "SEARCH", "query": term, "hits": hits})
        findings.extend({"query": term, "source": key, "text": LIBRARY[key]} for key in hits)
    return {"findings": findings}


async def take_notes(state: ResearchState) -> dict:
    """One NOTE event per distinct source, then a summary."""
    write = get_stream_writer()
    notes: list[str] = []
    seen: set[str] = set()
    for finding in state.get("findings", []):
        if finding["source"] in seen:
            continue
        seen.add(finding["source"])
        note = f"{finding['source']}: {finding['text']}"
        notes.append(note)
        write({"ns": "NOTE", "source": finding["source"], "text": finding["text"]})
        await asyncio.sleep(0.02)
    summary = (f"{len(notes)} source(s) on {state['topic']!r}." if notes
               else f"Nothing in the library about {state['topic']!r}.")
    return {"notes": notes, "summary": summary}


builder = StateGraph(ResearchState, input_schema=ResearchInput)
builder.add_node("search", search)
builder.add_node("take_notes", take_notes)
builder.add_edge(START, "search")
builder.add_edge("search", "take_notes")
builder.add_edge("take_notes", END)
graph = builder.compile(name="research")
