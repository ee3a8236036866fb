"""Unit tests for server.agents: tools, scripted model, reflective graph, registry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

from server.agents import (
    AgentLoadError,
    AgentRegistry,
    InvalidInput,
    ReflectiveInput,
    ScriptedChatModel,
    UnknownAgent,
    build_reflective,
    calculator,
    load_graph,
    make_chat_model,
    parse_verdict,
    search_corpus,
)
from server.agents.reflective import CRITIC_PROMPT, PLANNER_PROMPT
from server.agents.tools import langchain_tools, run_tool
from server.config import Settings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "echo_graph.py"
FAST = Settings(scripted_tokens_per_s=5000)


# ---------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17 * 23 + 4", "395"),
        ("2 ** 10", "1024"),
        ("10 / 4", "2.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("-(2 + 3) * 4", "-20"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(pi, 3)", "3.142"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("2 ** -1", "0.5"),
        ("1_000 * 3", "3000"),
    ],
)
def test_calculator_evaluates(expression: str, expected: str) -> None:
    assert calculator(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "not allowed"),
        ("os.getcwd()", "not allowed"),
        ("(1).__class__", "Attribute is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 3", "only numbers"),
        ("[1, 2]", "List is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("2 ^ 3", "use \\*\\* for powers"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("(2 ** 4000) * (2 ** 4000)", "too large"),
        ("10.0 ** 400", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("sqrt(1, 2)", "bad arguments"),
        ("round(1, 10 ** 6)", "precision"),
        ("", "empty"),
        ("1 +", "not a valid arithmetic expression"),
        ("1" + "+1" * 400, "longer than"),
    ],
)
def test_calculator_rejects(expression: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        calculator(expression)
    assert time.perf_counter() - started < 5  # refused up front: computing any of these takes minutes


# ---------------------------------------------------------------- corpus search


def test_search_finds_relevant_documents() -> None:
    hits = search_corpus("What is Redis Streams?")
    assert hits[0]["id"] == "redis-streams"
    assert set(hits[0]) == {"id", "title", "snippet", "score"}
    assert "append-only log" in hits[0]["snippet"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert search_corpus("photosynthesis chlorophyll", k=1)[0]["id"] == "photosynthesis"
    assert search_corpus("Server-Sent Events EventSource")[0]["id"] == "sse"
    assert search_corpus("How tall is the Eiffel Tower?")[0]["id"] == "eiffel-tower"


def test_search_edge_cases() -> None:
    assert search_corpus("the of and") == []
    assert search_corpus("capital of Australia") == []
    assert len(search_corpus("redis", k=2)) == 2
    with pytest.raises(ValueError, match="k must be"):
        search_corpus("redis", k=0)
    assert search_corpus("redis") == search_corpus("redis")


def test_run_tool_validates() -> None:
    assert run_tool("calculator", {"expression": "1 + 1"}) == "2"
    with pytest.raises(ValueError, match="unknown tool"):
        run_tool("shell", {"cmd": "ls"})
    with pytest.raises(ValueError, match="bad argument expression"):
        run_tool("calculator", {})
    with pytest.raises(ValueError, match="bad argument k"):
        run_tool("search_corpus", {"query": "redis", "k": 99})
    assert {t.name for t in langchain_tools()} == {"calculator", "search_corpus"}


# ---------------------------------------------------------------- scripted model


@pytest.mark.asyncio
async def test_scripted_model_is_deterministic_and_streams() -> None:
    model = ScriptedChatModel(tokens_per_s=5000).bind_tools(langchain_tools())
    prompt = [SystemMessage(content=PLANNER_PROMPT), HumanMessage(content="What is 17 * 23 + 4?")]
    first, second = await model.ainvoke(prompt), await model.ainvoke(prompt)
    assert first.content == second.content
    assert "17 * 23 + 4" in first.content and "calculator" in first.content
    assert first.tool_calls == second.tool_calls
    assert [(c["name"], c["args"], c["id"]) for c in first.tool_calls] == [
        ("calculator", {"expression": "17 * 23 + 4"}, "call_1")
    ]
    chunks = [chunk async for chunk in model.astream(prompt)]
    assert len(chunks) > 10
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == first.content
    assert merged.tool_calls[0]["args"] == {"expression": "17 * 23 + 4"}


@pytest.mark.asyncio
async def test_scripted_model_plans_a_search_and_critiques() -> None:
    model = ScriptedChatModel(tokens_per_s=5000)
    plan = await model.bind_tools(langchain_tools()).ainvoke(
        [SystemMessage(content=PLANNER_PROMPT), HumanMessage(content="What is Redis Streams?")]
    )
    assert plan.tool_calls[0]["name"] == "search_corpus"
    assert plan.tool_calls[0]["args"]["query"] == "Redis Streams"
    # Without bound tools it can only talk.
    unbound = await model.ainvoke([SystemMessage(content=PLANNER_PROMPT), HumanMessage(content="What is 2 + 2?")])
    assert unbound.tool_calls == []
    verdict = await model.ainvoke([SystemMessage(content=CRITIC_PROMPT), HumanMessage(content="What is 2 + 2?")])
    assert parse_verdict(verdict.text)[0] == "revise"  # no tool results to judge


def test_parse_verdict_is_robust() -> None:
    assert parse_verdict("VERDICT: approve\nSCORE: 0.86\nREASON: Good.") == ("approve", 0.86, "Good.")
    assert parse_verdict("**Verdict:** Revise\n**Score:** 40/100\n**Reason:** `x` is missing")[:2] == ("revise", 0.4)
    assert parse_verdict("**Verdict:** Revise\n**Reason:** `x` is missing")[2] == "`x` is missing"
    assert parse_verdict("Looks fine to me.") == ("approve", 0.8, "Looks fine to me.")
    assert parse_verdict("SCORE: 7\nVERDICT: approve")[1] == 0.07


# ---------------------------------------------------------------- reflective graph


async def run_reflective(question: str, **extra: Any) -> dict[str, Any]:
    graph = build_reflective(FAST)
    out: dict[str, Any] = {"thought": [], "critic_tokens": [], "custom": [], "updates": [], "answer": None}
    async for namespace, mode, chunk in graph.astream(
        {"question": question, **extra}, stream_mode=["messages", "custom", "updates"], subgraphs=True
    ):
        assert namespace == ()
        if mode == "messages":
            message, metadata = chunk
            assert isinstance(message, AIMessageChunk)  # only model output, never state messages
            bucket = {"THOUGHT": "thought", "CRITIC_EVAL": "critic_tokens"}[metadata["ns"]]
            out[bucket].append((metadata["langgraph_node"], message.content))
        elif mode == "custom":
            orjson.dumps(chunk)
            out["custom"].append(chunk)
        else:
            orjson.dumps(chunk)  # updates carry plain JSON only
            out["updates"].append(chunk)
            out["answer"] = chunk.get("answer", {}).get("answer", out["answer"])
    return out


def of_ns(custom: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
    return [c for c in custom if c["ns"] == ns]


@pytest.mark.asyncio
async def test_reflective_arithmetic_run() -> None:
    out = await run_reflective("What is 17 * 23 + 4?")
    assert "395" in out["answer"]
    planner_text = "".join(text for node, text in out["thought"] if node == "planner")
    assert "calculator" in planner_text and len(out["thought"]) > 20
    assert {node for node, _ in out["thought"]} == {"planner", "answer"}
    assert out["critic_tokens"] and {node for node, _ in out["critic_tokens"]} == {"critic"}
    call, result = of_ns(out["custom"], "TOOL_USE")
    assert call == {"ns": "TOOL_USE", "phase": "call", "tool": "calculator", "args": {"expression": "17 * 23 + 4"}, "call_id": "call_1"}
    assert result["phase"] == "result" and result["call_id"] == "call_1" and result["ok"] is True
    assert result["result"] == "395" and result["duration_ms"] >= 0
    (critic,) = of_ns(out["custom"], "CRITIC_EVAL")
    assert critic["verdict"] == "approve" and critic["round"] == 1 and 0 <= critic["score"] <= 1
    assert [next(iter(u)) for u in out["updates"]] == ["planner", "tools", "critic", "answer"]


@pytest.mark.asyncio
async def test_reflective_corpus_question() -> None:
    out = await run_reflective("What is Redis Streams?")
    assert "append-only log" in out["answer"] and "Redis Streams" in out["answer"]
    call = of_ns(out["custom"], "TOOL_USE")[0]
    assert call["tool"] == "search_corpus" and call["args"] == {"query": "Redis Streams", "k": 3}
    assert [c["verdict"] for c in of_ns(out["custom"], "CRITIC_EVAL")] == ["approve"]


@pytest.mark.asyncio
async def test_reflective_revises_until_the_evidence_is_complete() -> None:
    out = await run_reflective("When was the Eiffel Tower built and how tall is it?")
    critics = of_ns(out["custom"], "CRITIC_EVAL")
    assert [(c["verdict"], c["round"]) for c in critics] == [("revise", 1), ("approve", 2)]
    assert "tall" in critics[0]["reason"] and critics[0]["score"] < critics[1]["score"]
    queries = [c["args"]["query"] for c in of_ns(out["custom"], "TOOL_USE") if c["phase"] == "call"]
    assert queries == ["Eiffel Tower built tall", "tall"]
    second_plan = [text for node, text in out["thought"] if node == "planner"]
    assert "reviewer" in "".join(second_plan)
    assert "1889" in out["answer"] and "330 metres" in out["answer"]
    assert [next(iter(u)) for u in out["updates"]].count("planner") == 2


@pytest.mark.asyncio
async def test_reflective_stops_at_the_round_limit() -> None:
    out = await run_reflective("What is the capital of Australia?", max_rounds=1)
    assert [(c["verdict"], c["round"]) for c in of_ns(out["custom"], "CRITIC_EVAL")] == [("revise", 1)]
    assert "could not find" in out["answer"]


@pytest.mark.asyncio
async def test_reflective_judges_an_empty_corpus_as_an_honest_unknown() -> None:
    # A wider second search that finds nothing either: the critic approves saying "unknown"
    # (low score) instead of looping, and the answer says so rather than guessing.
    out = await run_reflective("What is the capital of Australia?")
    critics = of_ns(out["custom"], "CRITIC_EVAL")
    assert [(c["verdict"], c["round"]) for c in critics] == [("revise", 1), ("approve", 2)]
    assert critics[-1]["score"] <= 0.3 and "does not cover" in critics[-1]["reason"]
    assert out["answer"].startswith("I could not find anything about 'capital' and 'Australia'")


@pytest.mark.asyncio
async def test_reflective_tool_error_is_reported_not_raised() -> None:
    out = await run_reflective("What is 1,000 * 3?")
    results = [c for c in of_ns(out["custom"], "TOOL_USE") if c["phase"] == "result"]
    assert results[0]["ok"] is False and "not allowed" in results[0]["error"] and results[0]["result"] is None
    assert results[1]["ok"] is True and results[1]["result"] == "3000"
    assert "3000" in out["answer"]


@pytest.mark.asyncio
async def test_reflective_is_deterministic() -> None:
    def strip(out: dict[str, Any]) -> list[Any]:
        custom = [{k: v for k, v in c.items() if k != "duration_ms"} for c in out["custom"]]
        return [out["thought"], out["critic_tokens"], custom, out["answer"]]

    question = "When was the Eiffel Tower built and how tall is it?"
    assert strip(await run_reflective(question)) == strip(await run_reflective(question))


@pytest.mark.asyncio
async def test_reflective_schema_and_output() -> None:
    graph = build_reflective(FAST)
    assert graph.builder.input_schema is ReflectiveInput
    assert graph.get_input_jsonschema()["required"] == ["question"]
    result = await graph.ainvoke({"question": "What is 2 ** 8?"})
    assert result == {"answer": "2 ** 8 = 256.", "rounds": 1, "score": 0.95}


def test_make_chat_model() -> None:
    assert isinstance(make_chat_model(Settings()), ScriptedChatModel)
    model = make_chat_model(Settings(llm="openai", llm_base_url="http://127.0.0.1:9/v1", llm_api_key="k", llm_model="m"))
    assert type(model).__name__ == "ChatOpenAI" and model.model_name == "m" and model.streaming


# ---------------------------------------------------------------- registry


@pytest.mark.asyncio
async def test_registry_loads_the_fixture_graph() -> None:
    registry = AgentRegistry.from_settings(Settings(agents=(f"echo={FIXTURE}:graph",)))
    assert registry.names() == ["reflective", "echo"]
    echo = registry.get("echo")
    assert echo.description.startswith("Echo:")
    described = {d["name"]: d for d in registry.describe()}
    assert described["echo"]["input_schema"]["required"] == ["text"]
    assert described["reflective"]["input_schema"]["properties"]["question"]["maxLength"] == 2000
    chunks = [
        chunk
        async for _, mode, chunk in echo.graph.astream(
            echo.validate_input({"text": "a b"}), stream_mode=["custom", "updates"], subgraphs=True
        )
        if mode == "custom"
    ]
    assert [c["ns"] for c in chunks] == ["SEARCH", "SEARCH", "SUMMARY"]
    with pytest.raises(UnknownAgent, match="unknown agent 'nope'"):
        registry.get("nope")


def test_input_validation_names_the_field() -> None:
    registry = AgentRegistry.from_settings(Settings(agents=(f"echo={FIXTURE}:graph",)))
    reflective, echo = registry.get("reflective"), registry.get("echo")
    assert reflective.validate_input({"question": "hi"}) == {"question": "hi", "max_rounds": None, "approve_tools": False}
    cases = [
        (reflective, {}, "question"),
        (reflective, {"question": ""}, "question"),
        (reflective, {"question": "x" * 2001}, "question"),
        (reflective, {"question": "q", "max_rounds": 0}, "max_rounds"),
        (reflective, {"question": "q", "colour": "red"}, "colour"),
        (reflective, ["q"], "input"),
        (echo, {}, "text"),
        (echo, {"text": 5}, "text"),
        (echo, {"text": "a", "other": 1}, "other"),
        (echo, "text", "input"),
    ]
    for agent, data, field in cases:
        with pytest.raises(InvalidInput) as caught:
            agent.validate_input(data)
        assert caught.value.field == field, (data, caught.value)


def test_load_graph_accepts_graphs_builders_and_factories(tmp_path: Path) -> None:
    source = tmp_path / "user_graph.py"
    source.write_text(
        "from typing import TypedDict\n"  # typing.TypedDict: pydantic cannot build its schema on 3.11
        "from langgraph.graph import StateGraph, START, END\n"
        "class S(TypedDict):\n    n: int\n"
        "def make():\n"
        "    b = StateGraph(S)\n    b.add_node('inc', lambda s: {'n': s['n'] + 1})\n"
        "    b.add_edge(START, 'inc'); b.add_edge('inc', END)\n    return b\n"
        "builder = make()\ncompiled = make().compile()\nnumber = 42\n"
        "def broken():\n    raise RuntimeError('boom')\n"
    )
    for attribute in ("builder", "compiled", "make"):
        assert load_graph(f"{source}:{attribute}").invoke({"n": 1}) == {"n": 2}
    spec = AgentRegistry.spec_from_entry(f"inc={source}:compiled")
    assert spec.input_json_schema()["required"] == ["n"]
    with pytest.raises(InvalidInput, match="n: Field required"):
        spec.validate_input({})
    with pytest.raises(AgentLoadError, match="int is not a LangGraph graph"):
        load_graph(f"{source}:number")
    with pytest.raises(AgentLoadError, match="calling the factory failed: RuntimeError: boom"):
        load_graph(f"{source}:broken")


def test_load_graph_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import nonexistent_dependency_xyz\n")
    cases = [
        ("no_colon_here", "expected 'package.module:attribute'"),
        ("module:", "expected 'package.module:attribute'"),
        (f"{tmp_path}/missing.py:graph", "file not found"),
        (f"{bad}:graph", "importing .*bad.py failed: ModuleNotFoundError"),
        ("nonexistent_module_xyz:graph", "module 'nonexistent_module_xyz' not found"),
        (f"{FIXTURE}:nothing", "has no attribute 'nothing'"),
        ("json:dumps", "the factory failed|not a LangGraph graph"),
    ]
    for spec, message in cases:
        with pytest.raises(AgentLoadError, match=message):
            load_graph(spec)


def test_registry_rejects_bad_entries() -> None:
    for entry, message in [
        ("noequals", "expected 'name=module:attribute'"),
        (f"bad name={FIXTURE}:graph", "name must be"),
        ("x=nonexistent_module_xyz:graph", "agent 'x': .*not found"),
        (f"reflective={FIXTURE}:graph", "already registered"),
    ]:
        with pytest.raises(AgentLoadError, match=message):
            AgentRegistry.from_settings(Settings(agents=(entry,)))
