"""Issue 10 over HTTP and SSE, against real ``serve`` processes with THOUGHTSTREAM_AUTH=jwt.

Two servers per module, started in parallel: ``hs`` (an HS256 secret, a required audience
and issuer, a keys file, 3 s tickets) serves almost everything; ``rsa`` (RS256 keys by kid
from a JWKS on 127.0.0.1) is there for the table rows only a kid-based server can have
(unknown kid, algorithm confusion with the JWKS key). Every token is minted here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import httpx
import jwt
import pytest
from httpx_sse import aconnect_sse

from tests.auth_support import JwksServer, Minter, bearer, write_keys_file
from tests.support import ServerProcess

from .conftest import TERMINAL_STATES, agent_flags, is_terminal

AUD, ISS = "thoughtstream-tests", "https://idp.example.test"
TICKET_TTL_S = 3.0
TICKER = {"ticker": "tests/integration/graphs.py:ticker"}
BASE_ENV = {
    "THOUGHTSTREAM_AUTH": "jwt",
    "THOUGHTSTREAM_JOURNAL": "false",
    "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "3000",  # reflective reaches its interrupt fast
    "THOUGHTSTREAM_SSE_PING_S": "0.5",
}


# ----------------------------------------------------------------------------- servers and tokens


class Tokens:
    """Tokens the ``hs`` server accepts unless told otherwise (aud and iss are set by default)."""

    def __init__(self, minter: Minter) -> None:
        self.minter = minter

    def __call__(self, tenant: str | None = "acme", sub: str = "alice", roles: Any = None,
                 ttl_s: float | None = 300, **claims: Any) -> str:
        claims.setdefault("aud", AUD)
        claims.setdefault("iss", ISS)
        return self.minter.token(tenant=tenant, sub=sub, roles=roles, ttl_s=ttl_s, **claims)

    def h(self, **kw: Any) -> dict[str, str]:
        return bearer(self(**kw))


@dataclass
class Env:
    """One server under test and what the tests need to talk to it."""

    server: ServerProcess
    tokens: Callable[..., str]
    admin: dict[str, str]
    api_keys: dict[str, str] = field(default_factory=dict)
    victim: str = ""  # an interrupted run of tenant acme, which bad callers must not change
    minter: Minter | None = None

    @property
    def url(self) -> str:
        return self.server.url


def start_servers(*servers: ServerProcess) -> None:
    """Start several servers at once (each takes ~2 s, mostly imports)."""
    with ThreadPoolExecutor(len(servers)) as pool:
        for fut in [pool.submit(s.start) for s in servers]:
            fut.result()


def interrupted_run(url: str, headers: dict[str, str], timeout: float = 30.0) -> str:
    """A reflective run waiting for a human (approve_tools), of the caller's tenant."""
    with httpx.Client(base_url=url, headers=headers, timeout=20) as c:
        r = c.post("/runs", json={"agent": "reflective",
                                  "input": {"question": "What is 12*7?", "approve_tools": True}})
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        deadline = time.monotonic() + timeout
        while (status := c.get(f"/runs/{run_id}").json()["status"]) != "interrupted":
            assert status not in TERMINAL_STATES and time.monotonic() < deadline, status
            time.sleep(0.05)
        return run_id


@pytest.fixture(scope="module")
def envs() -> Iterator[dict[str, Env]]:
    hs_minter = Minter.hs256()
    rsa_minter = Minter.rs256(kid="rsa-1")
    keys_file = Path(tempfile.mkdtemp(prefix="ts-auth-")) / "api_keys.json"
    keys = write_keys_file(keys_file, {"acme-member": {"tenant": "acme", "roles": ["member"]}})
    with JwksServer(rsa_minter) as jwks:
        hs = ServerProcess(*agent_flags(TICKER), env={
            **BASE_ENV, "THOUGHTSTREAM_JWT_SECRET": hs_minter.secret,
            "THOUGHTSTREAM_JWT_AUDIENCE": AUD, "THOUGHTSTREAM_JWT_ISSUER": ISS,
            "THOUGHTSTREAM_API_KEYS_FILE": str(keys_file),
            "THOUGHTSTREAM_TICKET_TTL_S": str(TICKET_TTL_S),
        })
        rsa = ServerProcess(env={**BASE_ENV, "THOUGHTSTREAM_JWT_JWKS_URL": jwks.url,
                                 "THOUGHTSTREAM_JWT_JWKS_REFETCH_S": "0"})
        try:
            start_servers(hs, rsa)
            hs_tokens = Tokens(hs_minter)
            out = {
                "hs": Env(hs, hs_tokens, hs_tokens.h(tenant="ops", sub="root", roles=["admin"]), keys,
                          minter=hs_minter),
                "rsa": Env(rsa, rsa_minter.token, bearer(rsa_minter.token(tenant="ops", sub="root", roles=["admin"])),
                           minter=rsa_minter),
            }
            for env in out.values():
                env.victim = interrupted_run(env.url, bearer(env.tokens(tenant="acme", sub="alice")))
            yield out
        finally:
            for s in (hs, rsa):
                s.stop()
            for name, s in (("hs", hs), ("rsa", rsa)):
                print(f"--- {name} ---\n{s.output()[-3000:]}")


