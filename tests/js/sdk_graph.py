"""The SDK chaos graph: custom chunks, updates and values from a parent and a subgraph, with delays.

Served as ``--agent chaos=tests/js/sdk_graph.py:graph`` by thoughtstream (tests/integration/
test_lg_js_sdk.py, bench ``sdk-chaos``) and as graph ``chaos`` by ``langgraph dev`` (bench).
Deterministic: the same input gives the same events with the same data on every run (only
the subgraph's task id in the ``mode|child:<task id>`` namespace differs), so a client that
was cut and rejoined can be compared event for event with an uncut run or a full replay.

Input ``{"chunks": n, "delay_s": d}``: ``intro`` writes n custom chunks, the subgraph
``child`` (nodes ``work`` then ``wrap``) writes n more, ``outro`` n more; ``delay_s`` apart.
Every chunk is ``{"ns": "THOUGHT", "node": ..., "i": ...}``, the way thoughtstream's own
events travel (a dict with an ``ns`` key).
"""

from __future__ import annotations

import asyncio

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import NotRequired, TypedDict


class ChaosInput(TypedDict):
    chunks: int
    delay_s: NotRequired[float]


class ChaosState(TypedDict, total=False):
    chunks: int
    delay_s: float
    steps: list[str]
    total: int


async def chunks(node: str, state: ChaosState) -> int:
    write = get_stream_writer()
    n = int(state.get("chunks", 3))
    for i in range(n):
        write({"ns": "THOUGHT", "node": node, "i": i, "text": f"{node} thought {i}"})
        await asyncio.sleep(float(state.get("delay_s", 0.01)))
    return n


async def intro(state: ChaosState) -> ChaosState:
    return {"steps": [*state.get("steps", []), "intro"], "total": state.get("total", 0) + await chunks("intro", state)}


async def work(state: ChaosState) -> ChaosState:
    return {"steps": [*state.get("steps", []), "work"], "total": state.get("total", 0) + await chunks("work", state)}


async def wrap(state: ChaosState) -> ChaosState:
    get_stream_writer()({"ns": "TOOL_USE", "node": "wrap", "tool": "count", "total": state.get("total", 0)})
    return {"steps": [*state.get("steps", []), "wrap"]}


async def outro(state: ChaosState) -> ChaosState:
    return {"steps": [*state.get("steps", []), "outro"], "total": state.get("total", 0) + await chunks("outro", state)}


_child = StateGraph(ChaosState)
_child.add_node("work", work)
_child.add_node("wrap", wrap)
_child.add_edge(START, "work")
_child.add_edge("work", "wrap")
_child.add_edge("wrap", END)
child = _child.compile(name="child")

_parent = StateGraph(ChaosState, input_schema=ChaosInput)
_parent.add_node("intro", intro)
_parent.add_node("child", child)
_parent.add_node("outro", outro)
_parent.add_edge(START, "intro")
_parent.add_edge("intro", "child")
_parent.add_edge("child", "outro")
_parent.add_edge("outro", END)
graph = _parent.compile(name="chaos")
