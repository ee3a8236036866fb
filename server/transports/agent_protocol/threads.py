"""LangGraph's assistants and threads: one assistant per registered agent (its schemas and
drawn graph), and the caller's threads with their state and history, read and written
through ``ThreadService``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...auth import MEMBER
from ..common import request_caller
from ..openapi import Param
from .common import AID, ARR, OBJ, TID, flag, json_response, op, path_thread, read_body, thread_service
from .models import AssistantSearch, HistoryRequest, StateAt, StateUpdate, ThreadCreate, ThreadPatch, ThreadSearch


# --------------------------------------------------------------------------- assistants


async def search_assistants(request: Request) -> Response:
    q: AssistantSearch = await read_body(request, AssistantSearch)
    rows = [a for a in thread_service(request).assistants()
            if (q.graph_id is None or a["graph_id"] == q.graph_id)
            and (q.name is None or a["name"] == q.name)
            and (not q.metadata or all(a["metadata"].get(k) == v for k, v in q.metadata.items()))]
    return json_response(rows[q.offset:q.offset + q.limit])


async def get_assistant(request: Request) -> Response:
    svc = thread_service(request)
    return json_response(svc.assistant(svc.resolve_assistant(request.path_params["assistant_id"])))


def _schema(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a graph whose schema cannot be rendered still runs
        return None


async def assistant_schemas(request: Request) -> Response:
    svc = thread_service(request)
    name = svc.resolve_assistant(request.path_params["assistant_id"])
    graph = svc.registry.get(name).graph
    return json_response({"graph_id": name,
                          "input_schema": _schema(graph.get_input_jsonschema),
                          "output_schema": _schema(graph.get_output_jsonschema),
                          "state_schema": _schema(lambda: _state_schema(graph)),
                          "config_schema": _schema(graph.get_config_jsonschema),
                          "context_schema": _schema(graph.get_context_jsonschema)})


def _state_schema(graph: Any) -> Any:
    """The JSON schema of the graph's whole state (every channel, not only its input)."""
    from pydantic import TypeAdapter

    state = getattr(getattr(graph, "builder", None), "state_schema", None)
    if state is None:
        return graph.get_input_jsonschema()
    return TypeAdapter(state).json_schema()


async def assistant_graph(request: Request) -> Response:
    svc = thread_service(request)
    name = svc.resolve_assistant(request.path_params["assistant_id"])
    xray = flag(request.query_params.get("xray"))
    graph = svc.registry.get(name).graph
    drawn = await asyncio.to_thread(lambda: graph.get_graph(xray=xray).to_json())
    return json_response(drawn)


# --------------------------------------------------------------------------- threads


async def create_thread(request: Request) -> Response:
    req: ThreadCreate = await read_body(request, ThreadCreate)
    caller = await request_caller(request)
    rec = await thread_service(request).create_thread(tenant=caller.tenant, thread_id=req.thread_id,
                                                      metadata=req.metadata or {},
                                                      if_exists=req.if_exists or "raise")
    return json_response(await thread_service(request).thread_view(rec))


async def get_thread(request: Request) -> Response:
    return json_response(await thread_service(request).thread_view(await path_thread(request)))


async def patch_thread(request: Request) -> Response:
    req: ThreadPatch = await read_body(request, ThreadPatch)
    rec = await path_thread(request)
    svc = thread_service(request)
    import time

    rec = await svc.threads.update(rec.thread_id, metadata={**rec.metadata, **(req.metadata or {})},
                                   updated_at=time.time()) or rec
    return json_response(await svc.thread_view(rec))


async def delete_thread(request: Request) -> Response:
    caller = await request_caller(request)
    await thread_service(request).delete_thread(request.path_params["thread_id"], tenant=caller.scope)
    return Response(status_code=204)


async def search_threads(request: Request) -> Response:
    req: ThreadSearch = await read_body(request, ThreadSearch)
    caller = await request_caller(request)
    rows = await thread_service(request).search_threads(tenant=caller.scope, metadata=req.metadata,
                                                        status=req.status, limit=req.limit, offset=req.offset)
    return json_response(rows)


async def thread_state(request: Request) -> Response:
    rec = await path_thread(request)
    subgraphs = flag(request.query_params.get("subgraphs"))
    return json_response(await thread_service(request).state(
        rec, checkpoint_id=request.path_params.get("checkpoint_id"), subgraphs=subgraphs))


