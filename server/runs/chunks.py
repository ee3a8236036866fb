"""LangGraph stream chunks as events: what the executor writes for each part of a run's stream.

``ChunkMapper`` turns a native run's chunks into the event contract's (ns, agent, data):
a model's tokens as THOUGHT (or the namespace its tags name), custom writes as their own
``ns``, a root checkpoint as STEP. A LangGraph-protocol run also keeps every chunk as it
came (``lg_event``), the superset its streams are cut from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..events import STEP, THOUGHT, dumps

CUSTOM = "CUSTOM"
# "tasks": each node's start and result, for the step-duration metric (never an event).
STREAM_MODES = ["messages", "custom", "updates", "values", "checkpoints", "tasks"]
# A LangGraph-protocol run logs every chunk of STREAM_MODES
# as it came (the superset its streams are cut from: a late joiner may ask for any mode, at
# any depth of subgraphs); ``debug``, ``events`` and ``messages/*`` are derived when sent.
LG_PREFIX = "lg."


def lg_event(namespace: tuple[str, ...], mode: str, chunk: Any) -> tuple[str, dict[str, Any]]:
    """(ns, data) of the log event keeping one LangGraph stream chunk of a thread run."""
    # JSON-safe once, here: every process and every transport then reads the same plain
    # data (messages as dicts, interrupts as {value, id}), from memory or from Redis.
    return LG_PREFIX + mode, {"path": "|".join(namespace), "chunk": orjson.loads(dumps(chunk))}


def agent_path(namespace: tuple[str, ...], node: str | None) -> str:
    """'outer/inner/node': subgraph names without LangGraph's task ids, then the node."""
    parts = [p.split(":", 1)[0] for p in namespace]
    if node:
        parts.append(node)
    return "/".join(parts) or "graph"


def message_text(msg: Any) -> str:
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


def lg_output(graph: Any, values: Any) -> Any:
    """A thread run's result: its last values, with ``__interrupt__`` when it stopped at one
    (what ``ainvoke`` returns, and the official servers' ``/runs/wait``)."""
    out = graph_output(graph, values)
    if isinstance(values, dict) and "__interrupt__" in values and isinstance(out, dict):
        out = {**out, "__interrupt__": values["__interrupt__"]}
    return out


def namespace_from_tags(tags: Any) -> str | None:
    for tag in tags or ():
        if isinstance(tag, str) and tag.startswith("ns:"):
            return tag[3:]
    return None


@dataclass
class ChunkMapper:
    """Maps LangGraph stream parts to (ns, agent, data); None means 'not an event'."""

    steps: int = -2  # the last root checkpoint's step; LangGraph's first is -1
    current: str | None = None  # the node running now, when only one does
    interrupts: list[Any] = field(default_factory=list)
    output: Any = None
    # A resumed attempt: LangGraph first re-sends the values (and checkpoint) of the
    # checkpoint it resumes from, already in the log before rewind_to; a thread run's log
    # skips them (contract item 7: folded, the stream equals an uncrashed one).
    replaying: bool = False

    def map(self, namespace: tuple[str, ...], mode: str, chunk: Any) -> tuple[str, str, dict] | None:
        if mode == "messages":
            msg, meta = chunk
            if getattr(msg, "type", "") not in ("AIMessageChunk", "ai"):
                return None  # tool results and inputs are reported as TOOL_USE by the graph
            text = message_text(msg)
            if not text:
                return None
            node = meta.get("langgraph_node")
            ns = meta.get("ns") or namespace_from_tags(meta.get("tags")) or THOUGHT
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
            return ns, agent_path(namespace, node or self.current), data
        if mode == "updates":
            if not namespace and isinstance(chunk, dict):
                for intr in chunk.get("__interrupt__") or ():
                    self.interrupts.append(getattr(intr, "value", intr))
            return None
        if mode == "checkpoints":
            if namespace:
                return None  # a subgraph's own steps; the parent's checkpoint is what resumes
            # A root checkpoint is a durable step boundary: STEP marks it in the log, so a
            # resumed run knows which seq its last completed step ended at (contract item 7).
            step = int(chunk.get("metadata", {}).get("step", self.steps + 1))
            nxt = [str(n) for n in chunk.get("next", ())]
            self.current = nxt[0] if len(nxt) == 1 else None
            if step <= self.steps:
                return None  # a resumed run re-announces the checkpoint it starts from
            self.steps = step
            return STEP, "graph", {"step": step, "next": nxt}
        if mode == "values" and not namespace:
            self.output = chunk
        return None
