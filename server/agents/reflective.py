"""The built-in ``reflective`` agent: planner -> tools -> critic -> (planner again | answer).

How its events reach the stream (the executor runs ``astream(..., stream_mode=["messages",
"custom", "updates"], subgraphs=True)``):

* planner and answer model tokens arrive in "messages" mode; their nodes carry
  ``metadata={"ns": "THOUGHT"}``, which shows up in each chunk's metadata dict;
* the critic's own tokens arrive the same way with ``ns == "CRITIC_EVAL"``, and the critic
  node also writes ``{"ns": "CRITIC_EVAL", "verdict", "score", "reason", "round"}``;
* the tools node writes ``{"ns": "TOOL_USE", "phase": "call" | "result", ...}`` custom
  chunks around every tool it runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import re
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs it for JSON schemas on Python < 3.12

from .llm import make_chat_model
from .retry import reporting_retries, retry_policy
from .tools import langchain_tools, run_tool

if TYPE_CHECKING:
    from langgraph.types import Checkpointer

    from server.config import Settings

logger = logging.getLogger(__name__)

PLANNER_PROMPT = (
    "You are the planner of a research agent with two tools: calculator (exact arithmetic) and "
    "search_corpus (keyword search over a small encyclopedia). A question may have several parts, such as "
    "\"What is 17*23 and when was the Eiffel Tower built?\". Think out loud in two or three short sentences "
    "about the parts, then call one tool per part that still lacks evidence: the calculator for every piece of "
    "arithmetic (17*23, 17 x 23, 17 times 23, 2 to the power of 10), search_corpus with the key words of the "
    "rest. Never search for bare numbers. If a reviewer asked for a revision, follow the feedback and try a "
    "different query or expression. Do not write the final answer."
)
CRITIC_PROMPT = (
    "You are the critic of a research agent. Judge whether the tool results in the conversation are "
    "enough to answer every part of the user's question correctly. Each part needs its own evidence: "
    "arithmetic needs a calculator result, a fact needs a search result that is about it. Revise when a part "
    "has no evidence yet and a tool call could still get it; say which part. When the corpus has been "
    "searched and does not cover a part, approve with a low score and say the answer must state that it is "
    "unknown. Do not answer the question. Reply in exactly this format:\n"
    "VERDICT: approve or revise\n"
    "SCORE: a number from 0 to 1 for how well the evidence supports an answer\n"
    "REASON: one or two sentences; when you ask for a revision, say what is missing"
)
ANSWER_PROMPT = (
    "You are the answerer of a research agent. Answer every part of the user's question in two or three "
    "sentences using only the tool results in the conversation. For arithmetic, give the expression and its "
    "value. If the results do not cover a part, say plainly that the corpus does not say; never guess."
)


class ReflectiveInput(BaseModel):
    """Input of the ``reflective`` agent."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000, description="The question to research and answer.")
    max_rounds: int | None = Field(
        default=None, ge=1, le=10, description="Plan/critique rounds before answering; default: the server's setting."
    )
    approve_tools: bool = Field(
        default=False, description="Ask a human to approve each tool call before it runs (the run waits, interrupted)."
    )


class ReflectiveOutput(TypedDict):
    answer: str
    rounds: int
    score: float


class ReflectiveState(TypedDict, total=False):
    # Everything here is plain JSON: "updates" chunks stay serialisable, and no message
    # object lands in a node's output, where "messages" mode would re-emit it (the question
    # or a tool result as if it were a model token).
    question: str
    max_rounds: int | None
    approve_tools: bool
    plans: Annotated[list[dict[str, Any]], operator.add]  # {round, text, tool_calls: [{id, name, args}]}
    tool_results: Annotated[list[dict[str, Any]], operator.add]  # {call_id, tool, ok, content}
    feedback: Annotated[list[str], operator.add]  # the critic's reason, one per revised round
    rounds: int
    verdict: str
    score: float
    answer: str


