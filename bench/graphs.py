"""The bench's graph: ``firehose`` emits ``count`` token-sized THOUGHT chunks at ``rate`` per second.

Served as ``--agent firehose=bench/graphs.py:firehose`` by thoughtstream, as graph
``firehose`` by ``langgraph dev``, and its pacing (``paced``) drives the raw broadcaster,
so every target is fed the same events on the same schedule.

Each chunk is ``{"ns": "THOUGHT", "i": i, "t": emit_time, "text": ~40 bytes}``: the load
generators find ``"i":N,"t":T`` in any target's framing, check ``i`` is gapless and in
order, and take ``receive time - t`` as the emit-to-receive latency (same clock).

Pacing follows an absolute schedule (event i is due at t0 + i/rate), so a late wake-up
is caught up on, not carried forward as drift; sleeps are batched to one per ~10 ms
tick because an asyncio timer per event would be most of the graph's own cost at high
rates. Emission starts after ``delay_s``, or once the ``gate`` file exists (the bench
creates it when every client is connected, so latencies are of live delivery).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable

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


def chunk(i: int) -> dict:
    return {"ns": "THOUGHT", "i": i, "t": time.time(), "text": token(i)}


async def wait_gate(gate: str | None, delay_s: float = 0.0, timeout_s: float = 600.0) -> None:
    if gate:
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate file {gate} did not appear")
            await asyncio.sleep(GATE_POLL_S)
    if delay_s > 0:
        await asyncio.sleep(delay_s)


async def paced(count: int, rate: float, emit: Callable[[int], None]) -> None:
    """Call ``emit(i)`` for i in range(count) at ``rate`` per second, one sleep per tick."""
    if count < 0 or rate <= 0:
        raise ValueError("count must be >= 0 and rate > 0")
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(rate * TICK_S))
    t0 = loop.time()
    for i in range(count):
        emit(i)
        n = i + 1
        if n % per_tick == 0 or n == count:
            await asyncio.sleep(max(0.0, t0 + n / rate - loop.time()))


async def emit(state: FirehoseState) -> FirehoseState:
    write = get_stream_writer()
    await wait_gate(state.get("gate"), float(state.get("delay_s", 0.0)),
                    float(state.get("gate_timeout_s", 600.0)))
    await paced(int(state["count"]), float(state["rate"]), lambda i: write(chunk(i)))
    return {"emitted": int(state["count"])}


builder = StateGraph(FirehoseState, input_schema=FirehoseInput)
builder.add_node("emit", emit)
builder.add_edge(START, "emit")
builder.add_edge("emit", END)
firehose = builder.compile(name="firehose")
