"""Issue 10 on Socket.IO, against a real server process with THOUGHTSTREAM_AUTH=jwt (HS256)
and an API keys file: refused connects and their reasons, tenant isolation and roles on
every socket request, and a credential that expires or is refreshed while a run streams.

The tests mint their own secret, tokens and keys (tests/auth_support.py); nothing is
checked in.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import socketio

from tests.auth_support import Minter, bearer, write_keys_file
from tests.integration.test_socketio import Watcher, check_suffix, hang_up
from tests.support import ServerProcess

TERMINAL = {"succeeded", "failed", "cancelled"}
EXPIRING_S = 2.0  # the server's auth_expiring lead time in this module
SHORT_TTL_S = 4.0  # a token that expires while a run streams


@pytest.fixture(scope="module")
def minter() -> Minter:
    return Minter.hs256()


@pytest.fixture(scope="module")
def api_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("auth-sio") / "api_keys.json"
    keys = write_keys_file(path, {"acme-script": {"tenant": "acme", "roles": ["member"]},
                                  "acme-watcher": {"tenant": "acme", "roles": ["viewer"]},
                                  "acme-doomed": {"tenant": "acme", "roles": ["member"]}})
    return path, keys


@pytest.fixture(scope="module")
def server(minter: Minter, api_keys: tuple[Path, dict[str, str]]) -> Iterator[ServerProcess]:
    """One server: JWT (HS256) plus API keys, the ticker graph, auth_expiring 2 s before exp."""
    proc = ServerProcess("--agent", "ticker=tests/integration/graphs.py:ticker", env={
        "THOUGHTSTREAM_AUTH": "jwt",
        "THOUGHTSTREAM_JWT_SECRET": minter.secret,
        "THOUGHTSTREAM_API_KEYS_FILE": str(api_keys[0]),
        "THOUGHTSTREAM_AUTH_EXPIRING_S": str(EXPIRING_S),
        "THOUGHTSTREAM_MAX_CONCURRENT_RUNS": "16",
        "THOUGHTSTREAM_SOCKETIO_PING_INTERVAL_S": "2",
        "THOUGHTSTREAM_LOG_LEVEL": "info",
    })
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# --------------------------------------------------------------------------- helpers


class AuthWatcher(Watcher):
    """A Watcher that also records the auth events, the disconnect, and when each came."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.auth: list[tuple[str, Any, float]] = []  # (event, body, time.time())
        self.disconnected_at: float | None = None
        for name in ("auth_expiring", "auth_expired", "auth_revoked"):
            self.sio.on(name, self._recorder(name))
        self.sio.on("disconnect", self._on_disconnect)

    def _recorder(self, name: str) -> Any:
        def record(body: Any = None) -> None:
            self.auth.append((name, body, time.time()))
            self.stream.append((name, body))
        return record

    def _on_disconnect(self, *_: Any) -> None:
        self.disconnected_at = time.time()
        self.stream.append(("disconnect", None))

    def first(self, name: str) -> tuple[Any, float] | None:
        for event, body, at in self.auth:
            if event == name:
                return body, at
        return None

    async def wait_auth(self, name: str, timeout: float) -> tuple[Any, float]:
        deadline = time.monotonic() + timeout
        while (hit := self.first(name)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} within {timeout}s; got {self.auth}")
            await asyncio.sleep(0.01)
        return hit

    async def wait_disconnected(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.disconnected_at is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still connected after {timeout}s")
            await asyncio.sleep(0.01)
        return self.disconnected_at


async def until_count(w: AuthWatcher, name: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for e, _, _ in w.auth if e == name) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} {name} within {timeout:.1f}s; got {w.auth}")
        await asyncio.sleep(0.01)


async def connect(url: str, auth: Any) -> AuthWatcher:
    return await AuthWatcher(url).connect(auth=auth)