def conversation(state: ReflectiveState) -> list[BaseMessage]:
    """The chat transcript the state stands for: question, then per round plan, tool results, feedback."""
    messages: list[BaseMessage] = [HumanMessage(content=state["question"])]
    results = {r["call_id"]: r for r in state.get("tool_results") or []}
    feedback = state.get("feedback") or []
    for index, plan in enumerate(state.get("plans") or []):
        messages.append(AIMessage(content=plan["text"], tool_calls=plan["tool_calls"]))
        for call in plan["tool_calls"]:
            result = results.get(call["id"])
            if result is not None:
                status = "success" if result["ok"] else "error"
                messages.append(
                    ToolMessage(result["content"], tool_call_id=call["id"], name=call["name"], status=status)
                )
        if index < len(feedback):
            note = f"Reviewer feedback: {feedback[index]} Revise the plan and try a different approach."
            messages.append(HumanMessage(content=note))
    return messages


def parse_verdict(text: str) -> tuple[Literal["approve", "revise"], float, str]:
    """Read ``VERDICT/SCORE/REASON`` from a critic reply, tolerating loose formatting.

    A reply with no recognisable verdict counts as approval: an unparseable critic must not
    keep the agent looping.
    """
    verdict_match = re.search(r"verdict\W{0,8}(approve|revise)", text, re.IGNORECASE)
    if verdict_match:
        verdict = verdict_match.group(1).lower()
    else:
        verdict = "revise" if re.search(r"\brevis", text, re.IGNORECASE) else "approve"
    score_match = re.search(r"score\W{0,8}?(\d*\.?\d+)", text, re.IGNORECASE)
    score = float(score_match.group(1)) if score_match else (0.8 if verdict == "approve" else 0.4)
    if 1 < score <= 100:  # "SCORE: 86" or "86/100"
        score /= 100
    reason_match = re.search(r"\breason\b[*_]*\s*[:=-]?[*_]*\s*(.+)", text, re.IGNORECASE | re.DOTALL)
    reason = (reason_match.group(1) if reason_match else text).strip()[:1000]
    return verdict, min(max(score, 0.0), 1.0), reason  # type: ignore[return-value]


def _approved(reply: Any) -> bool:
    """A human's answer to 'run this tool?': yes/true/approve (or {"approved": true})."""
    if isinstance(reply, dict):
        reply = reply.get("approved", reply.get("answer"))
    if isinstance(reply, bool):
        return reply
    return str(reply).strip().lower() in {"yes", "y", "true", "approve", "approved", "ok"}


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


