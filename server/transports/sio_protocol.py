"""The Socket.IO wire: who may connect, what a request must carry, how events are packed.

Pure functions and small classes, no server state; ``socketio.py`` uses them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from engineio import packet as eio_packet

from ..bus.base import BusError, CursorExpired, UnknownLog
from ..events import dumps

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_RUN_ID = 200
MAX_CURSOR_DIGITS = 18
BATCH_MAX = 128  # events per ``events`` message (keeps the queue bound, in packets, meaningful)


# --------------------------------------------------------------------------- origins


class OriginPolicy:
    """Which browser Origins may connect; used as engine.io's ``cors_allowed_origins``.

    engine.io calls it for every request that carries an Origin (WebSocket upgrades
    included, which Starlette's CORS middleware never sees) and answers a refused one
    with 400 before any Socket.IO handler runs.
    """

    def __init__(self, setting: str) -> None:
        items = [o.strip().rstrip("/").lower() for o in setting.split(",") if o.strip()]
        self.any = "*" in items
        self.listed = frozenset(o for o in items if o != "*")
        self.loopback = not items

    def __call__(self, origin: str | None, environ: dict[str, Any] | None = None) -> bool:
        if self.any or not origin:
            return True
        o = origin.strip().rstrip("/").lower()
        if o in self.listed:
            return True
        try:
            parts = urlsplit(o)
            host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not host:
            return False  # "null" (file://, sandboxed frames) and other schemes
        if self.loopback and host in LOOPBACK_HOSTS:
            return True
        request_host = (environ or {}).get("HTTP_HOST")
        if request_host:  # same origin: the page was served by this very server
            try:
                req = urlsplit("//" + request_host.strip().lower())
                req_host, req_port = req.hostname, req.port or DEFAULT_PORTS[parts.scheme]
            except ValueError:
                return False
            return (req_host, req_port) == (host, port)
        return False


# --------------------------------------------------------------------------- payloads


class ProtocolError(Exception):
    """A request the protocol refuses; becomes ``{ok: false, error: {code, message}}``."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


def ok(**body: Any) -> dict[str, Any]:
    return {"ok": True, **body}


def error(code: str, message: str, **detail: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, **detail}}


def one_object(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise ProtocolError("bad_request", "the payload must be one JSON object")
    return args[0]


def run_id_of(payload: dict[str, Any]) -> str:
    run_id = payload.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > MAX_RUN_ID:
        raise ProtocolError("bad_request", "run_id is required: a non-empty string")
    return run_id


def batch_of(payload: dict[str, Any]) -> bool:
    raw = payload.get("batch", False)
    if not isinstance(raw, bool):
        raise ProtocolError("bad_request", "batch must be true or false")
    return raw


def cursor_of(payload: dict[str, Any]) -> int | None:
    """``after``: absent or null means from the first event; else a non-negative integer seq."""
    raw = payload.get("after")
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10**MAX_CURSOR_DIGITS:
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= MAX_CURSOR_DIGITS:
        return int(raw)
    shown = repr(raw)[:40]
    raise ProtocolError("bad_cursor", f"after {shown} is not a non-negative integer seq")


def event_packet(name: str, json_payload: bytes) -> eio_packet.Packet:
    """An engine.io MESSAGE carrying the Socket.IO EVENT ``[name, payload]`` (default namespace).

    Built once per event and shared by every recipient (engine.io caches its encoding).
    The JSON comes from orjson, the same bytes SSE sends as ``data:``.
    """
    text = '2["' + name + '",' + json_payload.decode() + "]"
    return eio_packet.Packet(eio_packet.MESSAGE, data=text)


def event_packets(encoded: list[bytes], batch: bool) -> list[eio_packet.Packet]:
    """One ``event`` packet per event, or ``events`` packets of up to BATCH_MAX events each."""
    if not batch:
        return [event_packet("event", j) for j in encoded]
    return [event_packet("events", b"[" + b",".join(encoded[i:i + BATCH_MAX]) + b"]")
            for i in range(0, len(encoded), BATCH_MAX)]


def run_end_packet(run_id: str, status: str | None) -> eio_packet.Packet:
    return event_packet("run_end", dumps({"run_id": run_id, "status": status}))


def reset_packet(run_id: str, exc: BusError) -> eio_packet.Packet:
    body: dict[str, Any] = {"run_id": run_id, "reason": exc.code, "message": str(exc)}
    if isinstance(exc, CursorExpired):
        body["first_seq"] = exc.first_seq
    elif isinstance(exc, UnknownLog):
        body["reason"] = "log_expired"
    return event_packet("reset", dumps(body))
