"""Execute one run: stream the graph, turn every chunk into an event, end it once.

The executor owns the run's lifecycle events: STATUS on every transition, RESULT at
the end, ERROR with a message when the graph fails (the run fails, the server does not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ..bus.base import Bus
from ..events import ERROR, RESULT, STATUS, STEP, THOUGHT, dumps
from .store import CANCELLED, FAILED, RUNNING, SUCCEEDED, RunRecord, RunStore

log = logging.getLogger(__name__)

CUSTOM = "CUSTOM"
SHUTDOWN_REASON = "server shutting down"
STREAM_MODES = ["messages", "custom", "updates", "values"]


def agent_path(namespace: tuple[str, ...], node: str | None) -> str:
    """'outer/inner/node': subgraph names without LangGraph's task ids, then the node."""
    parts = [p.split(":", 1)[0] for p in namespace]
    if node:
        parts.append(node)
    return "/".join(parts) or "graph"


def _message_text(msg: Any) -> str:
    content = getattr(msg, "content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text ones
        return "".join(
            b.get("text", "") if isinstance(b, dict) else str(b) for b in content
        )
    return ""


def graph_output(graph: Any, values: Any) -> Any:
    """The final state narrowed to the graph's output channels (what ainvoke returns)."""
    channels = getattr(graph, "output_channels", None)
    if isinstance(values, dict) and isinstance(channels, (list, tuple)):
        return {k: values[k] for k in channels if k in values}
    return values


def _namespace_from_tags(tags: Any) -> str | None:
    for tag in tags or ():
        if isinstance(tag, str) and tag.startswith("ns:"):
            return tag[3:]
    return None


@dataclass
class ChunkMapper:
    """Maps LangGraph stream parts to (ns, agent, data); None means 'not an event'."""

    steps: int = 0
    last_node: str | None = None
    output: Any = None

    def map(self, namespace: tuple[str, ...], mode: str, chunk: Any) -> tuple[str, str, dict] | None:
        if mode == "messages":
            msg, meta = chunk
            if getattr(msg, "type", "") not in ("AIMessageChunk", "ai"):
                return None  # tool results and inputs are reported as TOOL_USE by the graph
            text = _message_text(msg)
            if not text:
                return None
            node = meta.get("langgraph_node")
            ns = meta.get("ns") or _namespace_from_tags(meta.get("tags")) or THOUGHT
            # No message id: LangChain's ids are random, and a resumed run's stream must
            # equal an uninterrupted one (contract item 7).
            return ns, agent_path(namespace, node), {"text": text}
        if mode == "custom":
            if isinstance(chunk, dict):
                data = dict(chunk)
                ns = str(data.pop("ns", CUSTOM))
                node = data.get("node")
            else:
                data, ns, node = {"value": chunk}, CUSTOM, None
            return ns, agent_path(namespace, node or self.last_node), data
        if mode == "updates":
            if not isinstance(chunk, dict):
                return None
            for node in chunk:
                self.last_node = node
            self.steps += 1
            return STEP, agent_path(namespace, self.last_node), {
                "nodes": list(chunk), "step": self.steps,
                "keys": sorted({k for u in chunk.values() if isinstance(u, dict) for k in u}),
            }
        if mode == "values" and not namespace:
            self.output = chunk
        return None


class Executor:
    """Runs graphs for records; one call of ``run`` per attempt."""

    def __init__(self, *, bus: Bus, store: RunStore, registry: Any, run_timeout_s: float) -> None:
        self.bus = bus
        self.store = store
        self.registry = registry
        self.run_timeout_s = run_timeout_s

    async def status(self, rec: RunRecord, state: str, **extra: Any) -> None:
        await self.bus.append(rec.run_id, STATUS, "server", {"state": state, **extra})

    async def run(self, rec: RunRecord, cancel_reason: dict[str, str], *,
                  worker: str | None = None) -> RunRecord:
        """Execute ``rec`` to its end. ``cancel_reason[run_id]`` says why a cancel came."""
        run_id = rec.run_id
        attempt = rec.attempt + 1
        rec = await self.store.transition(run_id, RUNNING, started_at=time.time(), attempt=attempt,
                                          worker=worker)
        await self.status(rec, RUNNING, attempt=attempt)
        mapper = ChunkMapper()
        started = time.monotonic()
        timeout = min(float(rec.metadata.get("timeout_s") or self.run_timeout_s), self.run_timeout_s)
        try:
            spec = self.registry.get(rec.agent)
            async with asyncio.timeout(timeout):
                await self._stream(rec, spec.graph, mapper)
        except asyncio.CancelledError:
            reason = cancel_reason.pop(run_id, "cancelled")
            if reason == SHUTDOWN_REASON:
                await self._fail(rec, "shutdown", "the server shut down while the run was executing")
            else:
                await self._finish(rec, CANCELLED, error={"code": "cancelled", "message": reason})
            raise
        except TimeoutError:
            msg = f"run exceeded its timeout of {timeout:g} s"
            return await self._fail(rec, "timeout", msg)
        except Exception as exc:  # the graph failed; the run fails, the server does not
            log.warning("run %s failed: %s", run_id, exc, exc_info=True)
            return await self._fail(rec, type(exc).__name__, str(exc) or type(exc).__name__)
        result = orjson.loads(dumps(graph_output(spec.graph, mapper.output)))  # JSON-safe
        await self.bus.append(run_id, RESULT, "graph", {"output": result})
        elapsed = time.monotonic() - started
        return await self._finish(rec, SUCCEEDED, result=result, duration_s=round(elapsed, 3))

    async def _stream(self, rec: RunRecord, graph: Any, mapper: ChunkMapper) -> None:
        config = {"configurable": {"thread_id": rec.run_id}, "metadata": {"run_id": rec.run_id}}
        async for namespace, mode, chunk in graph.astream(
            rec.input, config, stream_mode=STREAM_MODES, subgraphs=True
        ):
            mapped = mapper.map(namespace, mode, chunk)
            if mapped is None:
                continue
            ns, agent, data = mapped
            await self.bus.append(rec.run_id, ns, agent, data)
            if ns == STEP:
                await self.store.update(rec.run_id, progress={"steps": mapper.steps, "node": agent})

    async def _fail(self, rec: RunRecord, code: str, message: str) -> RunRecord:
        await self.bus.append(rec.run_id, ERROR, "server", {"code": code, "message": message})
        return await self._finish(rec, FAILED, error={"code": code, "message": message})

    async def _finish(self, rec: RunRecord, state: str, *, error: dict | None = None,
                      result: Any = None, duration_s: float | None = None) -> RunRecord:
        """Exactly one terminal STATUS per run (contract item 4), then the record."""
        rec = await self.store.transition(
            rec.run_id, state, ended_at=time.time(), error=error, result=result
        )
        extra: dict[str, Any] = {}
        if error is not None:
            extra["error"] = error
        if duration_s is not None:
            extra["duration_s"] = duration_s
        await self.status(rec, state, **extra)
        return rec
