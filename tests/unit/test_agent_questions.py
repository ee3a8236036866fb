"""The reflective agent on questions with several parts: arithmetic, corpus facts, both, neither.

Every question runs through the real compiled graph with the scripted (deterministic,
offline) model, as a user's run would, and the final answer is checked for the right
number and the right fact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from server.agents import ScriptedChatModel, build_reflective, parse_verdict, search_corpus
from server.agents.questions import find_arithmetic, split_question
from server.agents.reflective import CRITIC_PROMPT, conversation
from server.agents.tools import calculator
from server.config import Settings

FAST = Settings(scripted_tokens_per_s=5000)

# ---------------------------------------------------------------- finding the arithmetic


@pytest.mark.parametrize(
    ("question", "expression", "value"),
    [
        ("What is 17*23 and when was the Eiffel tower built?", "17*23", "391"),
        ("What is 17 * 23 + 4?", "17 * 23 + 4", "395"),
        ("What is 17 x 23?", "17 * 23", "391"),
        ("What is 17x23", "17*23", "391"),
        ("What is 17 × 23?", "17 * 23", "391"),
        ("What is 17×23?", "17*23", "391"),
        ("What is 17 times 23?", "17 * 23", "391"),
        ("17 multiplied by 3", "17 * 3", "51"),
        ("What is 17 plus 4?", "17 + 4", "21"),
        ("what is 7 minus 10", "7 - 10", "-3"),
        ("What is 100 divided by 8?", "100 / 8", "12.5"),
        ("What is 5 ÷ 2 − 1", "5 / 2 - 1", "1.5"),
        ("2**10", "2**10", "1024"),
        ("What is 2^10?", "2**10", "1024"),
        ("What is 2 to the power of 16 minus 1?", "2 ** 16 - 1", "65535"),
        ("What is 2 raised to 8?", "2 ** 8", "256"),
        ("what is 3 + 4 * 2", "3 + 4 * 2", "11"),
        ("what is 3+4*2?", "3+4*2", "11"),
        ("What is the square root of 1764 plus 12?", "sqrt(1764) + 12", "54"),
        ("What is 12 squared?", "12 ** 2", "144"),
        ("What is 15% of 80?", "15 / 100 * 80", "12"),
        ("What is 10 mod 3", "10 % 3", "1"),
        ("What is max(1, 5, 3) - min(4, 2)?", "max(1, 5, 3) - min(4, 2)", "3"),
        ("What is -(2 + 3) * 4?", "-(2 + 3) * 4", "-20"),
        ("What is 2024-1889?", "2024-1889", "135"),
        ("What is 12 times 12, and what is SSE?", "12 * 12", "144"),
    ],
)
def test_arithmetic_is_found_in_the_common_spellings(question: str, expression: str, value: str) -> None:
    (part,) = find_arithmetic(question)
    assert part.expression == expression
    assert calculator(part.expression) == value


@pytest.mark.parametrize(
    "question",
    [
        "How many times did astronauts walk on the Moon?",  # "times" without numbers is a word
        "What happened on 2020-05-29?",  # a date
        "What was built 1887-1889?",  # a range of years
        "HTTP/2 and HTTP/3: what changed?",
        "What is 3x + 2?",  # algebra, not arithmetic
        "What is Redis?",
        "Who won the 2018 World Cup?",
    ],
)
def test_prose_with_numbers_is_not_arithmetic(question: str) -> None:
    assert find_arithmetic(question) == []


def test_the_rest_of_the_question_goes_to_the_search() -> None:
    parts = split_question("What is 17*23 and when was the Eiffel tower built?")
    assert [p.expression for p in parts.arithmetic] == ["17*23"]
    assert [word for word, _ in parts.keywords] == ["Eiffel", "tower", "built"]  # never '17' and '23'
    two = split_question("What is 17*23 and what is 2^10?")
    assert [p.expression for p in two.arithmetic] == ["17*23", "2**10"] and two.keywords == ()
    # "many" and "corpus" name no fact; "times" here is not arithmetic, so it stays.
    assert [w for w, _ in split_question("How many times does the corpus mention Redis?").keywords] == [
        "times", "mention", "Redis"]


# ---------------------------------------------------------------- the whole graph, question by question

UNKNOWN = "could not find anything about"

# (question, what the final answer must contain, tools called in order)
TABLE: list[tuple[str, list[str], list[str]]] = [
    # both
    ("What is 17*23 and when was the Eiffel tower built?", ["17*23 = 391", "1887", "1889"],
     ["calculator", "search_corpus"]),
    ("What is 100 divided by 8, and who made the first confirmed ascent of Mount Everest?",
     ["100 / 8 = 12.5", "Edmund Hillary and Tenzing Norgay"], ["calculator", "search_corpus"]),
    ("What is 2 to the power of 16 minus 1, and what is a JSON Web Token?", ["65535", "compact, URL-safe token"],
     ["calculator", "search_corpus"]),
    ("What is 7*6, and when did astronauts walk on the Moon?", ["7*6 = 42", "between 1969 and 1972"],
     ["calculator", "search_corpus"]),
    ("What is 10/4 and what is the speed of light?", ["10/4 = 2.5", "299,792,458 metres per second"],
     ["calculator", "search_corpus"]),
    ("When was the Eiffel Tower built, and what is 330 times 3?", ["1887 to 1889", "330 * 3 = 990"],
     ["search_corpus", "calculator"]),
    # arithmetic only
    ("What is 17 x 23?", ["391"], ["calculator"]),
    ("What is 17 × 23?", ["391"], ["calculator"]),
    ("What is 17 times 23?", ["391"], ["calculator"]),
    ("What is 17 plus 4?", ["21"], ["calculator"]),
    ("What is 2**10?", ["1024"], ["calculator"]),
    ("what is 3 + 4 * 2", ["11"], ["calculator"]),
    ("What is the square root of 1764 plus 12?", ["54"], ["calculator"]),
    ("What is 17*23 and what is 2^10?", ["17*23 = 391", "2**10 = 1024"], ["calculator", "calculator"]),
    # corpus facts only
    ("What is Redis Streams?", ["append-only log"], ["search_corpus"]),
    ("How high is Mount Everest?", ["8,849 metres"], ["search_corpus", "search_corpus"]),
    ("When was the Eiffel Tower built and how tall is it?", ["1889", "330 metres"], ["search_corpus", "search_corpus"]),
    # neither: the corpus cannot answer, and the answer says so
    ("What is the capital of Australia?", [UNKNOWN, "'capital' and 'Australia'"], ["search_corpus", "search_corpus"]),
    ("Who won the 2018 World Cup?", [UNKNOWN, "'Cup'"], ["search_corpus", "search_corpus"]),
    # arithmetic the calculator can do, and a fact the corpus lacks
    ("What is 1000 minus 58 and what is the capital of Australia?", ["1000 - 58 = 942", UNKNOWN, "that part"],
     ["calculator", "search_corpus", "search_corpus"]),
]


async def run(question: str, **extra: Any) -> dict[str, Any]:
    graph = build_reflective(FAST)
    out: dict[str, Any] = {"thought": [], "critic_tokens": 0, "tool_use": [], "critic": [], "answer": None}
    async for mode, chunk in graph.astream({"question": question, **extra}, stream_mode=["messages", "custom", "values"]):
        if mode == "messages":
            message, metadata = chunk
            if metadata["ns"] == "THOUGHT":
                out["thought"].append((metadata["langgraph_node"], message.content))
            else:
                out["critic_tokens"] += 1
        elif mode == "custom":
            out["tool_use" if chunk["ns"] == "TOOL_USE" else "critic"].append(chunk)
        else:
            out["answer"] = chunk.get("answer", out["answer"])
    return out


@pytest.mark.asyncio
@pytest.mark.parametrize(("question", "expected", "tools"), TABLE, ids=[q for q, _, _ in TABLE])
async def test_the_final_answer_has_the_right_number_and_fact(question: str, expected: list[str], tools: list[str]) -> None:
    out = await run(question)
    for text in expected:
        assert text in out["answer"], (text, out["answer"])
    calls = [c for c in out["tool_use"] if c["phase"] == "call"]
    assert [c["tool"] for c in calls] == tools
    results = [c for c in out["tool_use"] if c["phase"] == "result"]
    assert [r["call_id"] for r in results] == [c["call_id"] for c in calls] and all(r["ok"] for r in results)
    # The stream keeps its shape: planner and answer think aloud, the critic judges every round.
    assert {node for node, _ in out["thought"]} == {"planner", "answer"} and out["critic_tokens"]
    assert out["critic"][-1]["verdict"] == "approve"
    assert [c["round"] for c in out["critic"]] == list(range(1, len(out["critic"]) + 1))
    if UNKNOWN in expected:
        assert out["critic"][-1]["score"] <= 0.65  # an honest "unknown" is not a confident answer


@pytest.mark.asyncio
async def test_the_viewer_placeholder_question() -> None:
    """The issue's case: both parts in one round, one calculator call and one search, approved."""
    out = await run("What is 17*23 and when was the Eiffel tower built?")
    calls = [c for c in out["tool_use"] if c["phase"] == "call"]
    assert [(c["tool"], c["args"], c["call_id"]) for c in calls] == [
        ("calculator", {"expression": "17*23"}, "call_1"),
        ("search_corpus", {"query": "Eiffel tower built", "k": 3}, "call_2"),
    ]
    plan = "".join(text for node, text in out["thought"] if node == "planner")
    assert plan.startswith("The question has 2 parts: the value of `17*23` and what the corpus says about")
    (critic,) = out["critic"]
    assert critic["verdict"] == "approve" and critic["score"] > 0.9
    assert "391" in critic["reason"] and "Eiffel Tower" in critic["reason"]
    assert "says nothing about" not in out["answer"]
    assert out["answer"].startswith("17*23 = 391. The Eiffel Tower is") and "built from 1887 to 1889" in out["answer"]