async def refused(url: str, auth: Any) -> dict[str, Any]:
    """Connect, expect a refusal; returns the connect_error payload's ``data`` ({code, message})."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", lambda data=None: errors.append(data))
    kw = {} if auth is None else {"auth": auth}
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(url, transports=["websocket"], wait_timeout=5, **kw)
    assert not sio.connected
    assert len(errors) == 1, errors
    payload = errors[0]
    assert isinstance(payload, dict) and isinstance(payload.get("data"), dict), payload
    data = payload["data"]
    assert set(data) >= {"code", "message"} and data["message"], data
    assert payload["message"] == data["message"]
    return data


async def post_run(base: str, token: str, input: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=bearer(token)) as http:
        r = await http.post("/runs", json={"agent": "ticker", "input": input})
        assert r.status_code == 202, r.text
        return r.json()["run_id"]


async def get_run(base: str, token: str, run_id: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=bearer(token)) as http:
        return await http.get(f"/runs/{run_id}")


async def wait_seq(base: str, token: str, run_id: str, at_least: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await get_run(base, token, run_id)
        assert r.status_code == 200, r.text
        if (r.json()["last_seq"] or 0) >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not reach seq {at_least}")


async def sse_log(base: str, token: str, run_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """The whole log of a run over SSE from the first event, to its terminal event."""
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=base, timeout=timeout, headers=bearer(token)) as http:
        async with http.stream("GET", f"/runs/{run_id}/events") as resp:
            assert resp.status_code == 200, await resp.aread()
            async with asyncio.timeout(timeout):
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        ev = json.loads(line[6:])
                        if "seq" in ev:
                            events.append(ev)
    assert events and events[-1]["ns"] == "STATUS" and events[-1]["data"]["state"] in TERMINAL
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


async def tenant_run_ids(base: str, token: str) -> set[str]:
    async with httpx.AsyncClient(base_url=base, timeout=10, headers=bearer(token)) as http:
        r = await http.get("/runs", params={"limit": 200})
        assert r.status_code == 200, r.text
        return {row["run_id"] for row in r.json()["runs"]}


def same_but_id(ack: dict[str, Any], run_id: str, other_id: str) -> dict[str, Any]:
    """An ack with ``run_id`` written as ``other_id`` (to compare two not_found acks)."""
    return json.loads(json.dumps(ack).replace(run_id, other_id))


UNKNOWN_RUN = "run_doesnotexist000000000000"


# --------------------------------------------------------------------------- connect


async def test_connect_without_credential_is_refused_with_a_reason(server: ServerProcess) -> None:
    """No token and no API key: the connect is refused with {code: unauthenticated, message}."""
    for auth in (None, {}, {"token": ""}, {"api_key": ""}):
        data = await refused(server.url, auth)
        assert data["code"] == "unauthenticated", (auth, data)


async def test_connect_with_bad_or_expired_credential_is_refused(server: ServerProcess, minter: Minter) -> None:
    """A bad signature, garbage, a ticket or an unknown API key is invalid_token; a past exp is token_expired."""
    other = Minter.hs256()
    cases = [
        ({"token": other.token()}, "invalid_token"),  # signed with another secret
        ({"token": "not.a.jwt"}, "invalid_token"),
        ({"token": minter.token(tenant=None)}, "invalid_token"),  # no tenant claim
        ({"token": "tkt_" + "x" * 32}, "invalid_token"),  # a ticket is not a token
        ({"token": 12345}, "invalid_token"),
        ({"api_key": "ts_unknown_key"}, "invalid_token"),
        ({"token": minter.token(ttl_s=-30)}, "token_expired"),
    ]
    for auth, code in cases:
        data = await refused(server.url, auth)
        assert data["code"] == code, (auth, data)


async def test_token_and_api_key_both_connect(server: ServerProcess, minter: Minter,
                                              api_keys: tuple[Path, dict[str, str]]) -> None:
    """auth {token} and auth {api_key} both connect and watch their tenant's run to its end."""
    alice = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, alice, {"count": 15, "interval_s": 0.01})
    by_token = await connect(server.url, {"token": alice})
    by_key = await connect(server.url, {"api_key": api_keys[1]["acme-watcher"]})
    for w in (by_token, by_key):
        ack = await w.subscribe(run, 0)
        assert ack["run"]["run_id"] == run and ack["run"]["tenant"] == "acme", ack
    log = await sse_log(server.url, alice, run)
    for w in (by_token, by_key):
        await w.wait_end(run)
        check_suffix(w.events[run], log, 0)
        assert w.ends[run] == [{"run_id": run, "status": "succeeded"}]
        assert not w.auth
    # Non-browser clients may send the credential as a header instead; long-polling works too.
    by_header = await AuthWatcher(server.url).connect(headers=bearer(alice))
    by_polling = await AuthWatcher(server.url).connect(transports=("polling",), auth={"token": alice})
    for w in (by_header, by_polling):
        await w.subscribe(run, 0)
        await w.wait_end(run)
        check_suffix(w.events[run], log, 0)
        await w.close()
    # The member key starts runs over the socket, in its own tenant.
    script = await connect(server.url, {"api_key": api_keys[1]["acme-script"]})
    ack = await script.call("start_run", {"agent": "ticker", "input": {"count": 2, "interval_s": 0.0}})
    assert ack["ok"] is True, ack
    r = await get_run(server.url, alice, ack["run_id"])
    assert r.status_code == 200 and r.json()["tenant"] == "acme", r.text
    for w in (by_token, by_key, script):
        await w.close()


