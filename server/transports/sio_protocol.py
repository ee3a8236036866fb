"""The Socket.IO wire: who may connect, what a request must carry, how events are packed.

Pure functions and small classes, no server state; ``socketio.py`` uses them. Refusals are
``common.RequestError``s and render through ``common.api_error`` like every transport's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from engineio import packet as eio_packet

from ..events import Event, dumps
from .common import ApiError, RequestError, api_error, parse_seq

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_RUN_ID = 200
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


def ok(**body: Any) -> dict[str, Any]:
    return {"ok": True, **body}


def error(code: str, message: str, **detail: Any) -> dict[str, Any]:
    return ApiError(400, code, message, detail).ack()


def one_object(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise RequestError("bad_request", "the payload must be one JSON object")
    return args[0]


def run_id_of(payload: dict[str, Any]) -> str:
    run_id = payload.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > MAX_RUN_ID:
        raise RequestError("bad_request", "run_id is required: a non-empty string")
    return run_id


def batch_of(payload: dict[str, Any]) -> bool:
    raw = payload.get("batch", False)
    if not isinstance(raw, bool):
        raise RequestError("bad_request", "batch must be true or false")
    return raw


def cursor_of(payload: dict[str, Any]) -> int | None:
    """``after``: absent or null means from the first event; else a non-negative integer seq
    (a JSON number, or a string of digits as a header-minded client sends)."""
    raw = payload.get("after")
    if raw is None:
        return None
    if isinstance(raw, str):
        return parse_seq(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return parse_seq(str(raw))  # the same length bound as a string cursor
    raise RequestError("bad_cursor", f"after {repr(raw)[:40]} is not a non-negative integer seq")


# --------------------------------------------------------------------------- packets


def event_packet(name: str, json_payload: bytes) -> eio_packet.Packet:
    """An engine.io MESSAGE carrying the Socket.IO EVENT ``[name, payload]`` (default namespace).

    Shareable by every recipient (engine.io caches its encoding). The JSON comes from
    orjson, the same bytes SSE sends as ``data:``.
    """
    text = '2["' + name + '",' + json_payload.decode() + "]"
    return eio_packet.Packet(eio_packet.MESSAGE, data=text)


def run_end_packet(run_id: str, status: str | None) -> eio_packet.Packet:
    return event_packet("run_end", dumps({"run_id": run_id, "status": status}))


def reset_packet(run_id: str, exc: BaseException) -> eio_packet.Packet:
    return event_packet("reset", dumps(api_error(exc).reset(run_id)))


def trimmed_packet(run_id: str, first_seq: int) -> eio_packet.Packet:
    """No cursor, but the log's start is gone: said before the first event, never silently."""
    return event_packet("reset", dumps({"run_id": run_id, "reason": "log_trimmed", "first_seq": first_seq}))


class PacketCache:
    """Packets of recent batches, built once per process however many sockets receive them.

    Sockets watching one run mostly get identical batches (the bus shows events to every
    subscriber in the same step), so the key is the batch's seq range and mode. A seq names
    one event forever (a log never reuses one), so an entry cannot go stale; it only ages out.
    """

    def __init__(self, max_events: int = 4096) -> None:
        # Bounded in events, not entries: one entry may hold a whole catch-up.
        self._max_events = max_events
        self._events = 0
        self._items: dict[tuple[str, int, int, bool], list[eio_packet.Packet]] = {}
        # ``event`` packets by seq too: sockets catching up from different cursors read
        # different ranges of the same events.
        self._singles: dict[tuple[str, int], eio_packet.Packet] = {}
        self.hits = 0

    def _single(self, event: Event) -> eio_packet.Packet:
        key = (event.run_id, event.seq)
        pkt = self._singles.get(key)
        if pkt is None:
            pkt = self._singles[key] = event_packet("event", event.encode())
            if len(self._singles) > self._max_events:
                del self._singles[next(iter(self._singles))]
        return pkt

    def packets(self, batch: list[Event], batched: bool) -> list[eio_packet.Packet]:
        """``event`` packets, one per event, or ``events`` lists of up to BATCH_MAX; the
        terminal event is followed by ``run_end``."""
        first, last = batch[0], batch[-1]
        key = (first.run_id, first.seq, last.seq, batched)
        out = self._items.get(key)
        if out is not None:
            self.hits += 1
            return out
        if batched:
            encoded = [e.encode() for e in batch]  # cached on the event: once, whoever receives it
            out = [event_packet("events", b"[" + b",".join(encoded[i:i + BATCH_MAX]) + b"]")
                   for i in range(0, len(encoded), BATCH_MAX)]
        else:
            out = [self._single(e) for e in batch]
        if last.is_terminal:
            out.append(run_end_packet(last.run_id, last.data.get("state")))
        size = last.seq - first.seq + 1
        if size > self._max_events:
            return out  # a long catch-up: other sockets rarely read the very same range
        self._events += size
        while self._events > self._max_events:  # drop the oldest: dicts keep insertion order
            old = next(iter(self._items))  # (run_id, first seq, last seq, mode)
            self._events -= old[2] - old[1] + 1
            del self._items[old]
        self._items[key] = out
        return out