# ---------------------------------------------------------------- the critic judges every part


async def critique(question: str, calls: list[tuple[str, dict[str, Any], Any]]) -> tuple[str, float, str]:
    """The scripted critic's verdict on a conversation in which the planner made ``calls``."""
    plans, results = [], []
    for index, (name, args, result) in enumerate(calls, 1):
        plans.append({"round": index, "text": "", "tool_calls": [{"id": f"c{index}", "name": name, "args": args}]})
        content = result if isinstance(result, str) else json.dumps(result)
        results.append({"call_id": f"c{index}", "tool": name, "ok": True, "content": content})
    messages = conversation({"question": question, "plans": plans, "tool_results": results})
    reply = await ScriptedChatModel(tokens_per_s=5000).ainvoke([SystemMessage(content=CRITIC_PROMPT), *messages,
                                                                HumanMessage(content="Judge.")])
    return parse_verdict(reply.text)


@pytest.mark.asyncio
async def test_the_critic_does_not_approve_an_unanswered_part() -> None:
    question = "What is 17*23 and when was the Eiffel tower built?"
    # The old planner's run: two searches for the numbers, no calculator. Never approved now.
    numbers = ("search_corpus", {"query": "17 23", "k": 3}, search_corpus("17 23"))
    wider = ("search_corpus", {"query": "17 23", "k": 6}, search_corpus("17 23", k=6))
    verdict, score, reason = await critique(question, [numbers, wider])
    assert verdict == "revise" and "`17*23` has not been evaluated" in reason and score < 0.5
    # The arithmetic alone, the fact alone: still half an answer.
    calc = ("calculator", {"expression": "17*23"}, "391")
    verdict, _, reason = await critique(question, [calc])
    assert verdict == "revise" and "Nothing has been searched for 'Eiffel', 'tower' and 'built'" in reason
    eiffel = ("search_corpus", {"query": "Eiffel tower built", "k": 3}, search_corpus("Eiffel tower built"))
    assert (await critique(question, [eiffel]))[0] == "revise"
    # Both parts with their evidence: approved.
    verdict, score, _ = await critique(question, [calc, eiffel])
    assert verdict == "approve" and score > 0.9


