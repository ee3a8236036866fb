"""LangGraph's stream modes, cut from one run's log for one connection.

A thread run's log holds every chunk LangGraph streamed (``lg.<mode>`` events, see
``runs/chunks.py``), so each connection picks its own modes from the same log: a late
joiner can ask for any mode, and subgraph events are never lost on a join. ``debug``,
``events`` and ``messages/*`` are derived here from the stored chunks. Every frame carries
``id: <seq>`` of the event it came from; ordering, dedup and resume are the
subscription's (``bus.subscribe``), never this module's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from ...events import ERROR, STATUS, STEP, RESULT, Event, dumps
from ...runs.chunks import LG_PREFIX
from ...runs.lifecycle import RESUMED

STREAM_MODES = frozenset({"values", "updates", "messages", "messages-tuple", "custom", "events",
                          "debug", "tasks", "checkpoints"})
DEFAULT_MODES = ("values",)


def frame(event: str, data: Any, seq: int | None) -> bytes:
    head = b"event: %s\n" % event.encode()
    if seq is not None:
        head += b"id: %d\n" % seq
    return head + b"data: %s\n\n" % dumps(data)


def end_frame(seq: int | None = None) -> bytes:
    return frame("end", None, seq)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def _merge(acc: dict[str, Any] | None, chunk: dict[str, Any]) -> dict[str, Any]:
    """A streamed message so far: contents concatenated, the rest from the newest chunk."""
    if acc is None:
        return dict(chunk)
    out = {**acc, **{k: v for k, v in chunk.items() if v not in (None, "", [], {})}}
    a, b = acc.get("content"), chunk.get("content")
    if isinstance(a, str) and isinstance(b, str):
        out["content"] = a + b
    elif isinstance(a, list) and isinstance(b, list):
        out["content"] = a + b
    for key in ("tool_call_chunks", "tool_calls"):
        if isinstance(acc.get(key), list) and isinstance(chunk.get(key), list):
            out[key] = acc[key] + chunk[key]
    return out


@dataclass
class Framer:
    """The frames one connection gets for each event of the run's log."""

    # Modes whose frames depend on earlier events: a join rebuilds the state first.
    STATEFUL: ClassVar[frozenset[str]] = frozenset({"messages", "debug"})

    run_id: str
    thread_id: str
    modes: frozenset[str]
    subgraphs: bool = False
    ended: bool = False
    _messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    _by_node: dict[str, list[str]] = field(default_factory=dict)
    _steps: dict[str, int] = field(default_factory=dict)

    def frames(self, e: Event) -> list[tuple[str, Any]]:
        """The (event name, data) pairs this connection gets for ``e``, in order."""
        out: list[tuple[str, Any]] = []
        ns = e.ns
        if ns.startswith(LG_PREFIX):
            self._chunk(e, ns[len(LG_PREFIX):], out)
        elif ns == STATUS:
            state = e.data.get("state")
            if state == "queued":
                out.append(("metadata", {"run_id": self.run_id, "thread_id": self.thread_id,
                                              "attempt": 1}))
            elif state == RESUMED:
                # The run continues on another worker after its worker died: what followed
                # rewind_to came from the step that runs again (contract item 7).
                out.append(("metadata", {"run_id": self.run_id, "thread_id": self.thread_id,
                                              "attempt": e.data.get("attempt"),
                                              "rewind_to": e.data.get("rewind_to")}))
            elif e.is_terminal:
                self._complete_all(e.seq, out)
                out.append(("end", None))
                self.ended = True
        elif ns == ERROR:
            out.append(("error", {"error": e.data.get("code", "error"),
                                       "message": e.data.get("message", "")}))
        elif ns in (STEP, RESULT):
            pass  # bookkeeping of every run; LangGraph's own modes carry the same facts
        elif "custom" in self.modes:
            out.append(("custom", {"ns": ns, **e.data}))  # a native event
        return out

    def _chunk(self, e: Event, mode: str, out: list[tuple[str, Any]]) -> None:
        path = e.data.get("path") or ""
        if path and not self.subgraphs:
            return
        suffix = f"|{path}" if path else ""
        chunk = e.data.get("chunk")
        seq = e.seq
        if mode == "messages":
            self._message(chunk, suffix, seq, out)
            return
        if mode in self.modes:
            out.append((mode + suffix, chunk))
        if mode == "checkpoints" and isinstance(chunk, dict):
            step = (chunk.get("metadata") or {}).get("step")
            if isinstance(step, int):
                self._steps[path] = step
            if "debug" in self.modes:
                out.append(("debug" + suffix, {"step": step, "timestamp": _iso(e.ts),
                                                    "type": "checkpoint", "payload": chunk}))
        elif mode == "tasks" and isinstance(chunk, dict):
            starting = "input" in chunk
            if "debug" in self.modes:
                out.append(("debug" + suffix, {
                    "step": self._steps.get(path, -1) + 1, "timestamp": _iso(e.ts),
                    "type": "task" if starting else "task_result", "payload": chunk}))
            if "events" in self.modes:
                out.append(("events" + suffix, {
                    "event": "on_chain_start" if starting else "on_chain_end",
                    "name": chunk.get("name"), "run_id": chunk.get("id"), "tags": [],
                    "metadata": {**(chunk.get("metadata") or {}), "langgraph_node": chunk.get("name")},
                    "parent_ids": [],
                    "data": {"input": chunk.get("input")} if starting else {"output": chunk.get("result")},
                }))
            if not starting:
                self._complete_node(str(chunk.get("name")), seq, out)
        elif mode == "custom" and "events" in self.modes:
            out.append(("events" + suffix, {"event": "on_custom_event", "name": "custom",
                                                 "run_id": self.run_id, "tags": [], "metadata": {},
                                                 "parent_ids": [], "data": chunk}))

    def _message(self, chunk: Any, suffix: str, seq: int, out: list[tuple[str, Any]]) -> None:
        if not (isinstance(chunk, list) and len(chunk) == 2 and isinstance(chunk[0], dict)):
            return
        msg, meta = chunk
        if "messages-tuple" in self.modes:
            out.append(("messages" + suffix, chunk))
        if "events" in self.modes:
            out.append(("events" + suffix, {
                "event": "on_chat_model_stream", "name": (meta or {}).get("langgraph_node"),
                "run_id": msg.get("id"), "tags": (meta or {}).get("tags", []), "metadata": meta,
                "parent_ids": [], "data": {"chunk": msg}}))
        if "messages" not in self.modes:
            return
        mid = str(msg.get("id"))
        if mid not in self._messages:
            out.append(("messages/metadata", {mid: {"metadata": meta}}))
            self._by_node.setdefault(str((meta or {}).get("langgraph_node")), []).append(mid)
        if str(msg.get("type", "")).endswith("Chunk"):
            acc = self._messages[mid] = _merge(self._messages.get(mid), msg)
            out.append(("messages/partial", [_settled(acc)]))
        else:  # a message that was not streamed arrives whole
            self._messages[mid] = msg
            out.append(("messages/complete", [msg]))

    def _complete_node(self, node: str, seq: int, out: list[tuple[str, Any]]) -> None:
        """A node finished: its streamed messages are whole now (kept no longer)."""
        for mid in self._by_node.pop(node, ()):
            self._messages.pop(mid, None)

    def _complete_all(self, seq: int, out: list[tuple[str, Any]]) -> None:
        self._by_node.clear()
        self._messages.clear()