async def thread_state_at(request: Request) -> Response:
    """``POST /threads/{id}/state/checkpoint`` {checkpoint, subgraphs}: how RemoteGraph reads state."""
    req: StateAt = await read_body(request, StateAt)
    rec = await path_thread(request)
    checkpoint_id = (req.checkpoint or {}).get("checkpoint_id")
    return json_response(await thread_service(request).state(rec, checkpoint_id=checkpoint_id,
                                                             subgraphs=bool(req.subgraphs)))


async def update_thread_state(request: Request) -> Response:
    req: StateUpdate = await read_body(request, StateUpdate)
    rec = await path_thread(request)
    checkpoint_id = req.checkpoint_id or (req.checkpoint or {}).get("checkpoint_id")
    return json_response(await thread_service(request).update_state(rec, values=req.values, as_node=req.as_node,
                                                                    checkpoint_id=checkpoint_id))


async def thread_history(request: Request) -> Response:
    req: HistoryRequest = await read_body(request, HistoryRequest)
    rec = await path_thread(request)
    before = req.before.get("checkpoint_id") if isinstance(req.before, dict) else req.before
    return json_response(await thread_service(request).history(rec, limit=req.limit, before=before,
                                                               metadata=req.metadata))


# --------------------------------------------------------------------------- declarations

operations = [
    (search_assistants, op("POST", "/assistants/search", "Assistants: one per registered agent",
                           body=AssistantSearch, ok_schema=ARR, errors=(400, 413, 415, 422))),
    (get_assistant, op("GET", "/assistants/{assistant_id}", "An assistant, by its id or graph name",
                       ok_schema=OBJ, params=(AID,))),
    (assistant_schemas, op("GET", "/assistants/{assistant_id}/schemas", "The graph's JSON schemas",
                           ok_schema=OBJ, params=(AID,))),
    (assistant_graph, op("GET", "/assistants/{assistant_id}/graph", "The graph's nodes and edges",
                         ok_schema=OBJ, params=(AID, Param("xray", "query", {"type": "boolean"})))),
    (create_thread, op("POST", "/threads", "Create a thread (thread_id, if_exists, metadata)", role=MEMBER,
                       body=ThreadCreate, ok_schema=OBJ, errors=(400, 409, 413, 415, 422))),
    (search_threads, op("POST", "/threads/search", "The caller's threads, newest first",
                        body=ThreadSearch, ok_schema=ARR, errors=(400, 413, 415, 422))),
    (get_thread, op("GET", "/threads/{thread_id}", "A thread: status, values, interrupts",
                    ok_schema=OBJ, params=(TID,))),
    (patch_thread, op("PATCH", "/threads/{thread_id}", "Merge metadata into a thread", role=MEMBER,
                      body=ThreadPatch, ok_schema=OBJ, params=(TID,), errors=(400, 404, 413, 415, 422))),
    (delete_thread, op("DELETE", "/threads/{thread_id}", "Delete a thread, its runs and checkpoints",
                       role=MEMBER, ok_status=204, params=(TID,))),
    (thread_state, op("GET", "/threads/{thread_id}/state", "The thread's state (checkpoint null when fresh)",
                      ok_schema=OBJ, params=(TID, Param("subgraphs", "query", {"type": "boolean"})))),
    (thread_state, op("GET", "/threads/{thread_id}/state/{checkpoint_id}", "The thread's state at a checkpoint",
                      ok_schema=OBJ, params=(TID, Param("checkpoint_id", "path", {"type": "string"})))),
    (thread_state_at, op("POST", "/threads/{thread_id}/state/checkpoint", "The thread's state at a checkpoint",
                         body=StateAt, ok_schema=OBJ, params=(TID,), errors=(400, 404, 413, 415, 422))),
    (update_thread_state, op("POST", "/threads/{thread_id}/state", "Update the thread's state (as a node)",
                             role=MEMBER, body=StateUpdate, ok_schema=OBJ, params=(TID,),
                             errors=(400, 404, 409, 413, 415, 422))),
    (thread_history, op("POST", "/threads/{thread_id}/history", "The thread's states, newest first",
                        body=HistoryRequest, ok_schema=ARR, params=(TID,), errors=(400, 404, 413, 415, 422))),
]