# --------------------------------------------------------------------------- isolation and roles


async def test_other_tenants_run_is_not_found_on_subscribe(server: ServerProcess, minter: Minter) -> None:
    """Tenant B subscribing to tenant A's run is acked not_found exactly as an unknown run, and gets nothing."""
    a = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, a, {"count": 30, "interval_s": 0.02})
    b = await connect(server.url, {"token": minter.token(tenant="globex", sub="bob")})
    ack = await b.subscribe(run, 0, expect_ok=False)
    unknown = await b.subscribe(UNKNOWN_RUN, 0, expect_ok=False)
    assert ack["ok"] is False and ack["error"]["code"] == "not_found", ack
    assert same_but_id(ack, run, UNKNOWN_RUN) == unknown, (ack, unknown)
    assert "tenant" not in json.dumps(ack).lower()  # nothing hints that the run exists elsewhere
    # Even with a cursor, batch mode, or after the run ended: still not_found, and no event leaks.
    assert (await b.call("subscribe", {"run_id": run, "after": 3, "batch": True}))["error"]["code"] == "not_found"
    await sse_log(server.url, a, run)
    again = await b.subscribe(run, expect_ok=False)
    assert same_but_id(again, run, UNKNOWN_RUN) == unknown
    await asyncio.sleep(0.2)
    assert not b.events and not b.ends and b.sio.connected
    await b.close()


async def test_other_tenants_run_cannot_be_cancelled_or_answered(server: ServerProcess, minter: Minter) -> None:
    """cancel_run / resume_run of another tenant's run are not_found (as unknown runs) and change nothing."""
    a = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, a, {"count": 60, "interval_s": 0.02})
    b = await connect(server.url, {"token": minter.token(tenant="globex", sub="bob", roles=["member"])})
    for event, payload in (("cancel_run", {"run_id": run}), ("resume_run", {"run_id": run, "value": "yes"})):
        ack = await b.call(event, payload)
        unknown = await b.call(event, {**payload, "run_id": UNKNOWN_RUN})
        assert ack["ok"] is False and ack["error"]["code"] == "not_found", (event, ack)
        assert same_but_id(ack, run, UNKNOWN_RUN) == unknown, (event, ack, unknown)
    log = await sse_log(server.url, a, run)
    assert log[-1]["data"]["state"] == "succeeded"  # B's cancel did not reach it
    # Tenant A's own member can cancel a run of its tenant over the socket.
    own = await post_run(server.url, a, {"count": 200, "interval_s": 0.02})
    mine = await connect(server.url, {"token": a})
    ack = await mine.call("cancel_run", {"run_id": own})
    assert ack["ok"] is True and ack["run"]["run_id"] == own, ack
    assert (await sse_log(server.url, a, own))[-1]["data"]["state"] == "cancelled"
    for w in (b, mine):
        await w.close()


async def test_viewer_cannot_start_cancel_or_answer(server: ServerProcess, minter: Minter,
                                                    api_keys: tuple[Path, dict[str, str]]) -> None:
    """A viewer (token or API key) watches its tenant's runs but start_run/cancel_run/resume_run are forbidden."""
    a = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, a, {"count": 40, "interval_s": 0.02})
    before = await tenant_run_ids(server.url, a)
    token_viewer = await connect(server.url, {"token": minter.token(tenant="acme", sub="vera", roles=["viewer"])})
    key_viewer = await connect(server.url, {"api_key": api_keys[1]["acme-watcher"]})
    for w in (token_viewer, key_viewer):
        for event, payload in (("start_run", {"agent": "ticker", "input": {"count": 1, "interval_s": 0}}),
                               ("cancel_run", {"run_id": run}),
                               ("resume_run", {"run_id": run, "value": 1})):
            ack = await w.call(event, payload)
            assert ack["ok"] is False and ack["error"]["code"] == "forbidden", (event, ack)
        assert (await w.subscribe(run, 0))["ok"] is True
        assert w.sio.connected  # a refusal does not cost the connection
    log = await sse_log(server.url, a, run)
    assert log[-1]["data"]["state"] == "succeeded"
    for w in (token_viewer, key_viewer):
        await w.wait_end(run)
        check_suffix(w.events[run], log, 0)
        await w.close()
    assert await tenant_run_ids(server.url, a) == before  # the refused start_run created nothing