def _settled(acc: dict[str, Any]) -> dict[str, Any]:
    """A message streamed so far, as the official servers show it (``type: ai``, not a chunk)."""
    kind = str(acc.get("type", ""))
    if not kind.endswith("Chunk"):
        return acc
    out = {k: v for k, v in acc.items() if k != "tool_call_chunks"}
    out["type"] = {"AIMessageChunk": "ai", "HumanMessageChunk": "human", "ToolMessageChunk": "tool",
                   "SystemMessageChunk": "system"}.get(kind, kind[: -len("Chunk")].lower())
    return out


def encode(parts: list[tuple[str, Any]], seq: int, skip: int = 0) -> bytes:
    """The frames of one log event. A lone frame's id is the seq; when one event gives
    several (modes derived from the same chunk), all but the last are ``<seq-1>.<k>``:
    "after event seq-1 and k frames of the next", so a cut between them resumes exactly
    (ids still grow: 8 < 8.1 < 8.2 < 9). ``skip``: frames a ``Last-Event-ID`` of that form
    says the client already has."""
    out = []
    last = len(parts) - 1
    for k, (name, data) in enumerate(parts):
        if k < skip:
            continue
        ident = str(seq) if k == last else f"{seq - 1}.{k + 1}"
        out.append(b"event: %s\nid: %s\ndata: %s\n\n" % (name.encode(), ident.encode(), dumps(data)))
    return b"".join(out)


def parse_modes(raw: Any) -> frozenset[str]:
    """``stream_mode``: a string or a list of them; ``messages-tuple`` and ``messages`` both count."""
    if raw is None or raw == []:
        return frozenset(DEFAULT_MODES)
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("stream_mode must be a string or a list of strings")
    bad = [n for n in names if n not in STREAM_MODES]
    if bad:
        raise ValueError(f"unknown stream_mode {bad[0]!r}; one of {sorted(STREAM_MODES)}")
    return frozenset(names)
