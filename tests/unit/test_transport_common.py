"""The shared transport layer: one (status, code) per failure, cursor formats, packet reuse."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from server.bus.base import BackendUnavailable, BusError, CursorAhead, CursorExpired, LogClosed, UnknownLog
from server.events import Event
from server.runs.service import Busy, Conflict, NotFound
from server.transports.common import (DEFAULT_TENANT, LOCAL_CALLER, RequestError, SubmitRequest,
                                      api_error, parse_seq, validate)
from server.transports.sio_protocol import BATCH_MAX, PacketCache, cursor_of, reset_packet


class _LogLost(BusError):
    code = "log_lost"


@pytest.mark.parametrize("exc, status, code", [
    (CursorExpired("r", 3, 10), 410, "cursor_expired"),
    (UnknownLog("r"), 410, "log_expired"),
    (CursorAhead("r", 9, 4), 400, "cursor_ahead"),
    (LogClosed("ended"), 409, "log_closed"),
    (BackendUnavailable("down"), 503, "backend_unavailable"),
    (_LogLost("gone"), 503, "log_lost"),
    (NotFound("unknown run 'x'"), 404, "not_found"),
    (Conflict("already ended", status="succeeded"), 409, "conflict"),
    (Busy("full"), 429, "too_many_runs"),
    (RequestError("bad_cursor", "no"), 400, "bad_cursor"),
    (RuntimeError("bug"), 500, "internal"),
])
def test_every_failure_has_one_status_and_code(exc: BaseException, status: int, code: str) -> None:
    """The same exception gives the same (status, code) in an HTTP body and a Socket.IO ack."""
    err = api_error(exc)
    assert (err.status, err.code) == (status, code)
    http = json.loads(err.response().body)["error"]
    ack = err.ack()
    assert ack["ok"] is False and ack["error"]["code"] == http["code"] == code
    assert http["message"] and ack["error"]["message"] == http["message"]


def test_detail_never_overwrites_code_or_message() -> None:
    """A detail named like a body key (Conflict(..., status=...)) joins the body without breaking it."""
    body = api_error(Conflict("run 'x' already ended succeeded", status="succeeded", code="evil")).body()
    assert body["code"] == "conflict" and body["status"] == "succeeded"


def test_retry_after_travels_in_headers_and_acks() -> None:
    err = api_error(Busy("full"))
    assert err.response().headers["retry-after"] == "5"
    assert err.ack()["error"]["retry_after_s"] == 5.0
    assert api_error(BackendUnavailable("down")).headers == {"Retry-After": "2"}


def test_cursor_expired_carries_first_seq_everywhere() -> None:
    err = api_error(CursorExpired("r", 3, 10))
    assert err.body()["first_seq"] == 10 and err.ack()["error"]["first_seq"] == 10
    assert err.reset("r") == {"run_id": "r", "reason": "cursor_expired", "message": err.message,
                              "first_seq": 10}
    pkt = reset_packet("r", UnknownLog("r"))
    name, body = json.loads(pkt.data[1:])
    assert name == "reset" and body["reason"] == "log_expired" and "first_seq" not in body


@pytest.mark.parametrize("raw", ["", "-1", "1.5", "1e3", "\u0663", "\uff11", "\u00b2", "9" * 19, " 1"])
def test_bad_cursor_formats(raw: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_seq(raw)
    assert info.value.code == "bad_cursor" and info.value.status == 400


@pytest.mark.parametrize("after, want", [(None, None), (0, 0), (17, 17), ("17", 17), ("0", 0)])
def test_socket_cursor_formats(after: object, want: int | None) -> None:
    assert cursor_of({"after": after}) == want


@pytest.mark.parametrize("after", [-1, True, 1.5, [1], {"seq": 1}, 10**30, "abc"])
def test_bad_socket_cursors(after: object) -> None:
    with pytest.raises(RequestError) as info:
        cursor_of({"after": after})
    assert info.value.code == "bad_cursor"


def test_request_models_name_the_bad_field() -> None:
    with pytest.raises(RequestError) as info:
        validate(SubmitRequest, {"agent": "a", "input": {}, "extra": 1})
    assert (info.value.status, info.value.code, info.value.detail) == (422, "invalid_request", {"field": "extra"})

    class Two(BaseModel):
        x: int

    with pytest.raises(RequestError) as info:
        validate(Two, None)
    assert info.value.detail == {"field": "body"}


async def test_without_auth_every_caller_is_the_default_tenant() -> None:
    from server.auth import Authenticator

    auth = Authenticator(mode="none")
    assert await auth.of_socket({}, None) == LOCAL_CALLER
    assert LOCAL_CALLER.tenant == DEFAULT_TENANT


def _events(run: str, seqs: range, terminal: bool = False) -> list[Event]:
    out = [Event(run, s, "THOUGHT", "a", {"n": s}, 1.0) for s in seqs]
    if terminal:
        last = out[-1]
        out[-1] = Event(run, last.seq, "STATUS", "server", {"state": "succeeded"}, 1.0)
    return out


def test_packet_cache_builds_each_batch_once() -> None:
    """Sockets that receive the same batch share its packets; modes and ranges do not mix."""
    cache = PacketCache(max_events=100)
    batch = _events("r", range(1, 11))
    a = cache.packets(batch, True)
    assert cache.packets(list(batch), True) is a and cache.hits == 1
    assert len(a) == 1 and json.loads(a[0].data[1:])[0] == "events"
    per_event = cache.packets(batch, False)
    assert len(per_event) == 10 and per_event is not a
    assert cache.packets(_events("r", range(1, 10)), True) is not a  # another range


def test_packet_cache_splits_lists_and_ends_with_run_end() -> None:
    batch = _events("r", range(1, 2 * BATCH_MAX + 2), terminal=True)
    pkts = PacketCache().packets(batch, True)
    decoded = [json.loads(p.data[1:]) for p in pkts]
    assert [len(body) for name, body in decoded[:-1]] == [BATCH_MAX, BATCH_MAX, 1]
    assert decoded[-1] == ["run_end", {"run_id": "r", "status": "succeeded"}]


def test_packet_cache_stays_bounded_in_events() -> None:
    cache = PacketCache(max_events=50)
    for start in range(1, 500, 10):
        cache.packets(_events("r", range(start, start + 10)), True)
    assert cache._events <= 50 and len(cache._items) <= 5
    first = _events("r", range(1, 11))
    hits = cache.hits
    cache.packets(first, True)
    assert cache.hits == hits  # aged out, rebuilt


def test_event_packets_are_shared_across_ranges() -> None:
    """Per-event packets are reused by seq, whatever range a socket reads them in."""
    cache = PacketCache(max_events=100)
    whole = cache.packets(_events("r", range(1, 21)), False)
    part = cache.packets(_events("r", range(5, 11)), False)
    assert all(p is q for p, q in zip(part, whole[4:10]))
