"""Bench graphs: ``firehose`` emits ``count`` token-sized THOUGHT chunks at ``rate`` per second.

Served with ``python -m server serve --agent firehose=bench/graphs.py:firehose``.

Pacing follows an absolute schedule (event i is due at t0 + i/rate), so a late wake-up
is caught up on, not carried forward as drift; sleeps are batched to one per ~10 ms
tick (5 events per sleep at 500/s) because an asyncio timer per event would be most
of the graph's own cost at high rates. When the schedule is behind, the node still
yields (``sleep(0)``) once per tick so the server's other tasks keep running.

Emission starts after ``delay_s``, or as soon as the ``gate`` file exists (the bench
creates it once every client is connected, so latencies are measured on live
delivery, not on replay).
"""

from __future__ import annotations

import asyncio
import os
import time

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import NotRequired, TypedDict

TICK_S = 0.010
GATE_POLL_S = 0.005
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then")


class FirehoseInput(TypedDict):
    count: int
    rate: float
    delay_s: NotRequired[float]
    gate: NotRequired[str]
    gate_timeout_s: NotRequired[float]


class FirehoseState(TypedDict, total=False):
    count: int
    rate: float
    delay_s: float
    gate: str
    gate_timeout_s: float
    emitted: int


def token(i: int) -> str:
    """A ~40-byte text, like an LLM token delta plus some context."""
    return f"tok{i:07d} {WORDS[i % 10]} {WORDS[(i * 7) % 10]} {WORDS[(i * 3) % 10]} lorem"


async def wait_to_start(state: FirehoseState) -> None:
    gate = state.get("gate")
    if gate:
        deadline = time.monotonic() + float(state.get("gate_timeout_s", 60.0))
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate file {gate} did not appear")
            await asyncio.sleep(GATE_POLL_S)
    delay = float(state.get("delay_s", 0.0))
    if delay > 0:
        await asyncio.sleep(delay)


async def emit(state: FirehoseState) -> FirehoseState:
    write = get_stream_writer()
    count = int(state["count"])
    rate = float(state["rate"])
    if count < 0 or rate <= 0:
        raise ValueError("count must be >= 0 and rate > 0")
    await wait_to_start(state)
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(rate * TICK_S))
    t0 = loop.time()
    for i in range(count):
        write({"ns": "THOUGHT", "text": token(i)})
        n = i + 1
        if n % per_tick == 0 or n == count:
            await asyncio.sleep(max(0.0, t0 + n / rate - loop.time()))
    return {"emitted": count}


builder = StateGraph(FirehoseState, input_schema=FirehoseInput)
builder.add_node("emit", emit)
builder.add_edge(START, "emit")
builder.add_edge("emit", END)
firehose = builder.compile(name="firehose")
