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
from typing import Any, AsyncIterator, Callable

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


# -- chat: the same pacing through a chat model ----------------------------------------
# ``chat`` streams ``count`` tokens at ``rate`` per second from a chat model, so they
# travel as a real model's do: LangChain's callback machinery (on_llm_new_token) into
# LangGraph's ``messages`` stream mode. Each token's content is ``{"i":N,"t":EMIT_TIME}``
# (emit time taken as the chunk is yielded); inside a JSON string its quotes arrive
# escaped, which the load generators' token pattern allows.

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult  # noqa: E402
from langgraph.graph.message import add_messages  # noqa: E402
from typing_extensions import Annotated  # noqa: E402


class PacedChatModel(BaseChatModel):
    """A chat model answering with ``count`` tokens at ``rate``/s on ``paced``'s schedule."""

    count: int = 200
    rate: float = 50.0

    @property
    def _llm_type(self) -> str:
        return "bench-paced"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        # Only for non-streaming callers; the graph's ainvoke streams (LangGraph's
        # ``messages`` handler asks for it), which is the path under test.
        text = "".join(f'{{"i":{i},"t":{time.time()!r}}}' for i in range(self.count))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    async def _astream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        # paced()'s schedule as a generator: absolute due times, one sleep per ~10 ms tick.
        # BaseChatModel.astream itself reports each chunk to the callbacks (on_llm_new_token).
        if self.count < 0 or self.rate <= 0:
            raise ValueError("count must be >= 0 and rate > 0")
        loop = asyncio.get_running_loop()
        per_tick = max(1, round(self.rate * TICK_S))
        t0 = loop.time()
        for i in range(self.count):
            yield ChatGenerationChunk(message=AIMessageChunk(content=f'{{"i":{i},"t":{time.time()!r}}}'))
            n = i + 1
            if n % per_tick == 0 or n == self.count:
                await asyncio.sleep(max(0.0, t0 + n / self.rate - loop.time()))


class ChatInput(TypedDict):
    count: int
    rate: float
    messages: NotRequired[list]


class ChatState(TypedDict, total=False):
    count: int
    rate: float
    messages: Annotated[list, add_messages]


async def model(state: ChatState) -> ChatState:
    llm = PacedChatModel(count=int(state["count"]), rate=float(state["rate"]))
    answer = await llm.ainvoke(state.get("messages") or [HumanMessage("go")])
    # The state keeps the answer (same id, so the messages mode does not send it again) but
    # not its text: every token in one final RESULT/values event would be counted a second
    # time by the load generators, which find tokens in any framing.
    return {"messages": [AIMessage(content=f"[{llm.count} tokens]", id=answer.id)]}


chat_builder = StateGraph(ChatState, input_schema=ChatInput)
chat_builder.add_node("model", model)
chat_builder.add_edge(START, "model")
chat_builder.add_edge("model", END)
chat = chat_builder.compile(name="chat")
