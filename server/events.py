"""The event: one chunk a run emits, and its wire encoding."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

# Namespaces the server itself emits; user graphs may add their own (the set is open).
THOUGHT = "THOUGHT"
TOOL_USE = "TOOL_USE"
CRITIC_EVAL = "CRITIC_EVAL"
STATUS = "STATUS"
RESULT = "RESULT"
ERROR = "ERROR"
STEP = "STEP"

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _default(obj: Any) -> Any:
    """Make whatever a graph emits JSON-safe instead of failing the run."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    seq: int
    ns: str
    agent: str
    data: dict[str, Any]
    ts: float = field(default_factory=time.time)
    # The JSON encoding, made once: a fan-out to N subscribers must not encode N times.
    _raw: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """Contract item 4: the one terminal STATUS event that ends every run."""
        return self.ns == STATUS and self.data.get("state") in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "ns": self.ns,
            "agent": self.agent,
            "data": self.data,
            "ts": self.ts,
        }

    def encode(self) -> bytes:
        raw = self._raw
        if raw is None:
            # A right-sized copy: orjson (3.12+) returns bytes inside a buffer of at least
            # 4 KiB that it never shrinks, and this one is kept as long as the event is —
            # 4 KiB per ~200-byte event was most of a retained log's memory.
            raw = bytes(memoryview(dumps(self.to_dict())))
            object.__setattr__(self, "_raw", raw)
        return raw

    @classmethod
    def decode(cls, raw: bytes | str) -> Event:
        d = orjson.loads(raw)
        event = cls(d["run_id"], int(d["seq"]), d["ns"], d["agent"], d["data"], float(d["ts"]))
        object.__setattr__(event, "_raw", raw if isinstance(raw, bytes) else raw.encode())
        return event
