"""Small graphs the integration tests serve next to ``reflective`` (loaded as ``--agent name=path:attr``).

* ``ticker``: emits ``count`` TICK events, ``interval_s`` apart (long runs to cancel or queue behind);
* ``napper``: sleeps ``nap_s`` without emitting anything, then one WOKE event (heartbeats).
"""

from __future__ import annotations

import asyncio

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


class TickInput(TypedDict):
    count: int
    interval_s: float


class TickState(TypedDict, total=False):
    count: int
    interval_s: float
    ticks: int


async def tick(state: TickState) -> TickState:
    write = get_stream_writer()
    for index in range(state["count"]):
        write({"ns": "TICK", "index": index})
        await asyncio.sleep(state["interval_s"])
    return {"ticks": state["count"]}


_ticker = StateGraph(TickState, input_schema=TickInput)
_ticker.add_node("tick", tick)
_ticker.add_edge(START, "tick")
_ticker.add_edge("tick", END)
ticker = _ticker.compile(name="ticker")


class NapInput(TypedDict):
    nap_s: float


class NapState(TypedDict, total=False):
    nap_s: float
    woke: bool


async def nap(state: NapState) -> NapState:
    await asyncio.sleep(state["nap_s"])
    get_stream_writer()({"ns": "WOKE", "slept_s": state["nap_s"]})
    return {"woke": True}


_napper = StateGraph(NapState, input_schema=NapInput)
_napper.add_node("nap", nap)
_napper.add_edge(START, "nap")
_napper.add_edge("nap", END)
napper = _napper.compile(name="napper")