async def test_admin_subscribes_to_any_tenants_run(server: ServerProcess, minter: Minter) -> None:
    """An admin (of its own tenant) subscribes to other tenants' runs and gets every event."""
    run_a = await post_run(server.url, minter.token(tenant="acme", sub="alice"), {"count": 20, "interval_s": 0.01})
    run_g = await post_run(server.url, minter.token(tenant="globex", sub="gina"), {"count": 20, "interval_s": 0.01})
    admin_token = minter.token(tenant="ops", sub="root", roles=["admin"])
    admin = await connect(server.url, {"token": admin_token})
    for run, tenant in ((run_a, "acme"), (run_g, "globex")):
        ack = await admin.subscribe(run, 0)
        assert ack["run"]["tenant"] == tenant
    await admin.wait_end(run_a, run_g)
    for run in (run_a, run_g):
        check_suffix(admin.events[run], await sse_log(server.url, admin_token, run), 0)
    # ... and cancels them.
    long = await post_run(server.url, minter.token(tenant="globex", sub="gina"), {"count": 200, "interval_s": 0.02})
    ack = await admin.call("cancel_run", {"run_id": long})
    assert ack["ok"] is True and ack["run"]["tenant"] == "globex", ack
    await admin.close()


async def test_idempotency_key_of_start_run_is_per_tenant(server: ServerProcess, minter: Minter) -> None:
    """The same idempotency_key in start_run gives each tenant its own run; a repeat gives that run back."""
    a = await connect(server.url, {"token": minter.token(tenant="acme", sub="alice")})
    b = await connect(server.url, {"token": minter.token(tenant="globex", sub="bob")})
    body = {"agent": "ticker", "input": {"count": 1, "interval_s": 0.0}, "idempotency_key": "sio-idem-1"}
    first_a, first_b = await a.call("start_run", body), await b.call("start_run", body)
    again_a, again_b = await a.call("start_run", body), await b.call("start_run", body)
    assert first_a["ok"] and first_b["ok"] and first_a["created"] and first_b["created"], (first_a, first_b)
    assert first_a["run_id"] != first_b["run_id"]
    assert (again_a["run_id"], again_a["created"]) == (first_a["run_id"], False)
    assert (again_b["run_id"], again_b["created"]) == (first_b["run_id"], False)
    assert (await b.subscribe(first_a["run_id"], expect_ok=False))["error"]["code"] == "not_found"
    for w in (a, b):
        await w.close()


# --------------------------------------------------------------------------- expiry and refresh


async def test_expiry_mid_stream_then_gapless_resume(server: ServerProcess, minter: Minter) -> None:
    """auth_expiring ~2 s before exp, auth_expired by exp + 1 s and a disconnect; a new token resumes exactly."""
    long_token = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, long_token, {"count": 70, "interval_s": 0.1})  # about 7 s
    exp = time.time() + SHORT_TTL_S
    w = await connect(server.url, {"token": minter.token(tenant="acme", sub="alice", exp=exp)})
    await w.subscribe(run, 0)

    body, at = await w.wait_auth("auth_expiring", SHORT_TTL_S + 1)
    assert at < exp, (at, exp)
    assert at >= exp - EXPIRING_S - 0.5, f"auth_expiring {exp - at:.2f}s before exp, lead is {EXPIRING_S}s"
    assert body["expires_at"] == pytest.approx(exp, abs=0.01)
    assert 0 < body["in_s"] <= EXPIRING_S + 0.1, body

    body, at = await w.wait_auth("auth_expired", exp - time.time() + 1.5)
    assert exp - 0.05 <= at <= exp + 1.0, f"auth_expired {at - exp:+.2f}s from exp"
    assert body["code"] == "token_expired" and body["message"], body
    gone = await w.wait_disconnected(exp - time.time() + 2.0)
    assert gone <= exp + 1.5, f"disconnected {gone - exp:+.2f}s after exp"
    assert w.stream[-2:] == [("auth_expired", body), ("disconnect", None)], w.stream[-3:]
    assert not w.ends[run], "the run should outlive the short token"
    assert [n for n, _, _ in w.auth] == ["auth_expiring", "auth_expired"]
    first = w.events[run]
    assert first and [e["seq"] for e in first] == list(range(1, len(first) + 1))

    # Reconnect with a fresh token: subscribe after the last seq held gets exactly the rest.
    last_seq = first[-1]["seq"]
    again = await connect(server.url, {"token": minter.token(tenant="acme", sub="alice", ttl_s=120)})
    await again.subscribe(run, last_seq)
    await again.wait_end(run, timeout=20)
    log = await sse_log(server.url, long_token, run)
    check_suffix(again.events[run], log, last_seq)
    assert first + again.events[run] == log
    assert again.ends[run] == [{"run_id": run, "status": "succeeded"}] and not again.auth
    await again.close()