@pytest.mark.asyncio
async def test_a_passing_mention_is_not_evidence() -> None:
    # 'world' appears in the Eiffel Tower's text ("World's Fair"); that does not answer the question.
    question = "Who won the 2018 World Cup?"
    hits = search_corpus("won 2018 World Cup")
    assert hits and hits[0]["id"] == "eiffel-tower"
    first = ("search_corpus", {"query": "won 2018 World Cup", "k": 3}, hits)
    verdict, score, reason = await critique(question, [first])
    assert verdict == "revise" and "no documents" in reason and score < 0.2
    again = ("search_corpus", {"query": "won 2018 World Cup", "k": 6}, search_corpus("won 2018 World Cup", k=6))
    verdict, score, reason = await critique(question, [first, again])
    assert verdict == "approve" and score <= 0.3 and "must say so rather than guess" in reason


# ---------------------------------------------------------------- a human approves each call


@pytest.mark.asyncio
async def test_each_tool_call_of_a_round_is_approved_on_its_own() -> None:
    """Two calls in one round: two interrupts in turn; no tool runs, and no event is written, twice."""
    graph = build_reflective(FAST, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    question = {"question": "What is 17*23 and when was the Eiffel tower built?", "approve_tools": True}
    seen: list[dict[str, Any]] = []
    asked: list[dict[str, Any]] = []

    async def step(graph_input: Any) -> None:
        async for mode, chunk in graph.astream(graph_input, config, stream_mode=["custom", "updates"]):
            if mode == "custom" and chunk["ns"] == "TOOL_USE":
                seen.append(chunk)
            elif mode == "updates" and "__interrupt__" in chunk:
                asked.extend(i.value for i in chunk["__interrupt__"])

    await step(question)
    await step(Command(resume="yes"))
    await step(Command(resume="no"))
    assert [(a["tool"], a["call_id"]) for a in asked] == [("calculator", "call_1"), ("search_corpus", "call_2")]
    assert [(c["phase"], c["call_id"]) for c in seen] == [("call", "call_1"), ("result", "call_1"),
                                                         ("declined", "call_2")]
    state = await graph.aget_state(config)
    answer = state.values["answer"]
    assert answer.startswith("17*23 = 391.") and "declined" in answer