@pytest.fixture(scope="module")
def hs(envs: dict[str, Env]) -> Env:
    return envs["hs"]


@pytest.fixture
async def admin(hs: Env) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(hs, hs.admin) as c:
        yield c


def client_of(env: Env, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=env.url, headers=headers or {}, timeout=httpx.Timeout(20.0, connect=5.0))


# ----------------------------------------------------------------------------- helpers


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_signed_hs256(claims: dict[str, Any], secret: bytes, kid: str | None = None) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses to HMAC with a PEM key, as it should)."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "mallory", "tenant": "acme", "exp": time.time() + 300, "iat": int(time.time()),
            "aud": AUD, "iss": ISS, **extra}


def err(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


def send(c: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
    """A request whose body is read unless it is an event stream (a stream that should have
    been refused and was not must fail the test, not hang it on an endless body)."""
    with c.stream(method, url, **kw) as resp:
        if not resp.headers.get("content-type", "").startswith("text/event-stream"):
            resp.read()
        return resp


def text_of(resp: httpx.Response) -> str:
    try:
        return resp.text
    except httpx.ResponseNotRead:
        return f"<an open {resp.headers.get('content-type')} stream>"


def assert_refused(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, (resp.status_code, text_of(resp))
    body = err(resp)
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    challenge = resp.headers.get("www-authenticate")
    if status == 401:
        assert challenge is not None and challenge.startswith('Bearer realm="thoughtstream"'), challenge
        if code == "unauthenticated":
            assert "error=" not in challenge, challenge  # a missing credential is only asked for
        else:
            assert 'error="invalid_token"' in challenge, challenge
    else:
        assert challenge is None, challenge


async def run_ids(c: httpx.AsyncClient, **params: Any) -> list[str]:
    """Every run GET /runs lists for this client (following pages)."""
    out: list[str] = []
    q: dict[str, Any] = {"limit": 200, **params}
    while True:
        r = await c.get("/runs", params=q)
        assert r.status_code == 200, r.text
        page = r.json()
        out += [row["run_id"] for row in page["runs"]]
        if page["next_before"] is None:
            return out
        q["before"] = page["next_before"]


async def start(c: httpx.AsyncClient, agent: str = "ticker", input: dict[str, Any] | None = None,
                **kw: Any) -> str:
    r = await c.post("/runs", json={"agent": agent, "input": input if input is not None else
                                    {"count": 1, "interval_s": 0.0}}, **kw)
    assert r.status_code == 202, r.text
    return r.json()["run_id"]


async def status_of(c: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    r = await c.get(f"/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def wait_for(c: httpx.AsyncClient, run_id: str, want: set[str], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snap = await status_of(c, run_id)
        if snap["status"] in want:
            return snap
        assert time.monotonic() < deadline, f"{run_id} never reached {want}: {snap}"
        await asyncio.sleep(0.05)


@dataclass
class Watch:
    """What one SSE connection delivered, in order."""

    status: int
    body: bytes = b""
    events: list[dict[str, Any]] = field(default_factory=list)
    ends: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)  # frames without id, time.time()
    closed_by_server: bool = False
    last_was_end: bool = False

    @property
    def last_seq(self) -> int | None:
        return self.events[-1]["seq"] if self.events else None


async def watch(c: httpx.AsyncClient, run_id: str, *, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, after: int | None = None,
                stop_after: int | None = None, timeout: float = 20.0) -> Watch:
    """Read GET /runs/{id}/events until the server closes (or ``stop_after`` events)."""
    h = dict(headers or {})
    if after is not None:
        h["Last-Event-ID"] = str(after)
    async with aconnect_sse(c, "GET", f"/runs/{run_id}/events", headers=h, params=params) as source:
        resp = source.response
        out = Watch(resp.status_code)
        if resp.status_code != 200:
            out.body = await resp.aread()
            return out
        async with asyncio.timeout(timeout):
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue
                data = json.loads(sse.data)
                if "seq" in data:  # httpx_sse repeats the last id on id-less frames, as the spec says
                    assert sse.id == str(data["seq"]) and sse.event == data["ns"], (sse.id, sse.event, data)
                    assert not out.ends, f"an event after {out.ends}"
                    out.events.append(data)
                    if stop_after is not None and len(out.events) >= stop_after:
                        return out
                else:
                    out.ends.append((sse.event, data, time.time()))
        out.closed_by_server = True
        out.last_was_end = bool(out.ends)
    return out


def refused_watch(w: Watch, status: int, code: str) -> None:
    assert w.status == status, (w.status, w.body)
    assert json.loads(w.body)["error"]["code"] == code, w.body


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


async def full_log(c: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    w = await watch(c, run_id)
    assert w.status == 200 and w.closed_by_server and not w.ends, w
    return w.events


def assert_exact(parts: list[list[dict[str, Any]]], log: list[dict[str, Any]]) -> None:
    """The pieces, joined, are the whole log: every seq once, in order, up to the terminal event."""
    joined = [e for part in parts for e in part]
    assert seqs(joined) == list(range(1, len(joined) + 1)), [seqs(p) for p in parts]
    assert joined == log
    assert is_terminal(joined[-1]), joined[-1]


SLOW = {"count": 45, "interval_s": 0.1}  # ~4.5 s: outlives a 3 s token


# ----------------------------------------------------------------------------- bad credentials


def _ticket(env: Env) -> str:
    r = httpx.post(f"{env.url}/runs/{env.victim}/ticket", headers=env.admin)
    assert r.status_code == 200, r.text
    return r.json()["ticket"]


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["tenant"] = "globex"
    return f"{head}.{b64url(json.dumps(doc).encode())}.{sig}"


def _secret(env: Env) -> str:
    assert env.minter is not None
    return env.minter.secret


def _pem(env: Env) -> bytes:
    assert env.minter is not None
    return env.minter.public_pem()


B = bearer
BAD_CREDENTIALS: list[tuple[str, str, Callable[[Env], dict[str, str]], int, str]] = [
    # id, server, headers, status, code
    ("no_credential", "hs", lambda e: {}, 401, "unauthenticated"),
    ("bearer_without_token", "hs", lambda e: {"Authorization": "Bearer"}, 401, "invalid_token"),
    ("not_a_jwt", "hs", lambda e: B("not-a-jwt"), 401, "invalid_token"),
    ("three_garbage_segments", "hs", lambda e: B("a.b.c"), 401, "invalid_token"),
    ("bad_signature", "hs", lambda e: B(Tokens(Minter.hs256())()), 401, "invalid_token"),
    ("tampered_payload", "hs", lambda e: B(_tamper(e.tokens())), 401, "invalid_token"),
    ("alg_none", "hs", lambda e: B(jwt.encode(claims(), None, algorithm="none")), 401, "invalid_token"),
    ("hs384_with_the_real_secret", "hs", lambda e: B(jwt.encode(claims(), _secret(e), algorithm="HS384")),
     401, "invalid_token"),
    ("rs256_on_a_secret_server", "hs", lambda e: B(Minter.rs256().token(aud=AUD, iss=ISS)), 401, "invalid_token"),
    ("wrong_audience", "hs", lambda e: B(e.tokens(aud="someone-else")), 401, "invalid_token"),
    ("no_audience", "hs", lambda e: B(e.tokens(aud=None)), 401, "invalid_token"),
    ("wrong_issuer", "hs", lambda e: B(e.tokens(iss="https://evil.example")), 401, "invalid_token"),
    ("no_issuer", "hs", lambda e: B(e.tokens(iss=None)), 401, "invalid_token"),
    ("expired", "hs", lambda e: B(e.tokens(ttl_s=-5)), 401, "token_expired"),
    ("not_yet_valid", "hs", lambda e: B(e.tokens(nbf=time.time() + 600)), 401, "invalid_token"),
    ("no_exp", "hs", lambda e: B(e.tokens(ttl_s=None)), 401, "invalid_token"),
    ("no_sub", "hs", lambda e: B(e.tokens(sub=None)), 401, "invalid_token"),  # type: ignore[arg-type]
    ("no_tenant", "hs", lambda e: B(e.tokens(tenant=None)), 401, "invalid_token"),
    ("tenant_with_spaces", "hs", lambda e: B(e.tokens(tenant="acme corp")), 401, "invalid_token"),
    ("roles_not_a_list", "hs", lambda e: B(e.tokens(roles=5)), 401, "invalid_token"),
    ("ticket_as_bearer", "hs", lambda e: B(_ticket(e)), 401, "invalid_token"),
    ("ticket_as_api_key", "hs", lambda e: {"X-Api-Key": _ticket(e)}, 401, "invalid_token"),
    ("unknown_api_key", "hs", lambda e: {"X-Api-Key": "ts_" + "x" * 43}, 401, "invalid_token"),
    ("basic_scheme", "hs", lambda e: {"Authorization": "Basic " + base64.b64encode(b"root:root").decode()},
     401, "invalid_token"),
    ("bad_bearer_beats_good_api_key", "hs",
     lambda e: {**B("not-a-jwt"), "X-Api-Key": e.api_keys["acme-member"]}, 401, "invalid_token"),
    ("unknown_kid", "rsa", lambda e: B(Minter.rs256(kid="rsa-unknown").token()), 401, "invalid_token"),
    ("no_kid", "rsa", lambda e: B(Minter.rs256().token()), 401, "invalid_token"),
    ("forged_with_a_known_kid", "rsa", lambda e: B(Minter.rs256(kid="rsa-1").token()), 401, "invalid_token"),
    ("alg_confusion_hs256_with_the_jwks_public_key", "rsa",
     lambda e: B(hand_signed_hs256(claims(), _pem(e), kid="rsa-1")), 401, "invalid_token"),
    ("alg_none_with_a_known_kid", "rsa",
     lambda e: B(jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})), 401, "invalid_token"),
    ("expired_by_kid", "rsa", lambda e: B(e.tokens(ttl_s=-5)), 401, "token_expired"),
]


@pytest.mark.parametrize("server,make,status,code", [c[1:] for c in BAD_CREDENTIALS],
                         ids=[c[0] for c in BAD_CREDENTIALS])
def test_bad_credential_is_refused_and_changes_nothing(envs: dict[str, Env], server: str,
                                                        make: Callable[[Env], dict[str, str]],
                                                        status: int, code: str) -> None:
    """Each bad credential gets its status, code and Bearer challenge on reads, writes and streams; no run appears or changes."""
    env = envs[server]
    headers = make(env)
    with httpx.Client(base_url=env.url, timeout=20) as c:
        before = c.get("/runs", params={"limit": 200}, headers=env.admin).json()["runs"]
        victim_before = c.get(f"/runs/{env.victim}", headers=env.admin).json()
        tries = [
            c.post("/runs", json={"agent": "reflective", "input": {"question": "hi"}},
                   headers={**headers, "Idempotency-Key": uuid.uuid4().hex}),
            c.get("/runs", headers=headers),
            c.get(f"/runs/{env.victim}", headers=headers),
            c.post(f"/runs/{env.victim}/cancel", headers=headers),
            c.post(f"/runs/{env.victim}/resume", json={"value": "yes"}, headers=headers),
            c.post(f"/runs/{env.victim}/ticket", headers=headers),
            send(c, "GET", f"/runs/{env.victim}/events", headers={**headers, "Last-Event-ID": "1"}),
            c.get("/whoami", headers=headers),
        ]
        for resp in tries:
            assert_refused(resp, status, code)
        after = c.get("/runs", params={"limit": 200}, headers=env.admin).json()["runs"]
        victim_after = c.get(f"/runs/{env.victim}", headers=env.admin).json()
    assert [r["run_id"] for r in after] == [r["run_id"] for r in before]
    assert victim_after == victim_before  # still interrupted, not a seq more


def test_no_credential_challenge_is_plain_bearer(hs: Env) -> None:
    """No credential: 401 unauthenticated with exactly `WWW-Authenticate: Bearer realm="thoughtstream"`."""
    r = httpx.get(f"{hs.url}/runs")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="thoughtstream"'
    assert err(r)["code"] == "unauthenticated"


# ----------------------------------------------------------------------------- open endpoints


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/"])
@pytest.mark.parametrize("cred", ["none", "bad"])
def test_open_endpoints_need_no_credential(hs: Env, path: str, cred: str) -> None:
    """/healthz, /readyz, /openapi.json and the viewer answer 200 without a credential, and a bad one is ignored there."""
    headers = {} if cred == "none" else bearer("not-a-jwt")
    r = httpx.get(hs.url + path, headers=headers)
    assert r.status_code == 200, r.text
    assert "www-authenticate" not in r.headers


def test_every_operation_with_a_role_refuses_the_anonymous(hs: Env) -> None:
    """Every OpenAPI operation declaring x-role answers 401 without a credential; only health and the document are open."""
    doc = httpx.get(f"{hs.url}/openapi.json").json()
    open_ops, guarded = [], []
    with httpx.Client(base_url=hs.url, timeout=10) as c:
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                url = path.replace("{run_id}", hs.victim)
                if "x-role" not in op:
                    open_ops.append(f"{method.upper()} {path}")
                    continue
                guarded.append(op["x-role"])
                assert {"bearer": []} in op["security"] and 401 in map(int, op["responses"]), op
                r = send(c, method.upper(), url, json={} if method == "post" else None)
                assert_refused(r, 401, "unauthenticated")
    assert sorted(open_ops) == ["GET /healthz", "GET /openapi.json", "GET /readyz"]
    assert set(guarded) == {"viewer", "member", "admin", "authenticated"}


# ----------------------------------------------------------------------------- cross-tenant


def _same_shape(resp: httpx.Response, run_id: str) -> tuple[int, dict[str, Any], str | None, str | None]:
    body = resp.json()
    body["error"]["message"] = body["error"]["message"].replace(run_id, "<id>")
    return resp.status_code, body, resp.headers.get("content-type"), resp.headers.get("www-authenticate")


CROSS_TENANT = [
    ("GET", "/runs/{id}", None, {}),
    ("GET", "/runs/{id}/events", None, {}),
    ("GET", "/runs/{id}/events", None, {"Last-Event-ID": "3"}),
    ("POST", "/runs/{id}/cancel", None, {}),
    ("POST", "/runs/{id}/resume", {"value": "yes"}, {}),
    ("POST", "/runs/{id}/ticket", None, {}),
]


@pytest.mark.parametrize("method,path,body,extra", CROSS_TENANT,
                         ids=["get", "events", "events_resume", "cancel", "resume", "ticket"])
def test_another_tenants_run_is_a_404_like_a_missing_one(hs: Env, method: str, path: str,
                                                          body: Any, extra: dict[str, str]) -> None:
    """Tenant B (member) gets 404 not_found on tenant A's run, the same body as for a run that does not exist; A's run is untouched."""
    other = hs.tokens.h(tenant="globex", sub="bob")  # type: ignore[attr-defined]
    missing = uuid.uuid4().hex
    with httpx.Client(base_url=hs.url, timeout=20) as c:
        before = c.get(f"/runs/{hs.victim}", headers=hs.admin).json()
        theirs = send(c, method, path.format(id=hs.victim), json=body, headers={**other, **extra})
        nobody = send(c, method, path.format(id=missing), json=body, headers={**other, **extra})
        after = c.get(f"/runs/{hs.victim}", headers=hs.admin).json()
    assert theirs.status_code == 404 and err(theirs)["code"] == "not_found", text_of(theirs)
    assert _same_shape(theirs, hs.victim) == _same_shape(nobody, missing)
    assert after == before and after["status"] == "interrupted" and after["tenant"] == "acme"


async def test_an_admin_of_another_tenant_reaches_every_run(hs: Env) -> None:
    """An admin (tenant ops) reads, watches, tickets and cancels tenant acme's run; its own runs are of tenant ops."""
    async with client_of(hs, hs.tokens.h(tenant="acme")) as member, client_of(hs, hs.admin) as admin:
        run_id = await start(member, input={"count": 200, "interval_s": 0.05})
        assert (await status_of(admin, run_id))["tenant"] == "acme"
        w = await watch(admin, run_id, stop_after=2)
        assert w.status == 200 and seqs(w.events) == [1, 2]
        assert (await admin.post(f"/runs/{run_id}/ticket")).status_code == 200
        r = await admin.post(f"/runs/{run_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        own = await start(admin)
        assert (await status_of(admin, own))["tenant"] == "ops"
        assert (await member.get(f"/runs/{own}")).status_code == 404


async def test_lists_show_only_the_callers_tenant_and_admins_see_all(hs: Env) -> None:
    """GET /runs lists only the caller's tenant (a ?tenant= of another is empty); an admin lists every tenant and can filter by ?tenant=."""
    tag = uuid.uuid4().hex[:8]
    acme, globex = f"acme-{tag}", f"globex-{tag}"
    async with client_of(hs, hs.tokens.h(tenant=acme)) as a, \
            client_of(hs, hs.tokens.h(tenant=globex, sub="bob")) as b, \
            client_of(hs, hs.admin) as admin:
        run_a, run_b = await start(a), await start(b)
        listed_a, listed_b = await run_ids(a), await run_ids(b)
        assert listed_a == [run_a] and listed_b == [run_b]
        assert await run_ids(a, tenant=globex) == []
        assert await run_ids(a, tenant=acme) == [run_a]
        everything = await run_ids(admin)
        assert {run_a, run_b, hs.victim} <= set(everything)
        assert await run_ids(admin, tenant=acme) == [run_a]
        assert await run_ids(admin, tenant=globex) == [run_b]
        r = await admin.get("/runs", params={"tenant": "no spaces allowed"})
        assert r.status_code == 400 and err(r)["code"] == "bad_query"
        rows = (await admin.get("/runs", params={"tenant": acme})).json()["runs"]
        assert [(row["tenant"], row["sub"]) for row in rows] == [(acme, "alice")]


async def test_idempotency_key_is_scoped_per_tenant(hs: Env) -> None:
    """The same Idempotency-Key from tenants A and B makes two runs; A repeating it gets A's run back."""
    key = f"idem-{uuid.uuid4().hex}"
    body = {"agent": "ticker", "input": {"count": 1, "interval_s": 0.0}}
    async with client_of(hs, hs.tokens.h(tenant="acme")) as a, \
            client_of(hs, hs.tokens.h(tenant="globex", sub="bob")) as b, client_of(hs, hs.admin) as admin:
        ra = await a.post("/runs", json=body, headers={"Idempotency-Key": key})
        rb = await b.post("/runs", json=body, headers={"Idempotency-Key": key})
        again = await a.post("/runs", json=body, headers={"Idempotency-Key": key})
        assert ra.status_code == rb.status_code == again.status_code == 202
        assert ra.json()["created"] and rb.json()["created"] and not again.json()["created"]
        assert ra.json()["run_id"] != rb.json()["run_id"]
        assert again.json()["run_id"] == ra.json()["run_id"]
        owners = [((await status_of(admin, r.json()["run_id"]))["tenant"]) for r in (ra, rb)]
        assert owners == ["acme", "globex"]
        assert (await b.get(f"/runs/{ra.json()['run_id']}")).status_code == 404


# ----------------------------------------------------------------------------- roles


ALL = {"viewer", "member", "admin"}
ROLE_CASES = [
    ("viewer", ["viewer"], {"viewer"}),
    ("member", ["member"], {"viewer", "member"}),
    ("admin", ["admin"], ALL),
    ("no_roles_claim", None, {"viewer", "member"}),
    ("space_separated_string", "viewer member", {"viewer", "member"}),
    ("unknown_role_only", ["superuser"], set()),
    ("empty_list", [], set()),
]


@pytest.mark.parametrize("roles,holds", [c[1:] for c in ROLE_CASES], ids=[c[0] for c in ROLE_CASES])
async def test_role_matrix(hs: Env, roles: Any, holds: set[str]) -> None:
    """viewer: list/read/watch/ticket; member: + start, cancel, resume; admin: + revoke; no roles claim = member; else 403 forbidden and nothing changes."""
    async with client_of(hs, hs.admin) as admin, \
            client_of(hs, hs.tokens.h(tenant="acme", sub=f"u-{uuid.uuid4().hex[:6]}", roles=roles)) as me:
        # Both of tenant acme (an admin's own runs would be of its tenant, ops).
        running, waiting = await asyncio.gather(
            _acme_run(hs), asyncio.to_thread(interrupted_run, hs.url, hs.tokens.h(tenant="acme")))
        try:
            who = await me.get("/whoami")
            assert who.status_code == 200, who.text
            assert set(who.json()["roles"]) == holds and who.json()["via"] == "jwt"

            def expect(resp: httpx.Response, role: str, ok: int) -> bool:
                if role in holds:
                    assert resp.status_code == ok, (role, resp.status_code, resp.text)
                    return True
                assert_refused(resp, 403, "forbidden")
                return False

            expect(await me.get("/runs"), "viewer", 200)
            expect(await me.get(f"/runs/{waiting}"), "viewer", 200)
            expect(await me.get("/agents"), "viewer", 200)
            expect(await me.post(f"/runs/{waiting}/ticket"), "viewer", 200)
            w = await watch(me, waiting, stop_after=3)
            if "viewer" in holds:
                assert w.status == 200 and seqs(w.events) == [1, 2, 3]
            else:
                refused_watch(w, 403, "forbidden")

            count = len(await run_ids(admin))
            started = expect(await me.post("/runs", json={"agent": "ticker", "input": {"count": 1, "interval_s": 0}}),
                             "member", 202)
            assert len(await run_ids(admin)) == count + started

            cancelled = expect(await me.post(f"/runs/{running}/cancel"), "member", 200)
            snap = await status_of(admin, running)
            assert (snap["status"] == "cancelled") if cancelled else (snap["status"] == "running"), snap

            resumed = expect(await me.post(f"/runs/{waiting}/resume", json={"value": "yes"}), "member", 202)
            if resumed:  # 202: the answer is queued; the run leaves `interrupted` when a slot takes it
                await wait_for(admin, waiting, {"running", "succeeded", "failed", "cancelled"})
            else:
                assert (await status_of(admin, waiting))["status"] == "interrupted"

            expect(await me.post("/admin/revoke", json={"sub": f"nobody-{uuid.uuid4().hex}"}), "admin", 200)
        finally:
            for run_id in (running, waiting):
                await admin.post(f"/runs/{run_id}/cancel")


async def _acme_run(hs: Env) -> str:
    async with client_of(hs, hs.tokens.h(tenant="acme", sub="alice")) as c:
        run_id = await start(c, input={"count": 400, "interval_s": 0.05})
        await wait_for(c, run_id, {"running"})
        return run_id


# ----------------------------------------------------------------------------- tickets


async def _ticket_for(c: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    r = await c.post(f"/runs/{run_id}/ticket")
    assert r.status_code == 200, r.text
    assert r.headers.get("cache-control") == "no-store"
    return r.json()


async def test_ticket_opens_and_reopens_its_run_until_it_expires(hs: Env) -> None:
    """A viewer's ticket opens run A's stream, re-opens it with Last-Event-ID, keeps an open stream past its TTL, and then opens nothing (401)."""
    async with client_of(hs, hs.tokens.h(tenant="acme", sub="alice")) as member, \
            client_of(hs, hs.tokens.h(tenant="acme", sub="vera", roles=["viewer"])) as viewer, \
            client_of(hs) as anonymous:
        run_id = await start(member, input=SLOW)
        t = await _ticket_for(viewer, run_id)
        assert t["run_id"] == run_id and t["ticket"].startswith("tkt_")
        assert 0 < t["expires_in"] <= TICKET_TTL_S
        minted = time.monotonic()
        first = await watch(anonymous, run_id, params={"ticket": t["ticket"]}, stop_after=3)
        assert first.status == 200 and seqs(first.events) == [1, 2, 3]
        rest = await watch(anonymous, run_id, params={"ticket": t["ticket"]}, after=first.last_seq)
        assert rest.status == 200 and rest.closed_by_server and not rest.ends
        assert time.monotonic() - minted > TICKET_TTL_S  # the stream outlived the ticket: it only opens
        assert_exact([first.events, rest.events], await full_log(member, run_id))
        late = await watch(anonymous, run_id, params={"ticket": t["ticket"]}, after=first.last_seq)
        refused_watch(late, 401, "invalid_token")


async def test_ticket_is_bound_to_its_run_and_to_streams(hs: Env) -> None:
    """A ticket for run A does not open run B (same tenant), is refused as a Bearer token, as an API key, on POST /runs and on other endpoints (401)."""
    async with client_of(hs, hs.tokens.h(tenant="acme")) as member, client_of(hs) as anonymous, \
            client_of(hs, hs.admin) as admin:
        run_a = await start(member)
        ticket = (await _ticket_for(member, run_a))["ticket"]
        refused_watch(await watch(anonymous, hs.victim, params={"ticket": ticket}), 401, "invalid_token")
        refused_watch(await watch(anonymous, run_a, headers=bearer(ticket)), 401, "invalid_token")
        count = len(await run_ids(admin))
        assert_refused(await anonymous.post("/runs", json={"agent": "ticker", "input": {"count": 1, "interval_s": 0}},
                                            headers=bearer(ticket)), 401, "invalid_token")
        assert_refused(await anonymous.post("/runs", params={"ticket": ticket},
                                            json={"agent": "ticker", "input": {"count": 1, "interval_s": 0}}),
                       401, "unauthenticated")
        assert len(await run_ids(admin)) == count
        assert_refused(await anonymous.get(f"/runs/{run_a}", headers=bearer(ticket)), 401, "invalid_token")
        assert_refused(await anonymous.get(f"/runs/{run_a}", params={"ticket": ticket}), 401, "unauthenticated")
        assert_refused(await anonymous.post(f"/runs/{run_a}/ticket", params={"ticket": ticket}), 401, "unauthenticated")
        assert_refused(await anonymous.get("/whoami", headers={"X-Api-Key": ticket}), 401, "invalid_token")
        refused_watch(await watch(anonymous, run_a, params={"ticket": "tkt_made-up"}), 401, "invalid_token")
        refused_watch(await watch(anonymous, run_a, params={"ticket": "not-even-a-ticket"}), 401, "invalid_token")
        ok = await watch(anonymous, run_a, params={"ticket": ticket})  # and it still opens its own run
        assert ok.status == 200 and ok.closed_by_server and is_terminal(ok.events[-1])


# ----------------------------------------------------------------------------- expiry mid-stream


def _expired_at(w: Watch, exp: float) -> None:
    assert w.status == 200 and w.closed_by_server, w
    assert w.last_was_end and len(w.ends) == 1, w.ends
    event, data, at = w.ends[0]
    assert event == "auth_expired" and data["code"] == "token_expired" and data["message"], w.ends
    assert exp - 0.2 <= at <= exp + 1.0, f"auth_expired at exp{at - exp:+.2f}s"
    assert w.events and not is_terminal(w.events[-1]), "the run should outlive the token"


async def test_stream_ends_at_token_exp_and_resumes_exactly(hs: Env) -> None:
    """A stream opened with a token expiring in 3 s ends with auth_expired by exp (+1 s); an expired resume is 401 token_expired; a new token with Last-Event-ID misses nothing."""
    async with client_of(hs, hs.tokens.h(tenant="acme")) as member:
        run_id = await start(member, input=SLOW)
        short = hs.tokens(tenant="acme", ttl_s=3)
        exp = jwt.decode(short, options={"verify_signature": False})["exp"]
        first = await watch(member, run_id, headers=bearer(short), timeout=10)
        _expired_at(first, exp)
        stale = await watch(member, run_id, headers=bearer(short), after=first.last_seq)
        refused_watch(stale, 401, "token_expired")
        rest = await watch(member, run_id, headers=hs.tokens.h(tenant="acme"), after=first.last_seq)
        assert rest.status == 200 and rest.closed_by_server and not rest.ends
        assert_exact([first.events, rest.events], await full_log(member, run_id))


async def test_ticket_stream_ends_at_the_minting_tokens_exp(hs: Env) -> None:
    """A ticket minted by a token expiring in 3 s opens a stream that ends with auth_expired at that exp; a new ticket and ?last_event_id= resume exactly."""
    async with client_of(hs, hs.tokens.h(tenant="acme")) as member, client_of(hs) as anonymous:
        run_id = await start(member, input=SLOW)
        short = hs.tokens(tenant="acme", ttl_s=3)
        exp = jwt.decode(short, options={"verify_signature": False})["exp"]
        r = await anonymous.post(f"/runs/{run_id}/ticket", headers=bearer(short))
        assert r.status_code == 200 and r.json()["expires_in"] <= 3, r.text
        ticket = r.json()["ticket"]
        first = await watch(anonymous, run_id, params={"ticket": ticket}, timeout=10)
        _expired_at(first, exp)
        stale = await watch(anonymous, run_id, params={"ticket": ticket}, after=first.last_seq)
        assert stale.status == 401 and json.loads(stale.body)["error"]["code"] in {"invalid_token", "token_expired"}
        fresh = (await _ticket_for(member, run_id))["ticket"]
        rest = await watch(anonymous, run_id, params={"ticket": fresh, "last_event_id": str(first.last_seq)})
        assert rest.status == 200 and rest.closed_by_server and not rest.ends
        assert_exact([first.events, rest.events], await full_log(member, run_id))


# ----------------------------------------------------------------------------- revocation


def _revoked_within(w: Watch, revoked_at: float, limit_s: float = 1.0) -> None:
    assert w.status == 200 and w.closed_by_server and w.last_was_end, w
    event, data, at = w.ends[-1]
    assert event == "auth_revoked" and data["code"] == "revoked", w.ends
    assert at - revoked_at <= limit_s, f"auth_revoked {at - revoked_at:.2f}s after the revocation"


async def _revoke(admin: httpx.AsyncClient, **body: str) -> tuple[float, float]:
    """POST /admin/revoke; returns (when the request was sent, the server's ``at``)."""
    sent = time.time()
    r = await admin.post("/admin/revoke", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["revoked"] == body and abs(doc["at"] - sent) < 2, doc
    return sent, doc["at"]


async def _until_events(*tasks_and_counts: tuple[list[dict[str, Any]], int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not all(len(got) >= n for got, n in tasks_and_counts):
        assert time.monotonic() < deadline, "streams did not start"
        await asyncio.sleep(0.02)


async def _live_watch(c: httpx.AsyncClient, run_id: str, headers: dict[str, str], sink: Watch) -> Watch:
    """Like watch(), but fills ``sink`` as it goes (so a test can act mid-stream)."""
    async with aconnect_sse(c, "GET", f"/runs/{run_id}/events", headers=headers) as source:
        sink.status = source.response.status_code
        if sink.status != 200:
            sink.body = await source.response.aread()
            return sink
        async with asyncio.timeout(20):
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue
                data = json.loads(sse.data)
                if "seq" in data:
                    sink.events.append(data)
                else:
                    sink.ends.append((sse.event, data, time.time()))
        sink.closed_by_server = True
        sink.last_was_end = bool(sink.ends)
    return sink


@contextlib.asynccontextmanager
async def background(*coros: Any) -> AsyncIterator[list[asyncio.Task[Watch]]]:
    """Tasks that cannot outlive the test, whatever it asserts."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def ended(task: asyncio.Task[Watch], within: float) -> Watch:
    done, _ = await asyncio.wait({task}, timeout=within)
    assert done, f"the stream was still open {within}s later"
    return task.result()


async def test_revoking_a_sub_cuts_its_streams_and_later_tokens_work(hs: Env, admin: httpx.AsyncClient) -> None:
    """POST /admin/revoke {sub}: that sub's open stream ends with auth_revoked within 1 s, its tokens and tickets get 401; another sub's stream runs on; a token issued later works and resumes exactly."""
    victim, bystander = f"rev-{uuid.uuid4().hex[:8]}", f"by-{uuid.uuid4().hex[:8]}"
    tv = hs.tokens(tenant="acme", sub=victim)
    tv_no_iat = hs.tokens(tenant="acme", sub=victim, iat=None)
    async with client_of(hs, bearer(tv)) as mine:
        run_id = await start(mine, input={"count": 30, "interval_s": 0.1})
        ticket = (await _ticket_for(mine, run_id))["ticket"]
        cut, other = Watch(0), Watch(0)
        async with background(_live_watch(mine, run_id, bearer(tv), cut),
                              _live_watch(mine, run_id, hs.tokens.h(tenant="acme", sub=bystander), other)) as tasks:
            await _until_events((cut.events, 2), (other.events, 2))
            sent, at = await _revoke(admin, sub=victim)
            _revoked_within(await ended(tasks[0], 3), sent)
            assert_refused(await mine.get(f"/runs/{run_id}"), 401, "invalid_token")
            assert_refused(await mine.get(f"/runs/{run_id}", headers=bearer(tv_no_iat)), 401, "invalid_token")
            refused_watch(await watch(mine, run_id, params={"ticket": ticket}, after=cut.last_seq),
                          401, "invalid_token")
            await asyncio.sleep(max(0.0, math.floor(at) + 1 - time.time()) + 0.05)  # iat is whole seconds
            later = hs.tokens(tenant="acme", sub=victim)
            assert jwt.decode(later, options={"verify_signature": False})["iat"] > at
            assert (await mine.get(f"/runs/{run_id}", headers=bearer(later))).status_code == 200
            no_iat_later = hs.tokens(tenant="acme", sub=victim, iat=None)
            # no iat: every token of the sub stays refused
            assert_refused(await mine.get(f"/runs/{run_id}", headers=bearer(no_iat_later)), 401, "invalid_token")
            rest = await watch(mine, run_id, headers=bearer(later), after=cut.last_seq)
            await ended(tasks[1], 15)
        assert other.closed_by_server and not other.ends and is_terminal(other.events[-1])
        log = await full_log(admin, run_id)
        assert other.events == log
        assert_exact([cut.events, rest.events], log)


async def test_revoking_a_jti_cuts_only_that_token(hs: Env, admin: httpx.AsyncClient) -> None:
    """POST /admin/revoke {jti}: that token's stream ends with auth_revoked within 1 s and it gets 401; the same sub's other token keeps working."""
    sub = f"jti-{uuid.uuid4().hex[:8]}"
    jti_a = uuid.uuid4().hex
    ta, tb = hs.tokens(tenant="acme", sub=sub, jti=jti_a), hs.tokens(tenant="acme", sub=sub)
    async with client_of(hs, bearer(tb)) as c:
        run_id = await start(c, input={"count": 30, "interval_s": 0.1})
        cut, kept = Watch(0), Watch(0)
        async with background(_live_watch(c, run_id, bearer(ta), cut),
                              _live_watch(c, run_id, bearer(tb), kept)) as tasks:
            await _until_events((cut.events, 2), (kept.events, 2))
            sent, _ = await _revoke(admin, jti=jti_a)
            _revoked_within(await ended(tasks[0], 3), sent)
            assert_refused(await c.get(f"/runs/{run_id}", headers=bearer(ta)), 401, "invalid_token")
            assert (await c.get(f"/runs/{run_id}")).status_code == 200
            assert (await c.get("/whoami", headers=bearer(hs.tokens(tenant="acme", sub=sub)))).status_code == 200
            await ended(tasks[1], 15)
        assert kept.closed_by_server and not kept.ends and kept.events == await full_log(c, run_id)


@pytest.mark.parametrize("body", [{}, {"sub": "a", "jti": "b"}, {"sub": ""}, {"sub": 5}, {"who": "a"}],
                         ids=["empty", "both", "blank", "not_a_string", "unknown_field"])
async def test_revoke_needs_exactly_one_of_sub_and_jti(admin: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """POST /admin/revoke with neither, both, or a bad sub/jti is 422 invalid_request."""
    r = await admin.post("/admin/revoke", json=body)
    assert r.status_code == 422 and err(r)["code"] == "invalid_request", r.text