async def test_refresh_keeps_the_socket_past_the_old_exp(server: ServerProcess, minter: Minter) -> None:
    """A refresh {token} answering auth_expiring acks {ok, expires_at}; the socket outlives the old exp, events flow."""
    long_token = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, long_token, {"count": 100, "interval_s": 0.1})
    exp = time.time() + SHORT_TTL_S
    w = await connect(server.url, {"token": minter.token(tenant="acme", sub="alice", exp=exp)})
    await w.subscribe(run, 0)
    await w.wait_auth("auth_expiring", SHORT_TTL_S + 1)
    # First a token that itself expires soon: the socket gets new deadlines (a second warning).
    mid_exp = exp + 3.0
    ack = await w.call("refresh", {"token": minter.token(tenant="acme", sub="alice", exp=mid_exp)})
    assert ack == {"ok": True, "expires_at": pytest.approx(mid_exp, abs=0.01)}, ack
    await until_count(w, "auth_expiring", 2, mid_exp - time.time())
    body, at = w.auth[-1][1], w.auth[-1][2]
    assert exp < at < mid_exp and body["expires_at"] == pytest.approx(mid_exp, abs=0.01), w.auth
    assert w.sio.connected and w.first("auth_expired") is None  # the old exp passed quietly
    new_exp = time.time() + 60
    ack = await w.call("refresh", {"token": minter.token(tenant="acme", sub="alice", exp=new_exp)})
    assert ack["ok"] is True, ack
    assert ack["expires_at"] == pytest.approx(new_exp, abs=0.01)

    await asyncio.sleep(max(0.0, mid_exp - time.time()) + 1.2)  # well past both earlier exps
    assert w.sio.connected and w.disconnected_at is None
    assert [n for n, _, _ in w.auth] == ["auth_expiring", "auth_expiring"], w.auth
    held = len(w.events[run])
    await asyncio.sleep(0.5)
    assert len(w.events[run]) > held, "events stopped after the old exp"
    # Requests still work on the refreshed socket.
    assert (await w.call("unsubscribe", {"run_id": UNKNOWN_RUN}))["ok"] is True
    await w.wait_end(run, timeout=20)
    check_suffix(w.events[run], await sse_log(server.url, long_token, run), 0)
    assert w.sio.connected
    await w.close()


async def test_refresh_with_another_subject_or_tenant_is_refused(server: ServerProcess, minter: Minter) -> None:
    """A refresh for another sub or tenant (or a bad/expired token) is refused; the socket still ends at the old exp."""
    long_token = minter.token(tenant="acme", sub="alice")
    run = await post_run(server.url, long_token, {"count": 70, "interval_s": 0.1})
    exp = time.time() + SHORT_TTL_S
    w = await connect(server.url, {"token": minter.token(tenant="acme", sub="alice", exp=exp)})
    await w.subscribe(run, 0)
    await w.wait_auth("auth_expiring", SHORT_TTL_S + 1)
    later = time.time() + 60
    for token, code in (
        (minter.token(tenant="acme", sub="mallory", exp=later), "invalid_token"),  # another subject
        (minter.token(tenant="globex", sub="alice", exp=later), "invalid_token"),  # another tenant
        (Minter.hs256().token(tenant="acme", sub="alice", exp=later), "invalid_token"),  # bad signature
        (minter.token(tenant="acme", sub="alice", ttl_s=-5), "token_expired"),
    ):
        ack = await w.call("refresh", {"token": token})
        assert ack["ok"] is False and ack["error"]["code"] == code, (ack, code)
    assert w.sio.connected

    body, at = await w.wait_auth("auth_expired", exp - time.time() + 1.5)
    assert exp - 0.05 <= at <= exp + 1.0, f"auth_expired {at - exp:+.2f}s from exp"
    gone = await w.wait_disconnected(exp - time.time() + 2.0)
    assert gone <= exp + 1.5
    assert not w.ends[run]
    # The refused refreshes did not end anything else: the run itself finishes.
    assert (await sse_log(server.url, long_token, run))[-1]["data"]["state"] == "succeeded"
    await hang_up(w.sio)


