"""``bulk``: ``count`` BULK events of about ``size`` bytes each at ``rate`` per second.

Big events fill a socket's buffers quickly, which is what the slow-socket tests and
benchmarks of the Socket.IO transport need. Served with
``python -m server serve --agent bulk=bench/socketio_graph.py:bulk``.
"""

from __future__ import annotations

import asyncio

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from typing_extensions import NotRequired, TypedDict

TICK_S = 0.010


class BulkInput(TypedDict):
    count: int
    size: int
    rate: NotRequired[float]  # events per second; 0 or absent: as fast as the loop allows


class BulkState(TypedDict, total=False):
    count: int
    size: int
    rate: float
    emitted: int


async def emit(state: BulkState) -> BulkState:
    write = get_stream_writer()
    count, size, rate = int(state["count"]), int(state["size"]), float(state.get("rate") or 0.0)
    if count < 0 or not 0 <= size <= 1_000_000 or rate < 0:
        raise ValueError("count >= 0, 0 <= size <= 1e6 and rate >= 0 are required")
    pad = "x" * size
    loop = asyncio.get_running_loop()
    per_tick = max(1, round(rate * TICK_S)) if rate else 50
    t0 = loop.time()
    for i in range(count):
        write({"ns": "BULK", "i": i, "pad": pad})
        n = i + 1
        if n % per_tick == 0 or n == count:
            await asyncio.sleep(max(0.0, t0 + n / rate - loop.time()) if rate else 0)
    return {"emitted": count}


builder = StateGraph(BulkState, input_schema=BulkInput)
builder.add_node("emit", emit)
builder.add_edge(START, "emit")
builder.add_edge("emit", END)
bulk = builder.compile(name="bulk")
