"""Issue 12: the LangGraph Agent Server protocol, spoken to by the REAL official clients.

Every test drives a real ``python -m server serve`` process (started once per module with
the graphs of ``tests/fixtures/lg_graphs.py``) through the official Python ``langgraph_sdk``
(``get_client(url=...)``, its async API) or ``langgraph.pregel.remote.RemoteGraph``; no
request is hand-written. What the server streams is compared with what the same graph
yields when run locally by LangGraph itself (task-id namespaces and interrupt ids are the
only things normalised; message ids are fixed by the graphs).

Notes on the SDK (0.4.14) this relies on:
* ``runs.stream`` / ``join_stream`` yield every SSE event *including* ``end`` and stop only
  when the server closes the stream; a stream that does not close after ``end`` hangs the
  SDK, so every read here has a timeout (a hang fails the test).
* ``runs.create`` / ``runs.stream`` / ``threads.*`` raise the typed errors
  (``ConflictError``, ``NotFoundError``...); ``runs.wait`` / ``runs.join`` /
  ``runs.cancel(wait=True)`` go through ``request_reconnect`` and raise a plain
  ``httpx.HTTPStatusError``.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel.remote import RemoteGraph
from langgraph.types import Interrupt
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
)
from langgraph_sdk.schema import StreamPart

from tests.auth_support import Minter, bearer, write_keys_file
from tests.fixtures import lg_graphs
from tests.fixtures.lg_graphs import BROKEN_MESSAGE, QUESTION, chat_reply
from tests.support import ServerProcess

from .conftest import agent_flags, start_server

GRAPHS = ("chat", "nested", "asker", "slow", "broken")
LG_AGENTS = {name: f"tests/fixtures/lg_graphs.py:{name}" for name in GRAPHS}
ASSISTANT_NS = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
ENV = {"THOUGHTSTREAM_SSE_PING_S": "0.5"}
T = 30.0  # seconds any one stream / wait may take before the test fails (a hang)
TASK_NS = re.compile(r"^(?P<name>[A-Za-z_][\w-]*):(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def assistant_uuid(graph_id: str) -> str:
    return str(uuid.uuid5(ASSISTANT_NS, graph_id))


# ----------------------------------------------------------------------------- servers and clients


@pytest.fixture(scope="module")
def lg_server() -> Iterator[ServerProcess]:
    server = start_server(*agent_flags(LG_AGENTS), env=ENV)
    try:
        yield server
    finally:
        server.stop()
        print(f"--- lg server ---\n{server.output()[-4000:]}")


def sdk(url: str, **kw: Any) -> LangGraphClient:
    """An SDK client that never picks up an API key from the environment."""
    kw.setdefault("api_key", None)
    return get_client(url=url, timeout=httpx.Timeout(T, connect=5.0), **kw)


@pytest.fixture
async def lg(lg_server: ServerProcess) -> AsyncIterator[LangGraphClient]:
    client = sdk(lg_server.url)
    try:
        yield client
    finally:
        await client.aclose()


# ----------------------------------------------------------------------------- stream helpers


async def collect(stream: AsyncIterator[StreamPart], timeout: float = T) -> list[StreamPart]:
    """Every part the SDK yields, until the server closes the stream (a hang fails)."""
    parts: list[StreamPart] = []
    try:
        async with asyncio.timeout(timeout):
            async for part in stream:
                parts.append(part)
    except TimeoutError:
        raise AssertionError(f"the stream did not end within {timeout}s; got {[p.event for p in parts]}") from None
    return parts


async def read_until(stream: AsyncIterator[StreamPart], pred: Callable[[StreamPart], bool],
                     timeout: float = T) -> list[StreamPart]:
    """Parts up to and including the first that satisfies ``pred``; then closes the stream."""
    parts: list[StreamPart] = []
    try:
        async with asyncio.timeout(timeout):
            async for part in stream:
                parts.append(part)
                if pred(part):
                    return parts
    except TimeoutError:
        raise AssertionError(f"no matching part within {timeout}s; got {parts}") from None
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    raise AssertionError(f"the stream ended before a matching part; got {parts}")


EVENT_ID = re.compile(r"^(?P<seq>\d+)(?:\.(?P<k>[1-9]\d*))?$")


def id_key(event_id: str | None) -> float:
    """An SSE id as a number: ``<seq>`` or ``<seq-1>.<k>`` (8 < 8.1 < 8.2 < 9)."""
    assert event_id is not None and EVENT_ID.match(event_id), f"not a LangGraph stream event id: {event_id!r}"
    return float(event_id)


def check_ids(ids: list[str | None], *, mid_group: bool = False) -> None:
    """Ids grow strictly (numerically), and follow the server's rule for one log event that
    gives several frames: all but the last are ``<seq-1>.1``, ``<seq-1>.2``, ... and the last
    is ``<seq>``. ``mid_group``: the ids may start inside a group (a resumed join)."""
    keys = [id_key(i) for i in ids]
    assert all(a < b for a, b in zip(keys, keys[1:])), f"ids not strictly increasing: {ids}"
    group: tuple[int, int] | None = None  # (seq-1, k) of the last dotted id seen
    for index, raw in enumerate(ids):
        m = EVENT_ID.match(raw or "")
        assert m is not None
        seq, k = int(m["seq"]), int(m["k"] or 0)
        if k:
            if group is None:
                assert k == 1 or (mid_group and index == 0), f"{raw} opens a group not at .1: {ids}"
            else:
                assert group == (seq, k - 1), f"{raw} after {ids[index - 1]}: {ids}"
            group = (seq, k)
        else:
            assert group is None or seq == group[0] + 1, f"{raw} closes the group of {ids[index - 1]}: {ids}"
            group = None
    assert group is None, f"a group never closed by its <seq> id: {ids}"


def check_stream(parts: list[StreamPart], *, thread_id: str | None = None) -> tuple[dict[str, Any], list[StreamPart]]:
    """The frame every stream must have: ``metadata`` first, ``end`` (data null) last and once,
    no ``error``, every event with an id, ids strictly increasing by the ``<seq-1>.<k>``
    rule (check_ids). Returns (metadata, body)."""
    events = [p.event for p in parts]
    assert parts, "empty stream"
    assert events[0] == "metadata", events
    assert events[-1] == "end", events
    assert events.count("end") == 1, events
    assert parts[-1].data is None, parts[-1]
    assert "error" not in events, [p for p in parts if p.event == "error"]
    check_ids([p.id for p in parts])
    meta = parts[0].data
    assert isinstance(meta, dict), meta
    uuid.UUID(meta["run_id"])
    assert meta["attempt"] == 1, meta
    if thread_id is not None:
        assert meta["thread_id"] == thread_id, meta
    return meta, parts[1:-1]


def body_of(parts: list[StreamPart], **kw: Any) -> list[tuple[str, Any]]:
    return [(p.event, norm(p.data)) for p in check_stream(parts, **kw)[1]]


# ----------------------------------------------------------------------------- normalisation


def _is_message_dict(x: dict[str, Any]) -> bool:
    return "content" in x and "type" in x and ("additional_kwargs" in x or "response_metadata" in x)


def norm(x: Any) -> Any:
    """JSON-like, with messages reduced to (type, content, id) and interrupt ids blanked
    (they hash a task id, which hashes the checkpoint id: never equal across two runs)."""
    if isinstance(x, BaseMessage):
        return {"type": x.type, "content": x.content, "id": x.id}
    if isinstance(x, Interrupt):
        return {"value": norm(x.value), "id": "<interrupt>"}
    if isinstance(x, dict):
        if _is_message_dict(x):
            return {"type": x["type"], "content": x["content"], "id": x.get("id")}
        out = {}
        for k, v in x.items():
            if k == "__interrupt__":
                out[k] = [{"value": norm(i.value if isinstance(i, Interrupt) else i["value"]), "id": "<interrupt>"}
                          for i in v]
            else:
                out[k] = norm(v)
        return out
    if isinstance(x, (list, tuple)):
        return [norm(v) for v in x]
    return x


def strip_ns(event: str) -> str:
    """'updates|inner:<task id>' -> 'updates|inner' (and checks the task id is there)."""
    mode, *ns = event.split("|")
    names = []
    for part in ns:
        m = TASK_NS.match(part)
        assert m, f"namespace {part!r} of {event!r} is not name:<task uuid>"
        names.append(m["name"])
    return "|".join([mode, *names])


def local_graph(name: str) -> Any:
    """The same graph as served, with a checkpointer as the server gives it."""
    return getattr(lg_graphs, name).copy(update={"checkpointer": InMemorySaver()})


def local_config() -> dict[str, Any]:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


async def local_stream(name: str, input: Any, modes: list[str], *, subgraphs: bool = False,
                       graph: Any = None, config: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """What LangGraph itself streams, as (event name as the server names it, normalised data)."""
    graph = graph or local_graph(name)
    config = config or local_config()
    out: list[tuple[str, Any]] = []
    async for item in graph.astream(input, config, stream_mode=modes, subgraphs=True):
        ns, mode, chunk = item
        if ns and not subgraphs:
            continue
        event = "|".join([mode, *(p.split(":", 1)[0] for p in ns)])
        out.append((event, norm(chunk)))
    return out


async def local_values(name: str, input: Any) -> Any:
    return norm(await local_graph(name).ainvoke(input, local_config()))


def human(text: str, mid: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text, "id": mid}]}


NESTED_IN = {"topic": "cats"}
NESTED_OUT = {"topic": "cats", "notes": ["prepared cats", "finished"], "found": "facts about cats",
              "summary": "prepared cats; facts about cats"}


async def new_thread(lg: LangGraphClient, **kw: Any) -> str:
    return (await lg.threads.create(**kw))["thread_id"]


async def wait_for(coro: Any, timeout: float = T) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout}s") from None


async def started(lg: LangGraphClient, thread_id: str, run_id: str, tick: int = 0) -> list[StreamPart]:
    """Wait, on the run's own stream read from its start, until it has written TICK ``tick``
    (by default its first)."""
    return await read_until(
        lg.runs.join_stream(thread_id, run_id, stream_mode="custom", last_event_id="-1"),
        lambda p: p.event == "custom" and p.data["index"] >= tick)


# ============================================================================= assistants


async def test_assistants_search_lists_one_assistant_per_graph(lg: LangGraphClient) -> None:
    """POST /assistants/search: a bare array, one default assistant per registered agent, id = uuid5(graph_id)."""
    found = await lg.assistants.search(limit=100)
    assert isinstance(found, list)
    by_graph = {a["graph_id"]: a for a in found}
    assert sorted(by_graph) == sorted(["reflective", *GRAPHS]), found
    assert len(found) == len(by_graph), "one assistant per graph"
    for graph_id, a in by_graph.items():
        assert a["assistant_id"] == assistant_uuid(graph_id), a
        assert a["name"] == graph_id, a
        assert a["version"] == 1 and a["metadata"].get("created_by") == "system", a


async def test_assistants_search_filters_by_graph_id(lg: LangGraphClient) -> None:
    found = await lg.assistants.search(graph_id="nested")
    assert [a["assistant_id"] for a in found] == [assistant_uuid("nested")], found


async def test_assistants_get_by_name_and_by_uuid(lg: LangGraphClient) -> None:
    by_name = await lg.assistants.get("chat")
    by_id = await lg.assistants.get(assistant_uuid("chat"))
    assert by_name["assistant_id"] == by_id["assistant_id"] == assistant_uuid("chat")
    assert by_name["graph_id"] == by_id["graph_id"] == "chat"
    assert by_name == by_id


async def test_assistants_get_unknown_is_not_found(lg: LangGraphClient) -> None:
    with pytest.raises(NotFoundError):
        await lg.assistants.get("no-such-graph")
    with pytest.raises(NotFoundError):
        await lg.assistants.get(str(uuid.uuid4()))


async def test_assistant_schemas_are_the_graphs_json_schemas(lg: LangGraphClient) -> None:
    schemas = await lg.assistants.get_schemas(assistant_uuid("nested"))
    assert schemas["graph_id"] == "nested"
    local = lg_graphs.nested
    assert schemas["input_schema"]["properties"] == local.get_input_jsonschema()["properties"]
    assert schemas["input_schema"].get("required") == ["topic"]
    assert schemas["output_schema"]["properties"] == local.get_output_jsonschema()["properties"]
    assert set(schemas["state_schema"]["properties"]) == {"topic", "notes", "found", "summary"}
    by_name = await lg.assistants.get_schemas("nested")
    assert by_name == schemas


async def test_assistant_graph_has_the_graphs_nodes(lg: LangGraphClient) -> None:
    drawn = await lg.assistants.get_graph("nested")
    local = lg_graphs.nested.get_graph().to_json()
    assert sorted(n["id"] for n in drawn["nodes"]) == sorted(n["id"] for n in local["nodes"])
    assert sorted((e["source"], e["target"]) for e in drawn["edges"]) == \
        sorted((e["source"], e["target"]) for e in local["edges"])


# ============================================================================= threads


async def test_thread_create_get_delete(lg: LangGraphClient) -> None:
    tag = uuid.uuid4().hex
    made = await lg.threads.create(metadata={"tag": tag})
    tid = made["thread_id"]
    uuid.UUID(tid)
    assert made["status"] == "idle"
    assert made["metadata"].get("tag") == tag
    got = await lg.threads.get(tid)
    assert got["thread_id"] == tid and got["status"] == "idle" and got["metadata"].get("tag") == tag
    assert not got.get("interrupts")
    await lg.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await lg.threads.get(tid)
    with pytest.raises(NotFoundError):
        await lg.threads.delete(tid)


async def test_thread_create_with_id_if_exists(lg: LangGraphClient) -> None:
    tid = str(uuid.uuid4())
    made = await lg.threads.create(thread_id=tid, metadata={"first": True})
    assert made["thread_id"] == tid
    with pytest.raises(ConflictError):
        await lg.threads.create(thread_id=tid)  # if_exists defaults to raise
    with pytest.raises(ConflictError):
        await lg.threads.create(thread_id=tid, if_exists="raise")
    again = await lg.threads.create(thread_id=tid, if_exists="do_nothing", metadata={"second": True})
    assert again["thread_id"] == tid
    assert again["metadata"].get("first") is True and "second" not in again["metadata"], again
    assert again["created_at"] == made["created_at"]


async def test_thread_search_by_metadata_and_status(lg: LangGraphClient) -> None:
    tag = uuid.uuid4().hex
    ids = [await new_thread(lg, metadata={"suite": tag, "i": i}) for i in range(3)]
    found = await lg.threads.search(metadata={"suite": tag}, limit=10)
    assert sorted(t["thread_id"] for t in found) == sorted(ids)
    one = await lg.threads.search(metadata={"suite": tag, "i": 1})
    assert [t["thread_id"] for t in one] == [ids[1]]
    page1 = await lg.threads.search(metadata={"suite": tag}, limit=2)
    page2 = await lg.threads.search(metadata={"suite": tag}, limit=2, offset=2)
    assert len(page1) == 2 and len(page2) == 1
    assert sorted(t["thread_id"] for t in page1 + page2) == sorted(ids)
    assert len(await lg.threads.search(metadata={"suite": tag}, status="idle")) == 3
    assert await lg.threads.search(metadata={"suite": tag}, status="busy") == []
    assert await lg.threads.search(metadata={"suite": uuid.uuid4().hex}) == []


async def test_fresh_thread_state_is_empty(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    state = await lg.threads.get_state(tid)
    assert state["checkpoint"] is None, state
    assert not state["values"], state
    assert list(state["next"]) == [], state
    assert await lg.threads.get_history(tid) == []


async def test_state_and_history_after_runs_equal_langgraphs(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    graph, config = local_graph("chat"), local_config()
    for text, mid in (("hello world", "h1"), ("second turn", "h2")):
        got = await wait_for(lg.runs.wait(tid, "chat", input=human(text, mid)))
        want = await graph.ainvoke(human(text, mid), config)
        assert norm(got) == norm(want)
    assert norm(want)["messages"] == [
        {"type": "human", "content": "hello world", "id": "h1"},
        {"type": "ai", "content": chat_reply("hello world"), "id": "ai-1"},
        {"type": "human", "content": "second turn", "id": "h2"},
        {"type": "ai", "content": chat_reply("second turn"), "id": "ai-3"},
    ]
    state = await lg.threads.get_state(tid)
    assert norm(state["values"]) == norm(want)
    assert list(state["next"]) == []
    assert state["checkpoint"]["thread_id"] == tid and state["checkpoint"]["checkpoint_id"]
    thread = await lg.threads.get(tid)
    assert thread["status"] == "idle" and norm(thread["values"]) == norm(want)

    history = await lg.threads.get_history(tid, limit=100)
    local_history = [s async for s in graph.aget_state_history(config)]
    assert len(history) == len(local_history)
    assert [norm(h["values"]) for h in history] == [norm(s.values) for s in local_history]
    assert [list(h["next"]) for h in history] == [list(s.next) for s in local_history]
    assert history[0]["checkpoint"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
    for newer, older in zip(history, history[1:]):
        assert newer["parent_checkpoint"]["checkpoint_id"] == older["checkpoint"]["checkpoint_id"]
    assert len(await lg.threads.get_history(tid, limit=2)) == 2


async def test_delete_thread_with_runs(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    await wait_for(lg.runs.wait(tid, "nested", input=NESTED_IN))
    await lg.threads.delete(tid)
    with pytest.raises(NotFoundError):
        await lg.threads.get(tid)
    with pytest.raises(NotFoundError):
        await lg.threads.get_state(tid)


# ============================================================================= runs


async def test_runs_create_join_get_list(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "nested", input=NESTED_IN, metadata={"who": "test"})
    uuid.UUID(run["run_id"])
    assert run["thread_id"] == tid
    assert run["assistant_id"] == assistant_uuid("nested")
    assert run["status"] in ("pending", "running"), run
    assert run["multitask_strategy"] == "enqueue", run  # the official default
    assert run["metadata"].get("who") == "test"
    joined = await wait_for(lg.runs.join(tid, run["run_id"]))
    assert norm(joined) == NESTED_OUT == await local_values("nested", NESTED_IN)
    got = await lg.runs.get(tid, run["run_id"])
    assert got["run_id"] == run["run_id"] and got["status"] == "success", got
    thread = await lg.threads.get(tid)
    assert thread["metadata"].get("graph_id") == "nested", thread  # a run marks its thread with its graph
    assert thread["metadata"].get("assistant_id") == assistant_uuid("nested"), thread
    second = await lg.runs.create(tid, "nested", input={"topic": "dogs"})
    await wait_for(lg.runs.join(tid, second["run_id"]))
    listed = await lg.runs.list(tid)
    assert [r["run_id"] for r in listed] == [second["run_id"], run["run_id"]]  # newest first
    assert [r["status"] for r in listed] == ["success", "success"]
    assert [r["run_id"] for r in await lg.runs.list(tid, limit=1)] == [second["run_id"]]
    assert [r["run_id"] for r in await lg.runs.list(tid, limit=1, offset=1)] == [run["run_id"]]
    with pytest.raises(NotFoundError):
        await lg.runs.get(tid, str(uuid.uuid4()))


async def test_runs_create_on_unknown_thread(lg: LangGraphClient) -> None:
    tid = str(uuid.uuid4())
    with pytest.raises(NotFoundError):
        await lg.runs.create(tid, "nested", input=NESTED_IN)
    run = await lg.runs.create(tid, "nested", input=NESTED_IN, if_not_exists="create")
    assert run["thread_id"] == tid
    assert norm(await wait_for(lg.runs.join(tid, run["run_id"]))) == NESTED_OUT
    assert (await lg.threads.get(tid))["thread_id"] == tid


async def test_runs_with_an_unknown_assistant_are_refused(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    with pytest.raises(APIStatusError) as info:
        await lg.runs.create(tid, "no-such-graph", input={})
    assert info.value.status_code in (404, 422)
    with pytest.raises(NotFoundError):
        await lg.runs.create(tid, str(uuid.uuid4()), input={})
    assert await lg.runs.list(tid) == []


async def test_threadless_run_deletes_its_thread_unless_kept(lg: LangGraphClient) -> None:
    """A threadless run runs on a temporary thread that the thread endpoints never show
    (on_completion="delete", the default, as the official servers delete it), or keep with
    on_completion="keep". Its run endpoints still answer (the SDK's reconnect goes to
    /threads/{tid}/runs/{rid}/stream)."""
    parts = await collect(lg.runs.stream(None, "nested", input=NESTED_IN, stream_mode=["values", "custom"]))
    meta, _ = check_stream(parts)
    tid, rid = meta["thread_id"], meta["run_id"]
    with pytest.raises(NotFoundError):
        await lg.threads.get(tid)
    with pytest.raises(NotFoundError):
        await lg.threads.get_state(tid)
    with pytest.raises(NotFoundError):
        await lg.threads.get_history(tid)
    assert tid not in {t["thread_id"] for t in await lg.threads.search(limit=1000)}
    assert (await lg.runs.get(tid, rid))["status"] == "success"
    assert norm(await wait_for(lg.runs.join(tid, rid))) == NESTED_OUT
    replay = await collect(lg.runs.join_stream(tid, rid, last_event_id="-1"), timeout=5)
    assert without_metadata(replay) == without_metadata(parts)

    kept = await collect(lg.runs.stream(None, "nested", input=NESTED_IN, on_completion="keep"))
    kept_tid = check_stream(kept)[0]["thread_id"]
    thread = await lg.threads.get(kept_tid)
    assert norm(thread["values"]) == NESTED_OUT and thread["status"] == "idle", thread
    assert norm((await lg.threads.get_state(kept_tid))["values"]) == NESTED_OUT
    assert kept_tid in {t["thread_id"] for t in await lg.threads.search(limit=1000)}


async def test_runs_wait_returns_the_final_values(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    got = await wait_for(lg.runs.wait(tid, "nested", input=NESTED_IN))
    assert norm(got) == NESTED_OUT == await local_values("nested", NESTED_IN)
    assert (await lg.runs.list(tid))[0]["status"] == "success"


async def test_runs_wait_threadless(lg: LangGraphClient) -> None:
    got = await wait_for(lg.runs.wait(None, "nested", input=NESTED_IN))
    assert norm(got) == NESTED_OUT
    chat = await wait_for(lg.runs.wait(None, "chat", input=human("hi there", "h1")))
    assert norm(chat) == await local_values("chat", human("hi there", "h1"))


async def test_runs_stream_threadless(lg: LangGraphClient) -> None:
    parts = await collect(lg.runs.stream(None, "nested", input=NESTED_IN, stream_mode=["values", "updates"]))
    assert body_of(parts) == await local_stream("nested", NESTED_IN, ["values", "updates"])


# ============================================================================= stream modes


async def test_stream_values(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    created: list[Any] = []
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode="values",
                                         on_run_created=created.append))
    meta, _ = check_stream(parts, thread_id=tid)
    assert created and created[0]["run_id"] == meta["run_id"] and created[0]["thread_id"] == tid
    got = body_of(parts, thread_id=tid)
    assert got == await local_stream("nested", NESTED_IN, ["values"])
    assert got[-1] == ("values", NESTED_OUT)
    assert (await lg.runs.get(tid, meta["run_id"]))["status"] == "success"


async def test_stream_updates(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    got = body_of(await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode="updates")))
    assert got == await local_stream("nested", NESTED_IN, ["updates"])
    assert [list(d) for _, d in got] == [["prepare"], ["inner"], ["finish"]]


async def test_stream_custom_carries_the_chunks_as_written(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    got = body_of(await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode="custom")))
    assert got == await local_stream("nested", NESTED_IN, ["custom"])
    assert got == [("custom", {"ns": "THOUGHT", "text": "preparing cats"}),
                   ("custom", {"ns": "CRITIC_EVAL", "verdict": "ok", "notes": 2})]


async def test_stream_messages_tuple_carries_ai_message_chunks(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "chat", input=human("hello big world", "h1"),
                                         stream_mode="messages-tuple"))
    _, body = check_stream(parts)
    assert {p.event for p in body} == {"messages"}, [p.event for p in body]
    local = [(msg, meta) async for msg, meta in
             local_graph("chat").astream(human("hello big world", "h1"), local_config(), stream_mode="messages")]
    assert len(body) == len(local)
    for part, (msg, meta) in zip(body, local):
        chunk, server_meta = part.data
        assert chunk["type"] == "AIMessageChunk" == msg.type
        assert (chunk["content"], chunk["id"]) == (msg.content, msg.id)
        assert server_meta["langgraph_node"] == meta["langgraph_node"] == "respond"
        assert server_meta["langgraph_step"] == meta["langgraph_step"]
    assert "".join(p.data[0]["content"] for p in body) == chat_reply("hello big world")
    assert {p.data[0]["id"] for p in body} == {"ai-1"}


async def test_stream_messages_partial_and_metadata(lg: LangGraphClient) -> None:
    """The 'messages' mode as the official servers send it: messages/metadata once per
    message id, then messages/partial with the message accumulated so far; each its own event id."""
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "chat", input=human("hello big world", "h1"), stream_mode="messages"))
    body = parts[1:-1]
    events = [p.event for p in body]
    assert events[0] == "messages/metadata", events
    assert set(events) <= {"messages/metadata", "messages/partial", "messages/complete"}, events
    assert events.count("messages/metadata") == 1, events
    meta = body[0].data
    assert list(meta) == ["ai-1"] and meta["ai-1"]["metadata"]["langgraph_node"] == "respond", meta
    partials = [p.data for p in body if p.event == "messages/partial"]
    tokens = re.split(r"(\s)", chat_reply("hello big world"))
    assert [len(p) for p in partials] == [1] * len(tokens)
    assert [p[0]["content"] for p in partials] == ["".join(tokens[:i + 1]) for i in range(len(tokens))]
    assert {p[0]["id"] for p in partials} == {"ai-1"}
    assert {p[0]["type"] for p in partials} <= {"ai", "AIMessageChunk"}
    for p in body:
        if p.event == "messages/complete":
            assert [m["id"] for m in p.data] == ["ai-1"] and p.data[0]["content"] == chat_reply("hello big world")
    # Each frame its own id: two SSE events under one id would make a Last-Event-ID resume
    # skip the second. The first chunk gives two frames (metadata, partial) from one log
    # event: <seq-1>.1 then <seq>; every later chunk one frame, <seq>.
    check_stream(parts, thread_id=tid)
    first_partial = next(p for p in body if p.event == "messages/partial")
    assert body[1] is first_partial, events
    assert body[0].id == f"{int(first_partial.id) - 1}.1", [p.id for p in body]
    assert all(EVENT_ID.match(p.id)["k"] is None for p in body[1:]), [p.id for p in body]


@pytest.mark.parametrize("graph, input, subgraphs", [
    ("chat", human("hi there you", "h1"), False),
    ("nested", NESTED_IN, True),
], ids=["chat", "nested-subgraphs"])
async def test_stream_events(lg: LangGraphClient, graph: str, input: Any, subgraphs: bool) -> None:
    """stream_mode="events", as this server documents it (server/transports/agent_protocol/
    stream.py): derived from the chunks the run's log stores, so a late joiner can ask for it
    too. One ``on_chain_start`` / ``on_chain_end`` per node task (from LangGraph's ``tasks``
    mode: name = the node, run_id = the task id, data = its input / its output), one
    ``on_chat_model_stream`` per message chunk (name = the node that streamed it, run_id = the
    message id, data.chunk = the chunk), one ``on_custom_event`` per custom chunk, in the
    order LangGraph streamed them; ``events|<ns>`` inside a subgraph.

    Not LangChain's ``astream_events(version="v2")``, which the official servers stream as is:
    there are no ``on_chat_model_start`` / ``on_chat_model_end``, no events of the root graph
    as a chain (``on_chain_start`` named after the graph), no events of runnables inside a
    node, and ``run_id`` / ``parent_ids`` are task and message ids, not LangChain run ids."""
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, graph, input=input, stream_mode="events", stream_subgraphs=subgraphs))
    meta, body = check_stream(parts, thread_id=tid)
    assert {p.event.split("|")[0] for p in body} == {"events"}, [p.event for p in body]

    want: list[tuple[str, dict[str, Any]]] = []
    async for ns, mode, chunk in local_graph(graph).astream(input, local_config(), subgraphs=True,
                                                             stream_mode=["tasks", "messages", "custom"]):
        event = "|".join(["events", *(p.split(":", 1)[0] for p in ns)])
        if mode == "tasks" and "input" in chunk:
            want.append((event, {"event": "on_chain_start", "name": chunk["name"], "data": {"input": norm(chunk["input"])}}))
        elif mode == "tasks":
            want.append((event, {"event": "on_chain_end", "name": chunk["name"], "data": {"output": norm(chunk["result"])}}))
        elif mode == "messages":
            msg, msg_meta = chunk
            want.append((event, {"event": "on_chat_model_stream", "name": msg_meta["langgraph_node"],
                                 "data": {"chunk": {"type": msg.type, "content": msg.content, "id": msg.id}}}))
        else:
            want.append((event, {"event": "on_custom_event", "name": "custom", "data": chunk}))
    got = [(strip_ns(p.event), {"event": p.data["event"], "name": p.data["name"], "data": norm(p.data["data"])})
           for p in body]
    assert got == want

    # A start and its end share the task's id; a chat chunk's run_id is its message's id.
    starts = {p.data["name"]: p.data["run_id"] for p in body if p.data["event"] == "on_chain_start"}
    ends = {p.data["name"]: p.data["run_id"] for p in body if p.data["event"] == "on_chain_end"}
    assert starts == ends and len(set(starts.values())) == len(starts), (starts, ends)
    for p in body:
        if p.data["event"] == "on_chat_model_stream":
            assert p.data["run_id"] == p.data["data"]["chunk"]["id"], p.data
            assert p.data["metadata"]["langgraph_node"] == p.data["name"], p.data
    if graph == "chat":
        streamed = [p.data["data"]["chunk"]["content"] for p in body if p.data["event"] == "on_chat_model_stream"]
        assert len(streamed) > 1 and "".join(streamed) == chat_reply("hi there you"), streamed
        # None of astream_events' own events.
        names = {p.data["event"] for p in body}
        assert names == {"on_chain_start", "on_chat_model_stream", "on_chain_end"}, names
    else:
        assert any("|" in p.event for p in body)
    # A late joiner gets the same (the log stores the chunks; the join takes the run's subgraphs).
    replay = await collect(lg.runs.join_stream(tid, meta["run_id"], stream_mode="events", last_event_id="-1"), timeout=5)
    assert without_metadata(replay) == without_metadata(parts)


async def test_stream_debug(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode="debug"))
    _, body = check_stream(parts)
    assert {p.event for p in body} == {"debug"}
    local = [c async for c in local_graph("nested").astream(NESTED_IN, local_config(), stream_mode="debug")]

    def shape(d: dict[str, Any]) -> tuple:
        payload = d["payload"]
        if d["type"] == "checkpoint":
            return d["type"], d["step"], norm(payload["values"]), list(payload["next"])
        return d["type"], d["step"], payload["name"], norm(payload.get("result"))

    assert [shape(p.data) for p in body] == [shape(c) for c in local]


async def test_stream_tasks(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode="tasks"))
    _, body = check_stream(parts)
    assert {p.event for p in body} == {"tasks"}
    local = [c async for c in local_graph("nested").astream(NESTED_IN, local_config(), stream_mode="tasks")]

    def shape(d: dict[str, Any]) -> tuple:
        if "result" in d:
            return d["name"], "result", norm(d["result"]), d["error"]
        return d["name"], "start", norm(d["input"]), sorted(d["triggers"])

    assert [shape(p.data) for p in body] == [shape(c) for c in local]
    # a start and its result share the task id
    ids = [p.data["id"] for p in body]
    assert ids[0::2] == ids[1::2]


async def test_stream_checkpoints(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode="checkpoints"))
    _, body = check_stream(parts)
    assert {p.event for p in body} == {"checkpoints"}
    local = [c async for c in local_graph("nested").astream(NESTED_IN, local_config(), stream_mode="checkpoints")]

    def shape(d: dict[str, Any]) -> tuple:
        return (norm(d["values"]), list(d["next"]), d["metadata"]["step"], d["metadata"]["source"],
                [t["name"] for t in d["tasks"]])

    assert [shape(p.data) for p in body] == [shape(c) for c in local]
    last = body[-1].data
    state = await lg.threads.get_state(tid)
    assert last["config"]["configurable"]["checkpoint_id"] == state["checkpoint"]["checkpoint_id"]
    assert last["config"]["configurable"]["thread_id"] == tid


async def test_stream_several_modes_at_once_interleave_as_langgraph_does(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    modes = ["values", "updates", "custom"]
    got = body_of(await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode=modes)), thread_id=tid)
    assert got == await local_stream("nested", NESTED_IN, modes)
    chat_tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(chat_tid, "chat", input=human("a b", "h1"),
                                         stream_mode=["values", "messages-tuple", "updates"]))
    _, body = check_stream(parts)
    local = await local_stream("chat", human("a b", "h1"), ["values", "messages", "updates"])
    assert [p.event for p in body] == [e for e, _ in local]
    assert [norm(p.data) for p in body if p.event != "messages"] == [d for e, d in local if e != "messages"]
    assert [(p.data[0]["content"], p.data[0]["id"]) for p in body if p.event == "messages"] == \
        [(d[0]["content"], d[0]["id"]) for e, d in local if e == "messages"]


async def test_stream_subgraphs_names_events_by_namespace(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    modes = ["updates", "custom", "values"]
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode=modes, stream_subgraphs=True))
    _, body = check_stream(parts)
    sub = [p.event for p in body if "|" in p.event]
    assert sub, [p.event for p in body]
    task_ids = {e.split("|")[1] for e in sub}
    assert len(task_ids) == 1 and TASK_NS.match(task_ids.pop())["name"] == "inner", sub
    got = [(strip_ns(p.event), norm(p.data)) for p in body]
    assert got == await local_stream("nested", NESTED_IN, modes, subgraphs=True)
    assert ("custom|inner", {"ns": "TOOL_USE", "tool": "lookup", "args": {"q": "cats"}}) in got
    assert ("updates|inner", {"work": {"found": "facts about cats"}}) in got


async def test_stream_without_subgraphs_has_no_namespaced_events(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    modes = ["updates", "custom", "values"]
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode=modes))
    got = body_of(parts)
    assert all("|" not in e for e, _ in got), got
    assert got == await local_stream("nested", NESTED_IN, modes)


# ============================================================================= errors


async def test_a_failing_graph_streams_error_then_end(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "broken", input={"topic": "x"}, stream_mode=["custom", "updates"]))
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end" and parts[-1].data is None, events
    assert events.count("error") == 1 and events.index("error") == len(events) - 2, events
    error = parts[-2].data
    assert error["error"] == "RuntimeError" and BROKEN_MESSAGE in error["message"], error
    assert [(p.event, p.data) for p in parts[1:-2]] == [
        ("custom", {"ns": "THOUGHT", "text": "about to fail"}), ("updates", {"look": {"seen": True}})]
    rid = parts[0].data["run_id"]
    assert (await lg.runs.get(tid, rid))["status"] == "error"
    assert (await lg.threads.get(tid))["status"] == "error"
    replay = await collect(lg.runs.join_stream(tid, rid, stream_mode=["custom", "updates"], last_event_id="-1"), timeout=5)
    assert [(p.event, p.data, p.id) for p in replay if p.event != "metadata"] == \
        [(p.event, p.data, p.id) for p in parts if p.event != "metadata"]


async def test_a_failing_graph_then_a_good_run_on_the_same_thread(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    await collect(lg.runs.stream(tid, "broken", input={"topic": "x"}))
    assert (await lg.threads.get(tid))["status"] == "error"
    got = await wait_for(lg.runs.wait(tid, "nested", input=NESTED_IN))
    assert norm(got)["summary"] == NESTED_OUT["summary"]
    assert (await lg.threads.get(tid))["status"] == "idle"


# ============================================================================= interrupts


async def ask_bob(lg: LangGraphClient, tid: str) -> tuple[list[tuple[str, Any]], list[StreamPart]]:
    parts = await collect(lg.runs.stream(tid, "asker", input={"who": "bob"}, stream_mode=["values", "updates"]))
    return body_of(parts, thread_id=tid), parts


async def test_interrupt_then_command_resume(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    got, parts = await ask_bob(lg, tid)
    graph, config = local_graph("asker"), local_config()
    assert got == await local_stream("asker", {"who": "bob"}, ["values", "updates"], graph=graph, config=config)
    pending = {"value": {**QUESTION, "who": "bob"}, "id": "<interrupt>"}
    assert got[-1] == ("values", {"who": "bob", "__interrupt__": [pending]}), got
    streamed_ids = {i["id"] for p in parts[1:-1] if isinstance(p.data, dict) for i in p.data.get("__interrupt__", [])}
    assert len(streamed_ids) == 1
    iid = streamed_ids.pop()

    thread = await lg.threads.get(tid)
    assert thread["status"] == "interrupted", thread
    listed = [i for group in thread["interrupts"].values() for i in group]
    assert [(i["id"], i["value"]) for i in listed] == [(iid, {**QUESTION, "who": "bob"})], thread["interrupts"]
    state = await lg.threads.get_state(tid)
    assert list(state["next"]) == ["ask"]
    assert [i["id"] for t in state["tasks"] for i in t["interrupts"]] == [iid]
    assert [i["id"] for i in state.get("interrupts", [])] in ([iid], [])  # newer servers list them here too
    run = (await lg.runs.list(tid))[0]
    assert run["status"] == "success", run  # a graph that stops at interrupt() succeeded; its thread is interrupted

    resumed = await collect(lg.runs.stream(tid, "asker", command={"resume": "Ann"}, stream_mode=["values", "updates"]))
    from langgraph.types import Command
    want = await local_stream("asker", Command(resume="Ann"), ["values", "updates"], graph=graph, config=config)
    assert body_of(resumed, thread_id=tid) == want
    assert want[-1] == ("values", {"who": "bob", "answer": "Ann", "greeting": "hello Ann"})
    thread = await lg.threads.get(tid)
    assert thread["status"] == "idle" and not thread["interrupts"], thread
    assert norm(thread["values"]) == {"who": "bob", "answer": "Ann", "greeting": "hello Ann"}
    assert (await lg.runs.list(tid))[0]["status"] == "success"


async def test_resume_by_interrupt_id_with_runs_wait(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    await ask_bob(lg, tid)
    thread = await lg.threads.get(tid)
    (iid,) = [i["id"] for group in thread["interrupts"].values() for i in group]
    got = await wait_for(lg.runs.wait(tid, "asker", command={"resume": {iid: "Zed"}}))
    assert norm(got) == {"who": "bob", "answer": "Zed", "greeting": "hello Zed"}
    assert (await lg.threads.get(tid))["status"] == "idle"


async def test_two_interrupt_cycles_on_one_thread(lg: LangGraphClient) -> None:
    """The second question on a thread is asked from where the first answer left it (the
    thread's head follows a run that ended at an interrupt)."""
    tid = await new_thread(lg)
    for who, answer in (("bob", "Ann"), ("eve", "Zed")):
        asked = await wait_for(lg.runs.wait(tid, "asker", input={"who": who}))
        assert norm(asked)["__interrupt__"][0]["value"] == {**QUESTION, "who": who}, asked
        assert (await lg.threads.get(tid))["status"] == "interrupted"
        done = await wait_for(lg.runs.wait(tid, "asker", command={"resume": answer}))
        assert norm(done) == {"who": who, "answer": answer, "greeting": f"hello {answer}"}, done
        assert (await lg.threads.get(tid))["status"] == "idle"
    history = await lg.threads.get_history(tid, limit=100)
    assert norm(history[0]["values"]) == {"who": "eve", "answer": "Zed", "greeting": "hello Zed"}


async def test_wait_and_join_of_an_interrupted_run_carry_the_interrupt(lg: LangGraphClient) -> None:
    """The wait/join result of a run that stopped at interrupt() has __interrupt__, as its last values event."""
    tid = await new_thread(lg)
    pending = [{"value": {**QUESTION, "who": "bob"}, "id": "<interrupt>"}]
    got = await wait_for(lg.runs.wait(tid, "asker", input={"who": "bob"}))
    assert norm(got) == {"who": "bob", "__interrupt__": pending}, got
    (iid,) = [i["id"] for g in (await lg.threads.get(tid))["interrupts"].values() for i in g]
    assert got["__interrupt__"][0]["id"] == iid
    run = (await lg.runs.list(tid))[0]
    assert norm(await wait_for(lg.runs.join(tid, run["run_id"]))) == {"who": "bob", "__interrupt__": pending}


async def test_resume_on_a_threadless_run_is_refused(lg: LangGraphClient) -> None:
    with pytest.raises((BadRequestError, ConflictError)):
        await collect(lg.runs.stream(None, "asker", command={"resume": "x"}))


async def test_resume_naming_no_pending_interrupt_is_refused(lg: LangGraphClient) -> None:
    """A resume on a thread with nothing pending, or naming an interrupt that is not pending: 400/409."""
    idle = await new_thread(lg)
    await wait_for(lg.runs.wait(idle, "nested", input=NESTED_IN))
    with pytest.raises((BadRequestError, ConflictError)):
        await lg.runs.create(idle, "asker", command={"resume": "nobody asked"})
    tid = await new_thread(lg)
    await ask_bob(lg, tid)
    with pytest.raises((BadRequestError, ConflictError)):
        await lg.runs.create(tid, "asker", command={"resume": {"0" * 32: "wrong id"}})
    thread = await lg.threads.get(tid)
    assert thread["status"] == "interrupted" and thread["interrupts"], thread  # unchanged


async def test_interrupt_before_node(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    await wait_for(lg.runs.wait(tid, "nested", input=NESTED_IN, interrupt_before=["finish"]))
    state = await lg.threads.get_state(tid)
    assert list(state["next"]) == ["finish"]
    assert norm(state["values"]) == {"topic": "cats", "notes": ["prepared cats"], "found": "facts about cats"}
    assert (await lg.threads.get(tid))["status"] == "interrupted"
    done = await wait_for(lg.runs.wait(tid, "nested", input=None))
    assert norm(done) == NESTED_OUT


# ============================================================================= double-texting


async def test_multitask_reject_is_a_conflict(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    first = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.1}, multitask_strategy="reject")
    await started(lg, tid, first["run_id"])
    assert (await lg.threads.get(tid))["status"] == "busy"
    with pytest.raises(ConflictError):
        await lg.runs.create(tid, "slow", input={"steps": 1}, multitask_strategy="reject")
    with pytest.raises(ConflictError):
        await collect(lg.runs.stream(tid, "slow", input={"steps": 1}, multitask_strategy="reject"))
    with pytest.raises(httpx.HTTPStatusError) as info:  # runs.wait: request_reconnect raises the untyped error
        await lg.runs.wait(tid, "slow", input={"steps": 1}, multitask_strategy="reject")
    assert info.value.response.status_code == 409
    assert [r["run_id"] for r in await lg.runs.list(tid)] == [first["run_id"]], "a rejected run is not created"
    await wait_for(lg.runs.cancel(tid, first["run_id"], wait=True))
    after = await wait_for(lg.runs.wait(tid, "slow", input={"steps": 1}, multitask_strategy="reject"))
    assert after["goal"] == len(after["done"])


async def test_multitask_enqueue_runs_in_order(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    first = await lg.runs.create(tid, "slow", input={"steps": 5, "delay": 0.3})
    await started(lg, tid, first["run_id"])
    second = await lg.runs.create(tid, "slow", input={"steps": 2}, multitask_strategy="enqueue")
    third = await lg.runs.create(tid, "slow", input={"steps": 1}, multitask_strategy="enqueue")
    assert second["status"] == "pending" and third["status"] == "pending", (second, third)
    final = await wait_for(lg.runs.join(tid, third["run_id"]))
    assert final["done"] == [0, 1, 2, 3, 4, 5, 6, 7]
    for run, ticks in ((first, [0, 1, 2, 3, 4]), (second, [5, 6]), (third, [7])):
        assert (await lg.runs.get(tid, run["run_id"]))["status"] == "success"
        parts = await collect(lg.runs.join_stream(tid, run["run_id"], stream_mode="custom", last_event_id="-1"))
        assert [p.data["index"] for p in parts if p.event == "custom"] == ticks, run["run_id"]
    assert [r["run_id"] for r in await lg.runs.list(tid)] == [third["run_id"], second["run_id"], first["run_id"]]


async def test_default_multitask_strategy_is_enqueue(lg: LangGraphClient) -> None:
    """No multitask_strategy: the official servers enqueue (langgraph_api 0.16.7 models/run.py)."""
    tid = await new_thread(lg)
    first = await lg.runs.create(tid, "slow", input={"steps": 4, "delay": 0.3})
    await started(lg, tid, first["run_id"])
    second = await lg.runs.create(tid, "slow", input={"steps": 1})
    assert second["status"] == "pending" and second["multitask_strategy"] == "enqueue", second
    final = await wait_for(lg.runs.join(tid, second["run_id"]))
    assert final["done"] == [0, 1, 2, 3, 4]


async def test_multitask_interrupt_stops_the_first_and_continues_from_its_state(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    await wait_for(lg.runs.wait(tid, "slow", input={"steps": 1}))  # done: [0]
    first = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    watch = lg.runs.join_stream(tid, first["run_id"], stream_mode="values", last_event_id="-1")
    seen = await read_until(watch, lambda p: p.event == "values" and len(p.data.get("done", [])) >= 3)
    assert seen[-1].data["goal"] == 51
    second = await lg.runs.create(tid, "slow", input={"steps": 2}, multitask_strategy="interrupt")
    parts = await collect(lg.runs.join_stream(tid, first["run_id"], stream_mode="values", last_event_id="-1"))
    assert parts[-1].event == "end" and "error" not in [p.event for p in parts], parts
    kept = len([p for p in parts if p.event == "values"][-1].data["done"])
    assert 3 <= kept < 51
    final = await wait_for(lg.runs.join(tid, second["run_id"]))
    assert final["done"] == list(range(kept + 2)), (kept, final)
    assert final["goal"] == kept + 2
    assert (await lg.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    assert (await lg.runs.get(tid, second["run_id"]))["status"] == "success"
    assert (await lg.threads.get(tid))["status"] == "idle"


async def test_multitask_rollback_deletes_the_first_run_and_its_state(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    zero = await lg.runs.create(tid, "slow", input={"steps": 1})
    await wait_for(lg.runs.join(tid, zero["run_id"]))  # done: [0]
    before = await lg.threads.get_history(tid, limit=100)
    first = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    watch = lg.runs.join_stream(tid, first["run_id"], stream_mode="values", last_event_id="-1")
    await read_until(watch, lambda p: p.event == "values" and len(p.data.get("done", [])) >= 3)
    second = await lg.runs.create(tid, "slow", input={"steps": 2}, multitask_strategy="rollback")
    final = await wait_for(lg.runs.join(tid, second["run_id"]))
    assert final == {"steps": 2, "goal": 3, "done": [0, 1, 2]}, final
    with pytest.raises(NotFoundError):
        await lg.runs.get(tid, first["run_id"])
    assert [r["run_id"] for r in await lg.runs.list(tid)] == [second["run_id"], zero["run_id"]]
    history = await lg.threads.get_history(tid, limit=100)
    assert all(h["values"].get("goal") != 51 for h in history), "a checkpoint of the rolled-back run survived"
    ids = [h["checkpoint"]["checkpoint_id"] for h in history]
    assert ids[-len(before):] == [h["checkpoint"]["checkpoint_id"] for h in before]


async def test_cancel_with_wait_interrupts_the_run(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    # TICK 1 is written by the second step, which starts only once the first step's
    # checkpoint is written (the server runs durability="sync"): the cancel cannot undo it.
    # (TICK 0 alone proves nothing: a cancel may land before its own step commits.)
    await started(lg, tid, run["run_id"], tick=1)
    assert await wait_for(lg.runs.cancel(tid, run["run_id"], wait=True)) is None
    got = await lg.runs.get(tid, run["run_id"])
    assert got["status"] == "interrupted", got
    state = await lg.threads.get_state(tid)
    assert 1 <= len(state["values"].get("done", [])) < 50
    assert list(state["next"]) == ["step"]
    parts = await collect(lg.runs.join_stream(tid, run["run_id"], last_event_id="-1"))
    assert parts[-1].event == "end"
    thread = await lg.threads.get(tid)
    # As the official servers: a thread whose last checkpoint has a next node is interrupted
    # (interrupt(), interrupt_before/after, or a run cancelled mid-graph).
    assert thread["status"] == "interrupted", thread


async def test_cancel_without_wait_and_cancel_many(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    await started(lg, tid, run["run_id"])
    assert await lg.runs.cancel(tid, run["run_id"]) is None  # 202
    await wait_for(lg.runs.join(tid, run["run_id"]))
    assert (await lg.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    again = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    await started(lg, tid, again["run_id"])
    await lg.runs.cancel_many(thread_id=tid, run_ids=[again["run_id"]])
    await wait_for(lg.runs.join(tid, again["run_id"]))
    assert (await lg.runs.get(tid, again["run_id"]))["status"] == "interrupted"


async def test_cancel_of_a_finished_run_is_refused(lg: LangGraphClient) -> None:
    """The official servers answer 404 "No matching runs to cancel" for a run that already ended."""
    tid = await new_thread(lg)
    done = await lg.runs.create(tid, "nested", input=NESTED_IN)
    await wait_for(lg.runs.join(tid, done["run_id"]))
    with pytest.raises((NotFoundError, ConflictError)):
        await lg.runs.cancel(tid, done["run_id"])
    assert (await lg.runs.get(tid, done["run_id"]))["status"] == "success"


async def test_cancel_rollback_deletes_the_run(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    await started(lg, tid, run["run_id"])
    await wait_for(lg.runs.cancel(tid, run["run_id"], wait=True, action="rollback"))
    with pytest.raises(NotFoundError):
        await lg.runs.get(tid, run["run_id"])
    assert await lg.runs.list(tid) == []
    state = await lg.threads.get_state(tid)
    assert state["checkpoint"] is None and not state["values"], state


# ============================================================================= join


async def streamed_run(lg: LangGraphClient, modes: list[str], **kw: Any) -> tuple[str, str, list[StreamPart]]:
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "nested", input=NESTED_IN, stream_mode=modes, **kw))
    meta, _ = check_stream(parts, thread_id=tid)
    return tid, meta["run_id"], parts


def without_metadata(parts: list[StreamPart]) -> list[tuple[str, Any, str | None]]:
    return [(p.event, p.data, p.id) for p in parts if p.event != "metadata"]


async def test_join_stream_of_a_finished_run_replays_and_ends_at_once(lg: LangGraphClient) -> None:
    modes = ["values", "updates", "custom"]
    tid, rid, original = await streamed_run(lg, modes)
    replay = await collect(lg.runs.join_stream(tid, rid, stream_mode=modes), timeout=5)
    assert replay and replay[-1].event == "end" and replay[-1].data is None
    assert "error" not in [p.event for p in replay]
    assert without_metadata(replay) == without_metadata(original)
    from_start = await collect(lg.runs.join_stream(tid, rid, stream_mode=modes, last_event_id="-1"), timeout=5)
    assert without_metadata(from_start) == without_metadata(original)


def frames_of(parts: list[StreamPart]) -> list[tuple[str, Any, str | None]]:
    return [(p.event, p.data, p.id) for p in parts]


async def resumes_after_every_id(lg: LangGraphClient, tid: str, rid: str, original: list[StreamPart],
                                 modes: list[str], cursors: list[str] | None = None) -> list[str]:
    """Join the finished run after each id of ``original`` (or of ``cursors``): each join
    must give exactly the frames that followed that id, ids included, and nothing else.
    Returns one line per cursor that did not (with the first difference)."""
    frames = frames_of(original)
    wrong = []
    for index, (_, _, last) in enumerate(frames):
        if cursors is not None and last not in cursors:
            continue
        got = frames_of(await collect(lg.runs.join_stream(tid, rid, stream_mode=modes, last_event_id=last), timeout=5))
        want = frames[index + 1:]
        if got != want:
            at = next(i for i in range(max(len(got), len(want)))
                      if i >= len(got) or i >= len(want) or got[i] != want[i])
            wrong.append(f"after {last}: frame {at} is {repr(got[at])[:300] if at < len(got) else '(none)'}, "
                         f"expected {repr(want[at])[:300] if at < len(want) else '(none)'}")
        elif got:
            check_ids([i for _, _, i in got], mid_group=True)
            assert all(id_key(i) > id_key(last) for _, _, i in got)
    return wrong


RESUME_CASES = {
    "values-updates-custom": ("nested", NESTED_IN, ["values", "updates", "custom"], False),
    "messages": ("chat", human("hello big world", "h1"), ["messages"], False),
    "messages-tuple-events": ("chat", human("hello big world", "h1"), ["messages", "messages-tuple", "events"], False),
    "debug": ("nested", NESTED_IN, ["debug"], False),
    "checkpoints-debug-tasks-events-subgraphs": ("nested", NESTED_IN, ["checkpoints", "debug", "tasks", "events"], True),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
async def test_join_stream_after_last_event_id_resumes_strictly_after_it(lg: LangGraphClient, case: str) -> None:
    """Last-Event-ID = any id the stream gave (``<seq>`` or ``<seq-1>.<k>``), in every mode,
    the derived ones (messages/*, events, debug) included: the join gives exactly the frames
    that followed it, the same data under the same ids — the same as a client that never
    disconnected. (A derived frame must not depend on where the joiner started.)"""
    graph, input, modes, subgraphs = RESUME_CASES[case]
    tid = await new_thread(lg)
    original = await collect(lg.runs.stream(tid, graph, input=input, stream_mode=modes, stream_subgraphs=subgraphs))
    rid = check_stream(original, thread_id=tid)[0]["run_id"]
    wrong = await resumes_after_every_id(lg, tid, rid, original, modes)
    assert not wrong, (f"{len(wrong)} of {len(original)} cursors resume wrongly "
                       f"({[w.split(':')[0] for w in wrong]}); the first:\n" + "\n".join(wrong[:3]))


async def test_join_stream_resumes_mid_group_from_a_dotted_id(lg: LangGraphClient) -> None:
    """One log event that gives several frames gives them ids ``<seq-1>.1`` ... ``<seq>``;
    ``Last-Event-ID: <seq-1>.<k>`` resumes exactly after that frame, inside the group. In
    ``messages`` mode the first chunk of a message gives ``messages/metadata`` (``N.1``) and
    ``messages/partial`` (``N+1``): resuming from ``N.1`` gets that partial and the rest, and
    not the metadata again. With ``messages-tuple`` too the group has three frames."""
    tid = await new_thread(lg)
    parts = await collect(lg.runs.stream(tid, "chat", input=human("hello big world", "h1"), stream_mode="messages"))
    rid = check_stream(parts, thread_id=tid)[0]["run_id"]
    dotted = [p.id for p in parts if "." in p.id]
    assert len(dotted) == 1, [p.id for p in parts]
    index = next(i for i, p in enumerate(parts) if p.id == dotted[0])
    assert parts[index].event == "messages/metadata" and parts[index + 1].event == "messages/partial"
    assert parts[index + 1].id == str(int(dotted[0].split(".")[0]) + 1)
    got = await collect(lg.runs.join_stream(tid, rid, stream_mode="messages", last_event_id=dotted[0]), timeout=5)
    assert frames_of(got) == frames_of(parts[index + 1:])
    assert "messages/metadata" not in [p.event for p in got]
    assert got[0].data[0]["content"] == "echo:"  # the first partial, whole

    tid = await new_thread(lg)
    modes = ["messages-tuple", "messages"]
    parts = await collect(lg.runs.stream(tid, "chat", input=human("hello big world", "h1"), stream_mode=modes))
    rid = check_stream(parts, thread_id=tid)[0]["run_id"]
    first = next(i for i, p in enumerate(parts) if p.event == "messages/metadata")
    group = parts[first - 1:first + 2]  # the first chunk: messages (tuple), messages/metadata, messages/partial
    assert [p.event for p in group] == ["messages", "messages/metadata", "messages/partial"], frames_of(parts)
    n = int(group[-1].id) - 1
    assert [p.id for p in group] == [f"{n}.1", f"{n}.2", str(n + 1)]
    wrong = await resumes_after_every_id(lg, tid, rid, parts, modes, cursors=[f"{n}.1", f"{n}.2"])
    assert not wrong, wrong

    # checkpoints + debug: each checkpoint event gives its checkpoints frame (N.1) and its
    # debug frame (N+1).
    modes = ["checkpoints", "debug"]
    tid, rid, parts = await streamed_run(lg, modes)
    dotted = [p.id for p in parts if "." in p.id]
    assert len(dotted) == len([p for p in parts if p.event == "checkpoints"]) >= 4, frames_of(parts)
    wrong = await resumes_after_every_id(lg, tid, rid, parts, modes, cursors=dotted)
    assert not wrong, wrong


async def test_join_stream_at_or_after_the_end_gets_nothing(lg: LangGraphClient) -> None:
    """A cursor at the run's terminal event: the joiner had everything, ``end`` included, so it
    gets nothing (no second ``end``); the same after an ``error`` + ``end`` and after a cancel.
    A cursor past the log (never given out) is a clear 400, not a hang."""
    modes = ["values", "updates", "custom"]
    tid, rid, parts = await streamed_run(lg, modes)
    assert await collect(lg.runs.join_stream(tid, rid, stream_mode=modes, last_event_id=parts[-1].id), timeout=5) == []
    assert await collect(lg.runs.join_stream(tid, rid, last_event_id=parts[-1].id), timeout=5) == []
    before_end = await collect(lg.runs.join_stream(tid, rid, stream_mode=modes, last_event_id=parts[-2].id), timeout=5)
    assert frames_of(before_end) == frames_of(parts[-1:])
    with pytest.raises(BadRequestError):
        await collect(lg.runs.join_stream(tid, rid, last_event_id=str(int(parts[-1].id) + 1)), timeout=5)

    broken = await new_thread(lg)
    failed = await collect(lg.runs.stream(broken, "broken", input={"topic": "x"}, stream_mode=["custom"]))
    assert [p.event for p in failed][-2:] == ["error", "end"], frames_of(failed)
    brid = failed[0].data["run_id"]
    assert frames_of(await collect(lg.runs.join_stream(broken, brid, last_event_id=failed[-2].id), timeout=5)) == \
        frames_of(failed[-1:])
    assert await collect(lg.runs.join_stream(broken, brid, last_event_id=failed[-1].id), timeout=5) == []

    slow = await new_thread(lg)
    run = await lg.runs.create(slow, "slow", input={"steps": 50, "delay": 0.2})
    await started(lg, slow, run["run_id"])
    await wait_for(lg.runs.cancel(slow, run["run_id"], wait=True))
    whole = await collect(lg.runs.join_stream(slow, run["run_id"], stream_mode="custom", last_event_id="-1"), timeout=5)
    assert whole[-1].event == "end"
    assert await collect(lg.runs.join_stream(slow, run["run_id"], stream_mode="custom",
                                             last_event_id=whole[-1].id), timeout=5) == []


async def test_join_stream_any_mode_of_a_background_run(lg: LangGraphClient) -> None:
    """A late joiner may ask for a mode the creator never named (one log keeps the superset)."""
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "nested", input=NESTED_IN, stream_mode="values")
    await wait_for(lg.runs.join(tid, run["run_id"]))
    custom = await collect(lg.runs.join_stream(tid, run["run_id"], stream_mode="custom", last_event_id="-1"))
    assert [(p.event, p.data) for p in custom if p.event not in ("metadata", "end")] == \
        await local_stream("nested", NESTED_IN, ["custom"])
    updates = await collect(lg.runs.join_stream(tid, run["run_id"], stream_mode=["updates"], last_event_id="-1"))
    assert [(p.event, p.data) for p in updates if p.event not in ("metadata", "end")] == \
        await local_stream("nested", NESTED_IN, ["updates"])


async def test_join_stream_keeps_subgraph_events(lg: LangGraphClient) -> None:
    """langgraph#7778: subgraph events are not lost on join_stream."""
    modes = ["updates", "custom"]
    tid, rid, original = await streamed_run(lg, modes, stream_subgraphs=True)
    replay = await collect(lg.runs.join_stream(tid, rid, stream_mode=modes, last_event_id="-1"), timeout=5)
    assert without_metadata(replay) == without_metadata(original)
    assert any("|" in p.event for p in replay)
    assert [(strip_ns(p.event), p.data) for p in replay if p.event not in ("metadata", "end")] == \
        await local_stream("nested", NESTED_IN, modes, subgraphs=True)


async def test_join_stream_live_then_to_the_end(lg: LangGraphClient) -> None:
    """Joining a running run from its start gets every TICK once, in order, then end."""
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "slow", input={"steps": 5, "delay": 0.1})
    parts = await collect(lg.runs.join_stream(tid, run["run_id"], stream_mode="custom", last_event_id="-1"))
    assert [p.data["index"] for p in parts if p.event == "custom"] == [0, 1, 2, 3, 4]
    assert parts[-1].event == "end"
    assert (await lg.runs.get(tid, run["run_id"]))["status"] == "success"


async def test_on_disconnect_cancel_cancels_when_the_stream_closes(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    stream = lg.runs.stream(tid, "slow", input={"steps": 50, "delay": 0.2}, stream_mode="custom", on_disconnect="cancel")
    parts = await read_until(stream, lambda p: p.event == "custom")
    rid = parts[0].data["run_id"]
    await wait_for(lg.runs.join(tid, rid))
    assert (await lg.runs.get(tid, rid))["status"] == "interrupted"
    assert len((await lg.threads.get_state(tid))["values"]["done"]) < 50


@pytest.mark.parametrize("how", ["continue", None])
async def test_on_disconnect_continue_keeps_running(lg: LangGraphClient, how: str | None) -> None:
    """on_disconnect="continue", and the default (continue, as the official servers)."""
    tid = await new_thread(lg)
    stream = lg.runs.stream(tid, "slow", input={"steps": 4, "delay": 0.2}, stream_mode="custom",
                            **({"on_disconnect": how} if how else {}))
    parts = await read_until(stream, lambda p: p.event == "custom")
    rid = parts[0].data["run_id"]
    final = await wait_for(lg.runs.join(tid, rid))
    assert final["done"] == [0, 1, 2, 3]
    assert (await lg.runs.get(tid, rid))["status"] == "success"


async def test_join_stream_cancel_on_disconnect(lg: LangGraphClient) -> None:
    tid = await new_thread(lg)
    run = await lg.runs.create(tid, "slow", input={"steps": 50, "delay": 0.2})
    await read_until(lg.runs.join_stream(tid, run["run_id"], stream_mode="custom", last_event_id="-1",
                                         cancel_on_disconnect=True), lambda p: p.event == "custom")
    await wait_for(lg.runs.join(tid, run["run_id"]))
    assert (await lg.runs.get(tid, run["run_id"]))["status"] == "interrupted"


# ============================================================================= tenants


class AuthServer:
    def __init__(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="ts-lg-auth-"))
        self.minter = Minter.hs256()
        self.keys = write_keys_file(tmp / "keys.json", {"keyco": {"tenant": "keyco", "roles": ["member"]}})
        self.server = start_server(*agent_flags({"nested": LG_AGENTS["nested"]}), env={
            **ENV, "THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": self.minter.secret,
            "THOUGHTSTREAM_API_KEYS_FILE": str(tmp / "keys.json")})

    def bearer_client(self, tenant: str) -> LangGraphClient:
        return sdk(self.server.url, headers=bearer(self.minter.token(tenant=tenant, sub=f"{tenant}-user")))


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    srv = AuthServer()
    try:
        yield srv
    finally:
        srv.server.stop()


async def test_bearer_token_works_and_other_tenants_threads_are_not_found(auth_server: AuthServer) -> None:
    acme, globex = auth_server.bearer_client("acme"), auth_server.bearer_client("globex")
    try:
        tid = await new_thread(acme, metadata={"owner": "acme"})
        run = await acme.runs.create(tid, "nested", input=NESTED_IN)
        assert norm(await wait_for(acme.runs.join(tid, run["run_id"]))) == NESTED_OUT
        parts = await collect(acme.runs.join_stream(tid, run["run_id"], stream_mode="custom", last_event_id="-1"))
        assert parts[-1].event == "end"
        assert [t["thread_id"] for t in await acme.threads.search(metadata={"owner": "acme"})] == [tid]

        with pytest.raises(NotFoundError):
            await globex.threads.get(tid)
        with pytest.raises(NotFoundError):
            await globex.threads.get_state(tid)
        with pytest.raises(NotFoundError):
            await globex.runs.list(tid)
        with pytest.raises(NotFoundError):
            await globex.runs.get(tid, run["run_id"])
        with pytest.raises(NotFoundError):
            await globex.runs.create(tid, "nested", input=NESTED_IN)
        with pytest.raises(NotFoundError):
            await collect(globex.runs.join_stream(tid, run["run_id"], last_event_id="-1"))
        with pytest.raises(NotFoundError):
            await globex.threads.delete(tid)
        assert await globex.threads.search(metadata={"owner": "acme"}) == []
        assert (await acme.threads.get(tid))["thread_id"] == tid  # still there
    finally:
        await acme.aclose()
        await globex.aclose()


async def test_no_credentials_is_unauthorized(auth_server: AuthServer) -> None:
    anon = sdk(auth_server.server.url)
    try:
        with pytest.raises(AuthenticationError):
            await anon.threads.create()
        with pytest.raises(AuthenticationError):
            await anon.assistants.search()
    finally:
        await anon.aclose()


async def test_api_key_works_and_sees_only_its_tenant(auth_server: AuthServer) -> None:
    keyed = sdk(auth_server.server.url, api_key=auth_server.keys["keyco"])
    acme = auth_server.bearer_client("acme")
    try:
        tid = await new_thread(keyed)
        got = await wait_for(keyed.runs.wait(tid, "nested", input=NESTED_IN))
        assert norm(got) == NESTED_OUT
        parts = await collect(keyed.runs.stream(tid, "nested", input={"topic": "dogs"}, stream_mode="custom"))
        check_stream(parts, thread_id=tid)
        acme_tid = await new_thread(acme)
        with pytest.raises(NotFoundError):
            await keyed.threads.get(acme_tid)
        with pytest.raises(NotFoundError):
            await acme.threads.get(tid)
    finally:
        await keyed.aclose()
        await acme.aclose()


# ============================================================================= RemoteGraph


def remote(lg_server: ServerProcess, name: str = "nested") -> RemoteGraph:
    return RemoteGraph(name, url=lg_server.url, api_key=None)


async def test_remote_graph_ainvoke_equals_local(lg_server: ServerProcess) -> None:
    got = await wait_for(remote(lg_server).ainvoke(NESTED_IN))
    assert norm(got) == norm(await lg_graphs.nested.ainvoke(NESTED_IN)) == NESTED_OUT
    chat = await wait_for(remote(lg_server, "chat").ainvoke(human("x y", "h1")))
    assert norm(chat) == norm(await lg_graphs.chat.ainvoke(human("x y", "h1")))


@pytest.mark.parametrize("mode", ["values", "updates"])
async def test_remote_graph_astream_equals_local(lg_server: ServerProcess, mode: str) -> None:
    async def run() -> list[Any]:
        return [c async for c in remote(lg_server).astream(NESTED_IN, stream_mode=mode)]
    got = await wait_for(run())
    want = [c async for c in lg_graphs.nested.astream(NESTED_IN, stream_mode=mode)]
    assert norm(got) == norm(want)


async def test_remote_graph_astream_subgraphs_equals_local(lg_server: ServerProcess) -> None:
    def ns_names(ns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p.split(":", 1)[0] for p in ns)

    async def run() -> list[Any]:
        return [c async for c in remote(lg_server).astream(NESTED_IN, stream_mode=["updates", "custom"], subgraphs=True)]
    got = await wait_for(run())
    want = [c async for c in lg_graphs.nested.astream(NESTED_IN, stream_mode=["updates", "custom"], subgraphs=True)]
    assert [(ns_names(ns), mode, norm(data)) for ns, mode, data in got] == \
        [(ns_names(ns), mode, norm(data)) for ns, mode, data in want]
    assert any(ns for ns, _, _ in got)
    single = [c async for c in remote(lg_server).astream(NESTED_IN, stream_mode="updates", subgraphs=True)]
    local_single = [c async for c in lg_graphs.nested.astream(NESTED_IN, stream_mode="updates", subgraphs=True)]
    assert [(ns_names(ns), norm(d)) for ns, d in single] == [(ns_names(ns), norm(d)) for ns, d in local_single]


async def test_remote_graph_on_a_thread_keeps_state(lg_server: ServerProcess) -> None:
    graph = remote(lg_server, "chat")
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    local, local_cfg = local_graph("chat"), local_config()
    for text, mid in (("one", "h1"), ("two", "h2")):
        got = await wait_for(graph.ainvoke(human(text, mid), config))
        assert norm(got) == norm(await local.ainvoke(human(text, mid), local_cfg))
    state = await graph.aget_state(config)
    assert norm(state.values) == norm((await local.aget_state(local_cfg)).values)
    assert [m["id"] for m in state.values["messages"]] == ["h1", "ai-1", "h2", "ai-3"]


async def test_remote_graph_interrupt_and_resume(lg_server: ServerProcess) -> None:
    from langgraph.types import Command
    graph = remote(lg_server, "asker")
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    local, local_cfg = local_graph("asker"), local_config()
    first = await wait_for(graph.ainvoke({"who": "eve"}, config))
    assert norm(first) == norm(await local.ainvoke({"who": "eve"}, local_cfg))
    assert norm(first)["__interrupt__"] == [{"value": {**QUESTION, "who": "eve"}, "id": "<interrupt>"}]
    state = await graph.aget_state(config)
    assert state.next == ("ask",)
    done = await wait_for(graph.ainvoke(Command(resume="Eve"), config))
    assert norm(done) == norm(await local.ainvoke(Command(resume="Eve"), local_cfg))
    assert done["greeting"] == "hello Eve"