def build_reflective(settings: Settings, checkpointer: Checkpointer = None) -> CompiledStateGraph:
    """Build and compile the reflective agent for ``settings`` (chat model, round limit)."""
    model = make_chat_model(settings)
    planner_model = model.bind_tools(langchain_tools())
    default_rounds = settings.reflective_max_rounds

    def round_limit(state: ReflectiveState) -> int:
        return state.get("max_rounds") or default_rounds

    async def planner(state: ReflectiveState) -> dict[str, Any]:
        reply = await planner_model.ainvoke([SystemMessage(content=PLANNER_PROMPT), *conversation(state)])
        rounds = state.get("rounds", 0) + 1
        calls = [
            {"id": str(c.get("id")), "name": c["name"], "args": _json_safe(c.get("args") or {})} for c in reply.tool_calls
        ]
        return {"plans": [{"round": rounds, "text": reply.text, "tool_calls": calls}], "rounds": rounds}

    async def tools(state: ReflectiveState) -> dict[str, Any]:
        write = get_stream_writer()
        plans = state.get("plans") or []
        results: list[dict[str, Any]] = []
        calls = plans[-1]["tool_calls"] if plans else []
        # Every approval is asked before anything is written or run: on each resume this node
        # runs again from the top, and the interrupts already answered return their answers
        # at once, so no TOOL_USE event is written twice and no tool runs twice.
        replies = [
            interrupt({"question": f"Run {c['name']} with {json.dumps(c['args'])}?", "tool": c["name"],
                       "args": c["args"], "call_id": c["id"], "answers": ["yes", "no"]})
            if state.get("approve_tools") else True
            for c in calls
        ]
        for call, reply in zip(calls, replies):
            name, args, call_id = call["name"], call["args"], call["id"]
            if not _approved(reply):
                write({"ns": "TOOL_USE", "phase": "declined", "tool": name, "args": args,
                       "call_id": call_id, "answer": _json_safe(reply)})
                results.append({"call_id": call_id, "tool": name, "ok": False,
                                "content": "Error: the user declined to run this tool."})
                continue
            write({"ns": "TOOL_USE", "phase": "call", "tool": name, "args": args, "call_id": call_id})
            started = time.perf_counter()
            chunk: dict[str, Any] = {"ns": "TOOL_USE", "phase": "result", "tool": name, "call_id": call_id}
            try:
                # The tools are CPU-bound; a thread keeps the event loop serving other runs.
                result = _json_safe(await asyncio.to_thread(run_tool, name, args))
                chunk.update(result=result, ok=True)
                content = result if isinstance(result, str) else json.dumps(result)
            except Exception as exc:  # noqa: BLE001 - a failing tool is data for the model, not a crash
                error = str(exc) or type(exc).__name__
                logger.info("tool %s failed: %s", name, error)
                chunk.update(result=None, ok=False, error=error)
                content = f"Error: {error}"
            chunk["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
            write(chunk)
            results.append({"call_id": call_id, "tool": name, "ok": chunk["ok"], "content": content})
        return {"tool_results": results}

    async def critic(state: ReflectiveState) -> dict[str, Any]:
        request = HumanMessage(content=f"Judge the tool results above for the question: {state['question']}")
        reply = await model.ainvoke([SystemMessage(content=CRITIC_PROMPT), *conversation(state), request])
        verdict, score, reason = parse_verdict(reply.text)
        rounds = state.get("rounds", 1)
        get_stream_writer()(
            {"ns": "CRITIC_EVAL", "verdict": verdict, "score": score, "reason": reason, "round": rounds}
        )
        update: dict[str, Any] = {"verdict": verdict, "score": score}
        if verdict == "revise" and rounds < round_limit(state):
            update["feedback"] = [reason]
        return update

    def after_critic(state: ReflectiveState) -> Literal["planner", "answer"]:
        if state.get("verdict") == "revise" and state.get("rounds", 1) < round_limit(state):
            return "planner"
        return "answer"

    async def answer(state: ReflectiveState) -> dict[str, Any]:
        request = HumanMessage(content=f"Write the final answer to the question: {state['question']}")
        reply = await model.ainvoke([SystemMessage(content=ANSWER_PROMPT), *conversation(state), request])
        return {"answer": reply.text.strip()}

    builder = StateGraph(ReflectiveState, input_schema=ReflectiveInput, output_schema=ReflectiveOutput)
    # Model calls fail transiently (timeouts, rate limits): retried with backoff, each retry
    # reported as a STATUS event. Tool errors are data for the model, never retried here.
    policy = retry_policy()
    builder.add_node("planner", reporting_retries("planner", planner), metadata={"ns": "THOUGHT"},
                     retry_policy=policy)
    builder.add_node("tools", tools, metadata={"ns": "TOOL_USE"})
    builder.add_node("critic", reporting_retries("critic", critic), metadata={"ns": "CRITIC_EVAL"},
                     retry_policy=policy)
    builder.add_node("answer", reporting_retries("answer", answer), metadata={"ns": "THOUGHT"},
                     retry_policy=policy)
    builder.add_edge(START, "planner")
    builder.add_edge("planner", "tools")
    builder.add_edge("tools", "critic")
    builder.add_conditional_edges("critic", after_critic, ["planner", "answer"])
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer, name="reflective")