async def test_auth_expiring_comes_at_once_when_less_than_the_lead_is_left(server: ServerProcess,
                                                                           minter: Minter) -> None:
    """A token with less than the lead time left gets auth_expiring right away, before exp, not only auth_expired."""
    exp = time.time() + EXPIRING_S * 0.75
    w = await connect(server.url, {"token": minter.token(tenant="acme", sub="alice", exp=exp)})
    await w.wait_disconnected(EXPIRING_S + 1.5)
    names = [n for n, _, _ in w.auth]
    assert names == ["auth_expiring", "auth_expired"], w.auth
    assert w.first("auth_expiring")[1] < exp


# --------------------------------------------------------------------------- revocation (one process)


async def test_revocation_follows_a_refreshed_socket(server: ServerProcess, minter: Minter) -> None:
    """After a refresh, revoking the old token's jti leaves the socket alone; revoking the new one cuts it."""
    admin = minter.token(tenant="ops", sub="root", roles=["admin"])
    # 10 s: the run is still going when the socket is cut, however slow the machine.
    run = await post_run(server.url, admin, {"count": 200, "interval_s": 0.05})
    old_jti, new_jti = "refreshed-old-1", "refreshed-new-1"
    w = await connect(server.url, {"token": minter.token(tenant="ops", sub="erin", jti=old_jti)})
    ack = await w.call("refresh", {"token": minter.token(tenant="ops", sub="erin", jti=new_jti)})
    assert ack["ok"] is True, ack
    await w.subscribe(run, 0)
    async with httpx.AsyncClient(base_url=server.url, headers=bearer(admin), timeout=10) as http:
        assert (await http.post("/admin/revoke", json={"jti": old_jti})).status_code == 200
        await asyncio.sleep(0.5)
        assert w.sio.connected and not w.auth, w.auth
        held = len(w.events[run])
        assert held > 0
        r = await http.post("/admin/revoke", json={"jti": new_jti})
        assert r.status_code == 200, r.text
        done = time.time()
    # Cut by the revoke (an uncut socket gets no auth_revoked at all); the 1 s promise, with
    # room for a loaded machine.
    _, at = await w.wait_auth("auth_revoked", 10)
    assert at <= done + 2.5, at - done
    await w.wait_disconnected(10)
    assert not w.ends[run]


async def test_revoking_an_api_key_subject_cuts_its_socket(server: ServerProcess, minter: Minter,
                                                          api_keys: tuple[Path, dict[str, str]]) -> None:
    """Revoking sub "key:<name>" ends that API key's open socket with auth_revoked and refuses it at connect."""
    key = api_keys[1]["acme-doomed"]
    run = await post_run(server.url, minter.token(tenant="acme", sub="alice"), {"count": 60, "interval_s": 0.05})
    w = await connect(server.url, {"api_key": key})
    bystander = await connect(server.url, {"api_key": api_keys[1]["acme-watcher"]})
    for x in (w, bystander):
        await x.subscribe(run, 0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10,
                                 headers=bearer(minter.token(tenant="ops", sub="root", roles=["admin"]))) as http:
        r = await http.post("/admin/revoke", json={"sub": "key:acme-doomed"})
        done = time.time()
        assert r.status_code == 200, r.text
    # Cut by the revoke (an uncut socket gets no auth_revoked at all); the 1 s promise, with
    # room for a loaded machine.
    body, at = await w.wait_auth("auth_revoked", 10)
    assert body["code"] == "revoked" and at <= done + 2.5, at - done
    await w.wait_disconnected(10)
    assert (await refused(server.url, {"api_key": key}))["code"] == "invalid_token"
    await bystander.wait_end(run, timeout=20)
    assert not bystander.auth and bystander.sio.connected
    await bystander.close()
