"""server/auth in isolation: JWT verification, claims to callers, roles, tickets,
revocation matching, stream sessions and their timers, API keys files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from server.auth import (ADMIN, AUTHENTICATED, EXPIRED, LOCAL_CALLER, MEMBER, REVOKED, VIEWER, AuthError, Authenticator,
                         Caller, MemoryAuthStore, Sessions, from_settings)
from server.auth import api_keys
from server.auth.api_keys import ApiKeys, KeysFileError, add_key, digest, list_keys, parse, remove_key
from server.auth.caller import expand_roles
from server.auth.jwt_keys import JwtConfigError, JwtVerifier, algorithm_of
from server.config import Settings
from tests.auth_support import Minter, write_keys_file

SECRET = "s" * 40


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hmac_signed(claims: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def good(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "tenant": "acme", "exp": time.time() + 300, "iat": int(time.time()), **extra}


def hs(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


async def refused(coro: Any, code: str = "invalid_token", status: int = 401) -> AuthError:
    with pytest.raises(AuthError) as info:
        await coro
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value


# ----------------------------------------------------------------------------- JwtVerifier


async def test_hs256_token_verifies_to_its_claims() -> None:
    """A well-formed HS256 token signed with the secret verifies and returns its claims."""
    claims = await JwtVerifier(secret=SECRET).verify(hs(good()))
    assert claims["sub"] == "alice" and claims["tenant"] == "acme"


async def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) is invalid_token, whatever its claims."""
    await refused(JwtVerifier(secret=SECRET).verify(jwt.encode(good(), None, algorithm="none")))


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_other_hmac_algorithms_are_refused_even_with_the_right_secret(alg: str) -> None:
    """A secret verifies HS256 only: the algorithm comes from the key, never from the token."""
    err = await refused(JwtVerifier(secret=SECRET).verify(hs(good(), SECRET * 2, alg)))
    assert "HS256" in err.message


@pytest.mark.parametrize("encoding", ["pem", "pem_stripped", "der"])
async def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path, encoding: str) -> None:
    """Algorithm confusion: an HS256 token HMAC'd with the RSA public key's bytes is refused by a public-key verifier."""
    minter = Minter.rs256()
    verifier = JwtVerifier(public_key=minter.write_public_pem(tmp_path / "k.pem"))
    pub = minter.key.public_key()
    secret = {"pem": minter.public_pem(), "pem_stripped": minter.public_pem().strip(),
              "der": pub.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)}[encoding]
    await refused(verifier.verify(hmac_signed(good(), secret)))
    assert (await verifier.verify(minter.token()))["sub"] == "alice"  # the real thing verifies


async def test_public_key_verifier_refuses_other_asymmetric_algorithms(tmp_path: Path) -> None:
    """An RSA key verifies RS256 only (not PS256 of the same key); an EC key ES256 only."""
    rsa_m, ec_m = Minter.rs256(), Minter.es256()
    rsa_v = JwtVerifier(public_key=rsa_m.write_public_pem(tmp_path / "r.pem"))
    ec_v = JwtVerifier(public_key=ec_m.write_public_pem(tmp_path / "e.pem"))
    await refused(rsa_v.verify(jwt.encode(good(), rsa_m.key, algorithm="PS256")))
    await refused(rsa_v.verify(ec_m.token()))
    await refused(ec_v.verify(rsa_m.token()))
    assert (await ec_v.verify(ec_m.token()))["tenant"] == "acme"


@pytest.mark.parametrize("missing", ["exp", "sub"])
async def test_exp_and_sub_are_required(missing: str) -> None:
    """A token without exp, or without sub, is invalid_token naming the claim."""
    claims = good()
    del claims[missing]
    err = await refused(JwtVerifier(secret=SECRET).verify(hs(claims)))
    assert missing in err.message


async def test_expired_token_is_token_expired_and_leeway_is_honoured() -> None:
    """exp in the past is token_expired; within the configured leeway it still verifies."""
    token = hs(good(exp=time.time() - 5))
    err = await refused(JwtVerifier(secret=SECRET).verify(token), "token_expired")
    assert err.headers["WWW-Authenticate"].endswith('error="invalid_token"')
    assert (await JwtVerifier(secret=SECRET, leeway_s=30).verify(token))["sub"] == "alice"


async def test_not_yet_valid_token_is_refused() -> None:
    """A token whose nbf is in the future is invalid_token."""
    await refused(JwtVerifier(secret=SECRET).verify(hs(good(nbf=time.time() + 600))))


@pytest.mark.parametrize("claims,ok", [
    ({"aud": "ts"}, True), ({"aud": ["other", "ts"]}, True), ({"aud": "other"}, False), ({}, False),
], ids=["matching", "in_a_list", "wrong", "absent"])
async def test_audience(claims: dict[str, Any], ok: bool) -> None:
    """With an audience configured, aud must name it (a string or in a list); wrong or absent is invalid_token."""
    verify = JwtVerifier(secret=SECRET, audience="ts").verify(hs(good(**claims)))
    if ok:
        assert await verify
    else:
        await refused(verify)


async def test_audience_is_not_checked_when_none_is_configured() -> None:
    """Without THOUGHTSTREAM_JWT_AUDIENCE a token's aud is not held against it."""
    assert await JwtVerifier(secret=SECRET).verify(hs(good(aud="anything")))


@pytest.mark.parametrize("claims,ok", [({"iss": "https://idp"}, True), ({"iss": "https://evil"}, False), ({}, False)],
                         ids=["matching", "wrong", "absent"])
async def test_issuer(claims: dict[str, Any], ok: bool) -> None:
    """With an issuer configured, iss must equal it; wrong or absent is invalid_token."""
    verify = JwtVerifier(secret=SECRET, issuer="https://idp").verify(hs(good(**claims)))
    if ok:
        assert await verify
    else:
        await refused(verify)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_garbage_is_invalid_token(token: str) -> None:
    """Strings that are not JWTs (or do not verify) are invalid_token, never an exception of another kind."""
    await refused(JwtVerifier(secret=SECRET).verify(token))


@pytest.mark.parametrize("claims", [{"exp": "tomorrow"}, {"iat": "now"}, {"nbf": "later"}, {"jti": 5}],
                         ids=["exp_string", "iat_string", "nbf_string", "jti_number"])
async def test_registered_claims_of_the_wrong_type_are_refused(claims: dict[str, Any]) -> None:
    """exp/iat/nbf that are not numbers, or a jti that is not a string, are invalid_token."""
    await refused(JwtVerifier(secret=SECRET).verify(hs(good(**claims))))


async def test_bad_signature_is_refused() -> None:
    """A token signed with another secret is invalid_token."""
    await refused(JwtVerifier(secret=SECRET).verify(hs(good(), "t" * 40)))


def test_verifier_config_errors(tmp_path: Path) -> None:
    """Exactly one key source; a secret of at least 32 bytes; a readable PEM public key (else JwtConfigError at start)."""
    with pytest.raises(JwtConfigError, match="exactly one"):
        JwtVerifier()
    pem = Minter.rs256().write_public_pem(tmp_path / "k.pem")
    with pytest.raises(JwtConfigError, match="exactly one"):
        JwtVerifier(secret=SECRET, public_key=pem)
    with pytest.raises(JwtConfigError, match="32 bytes"):
        JwtVerifier(secret="x" * 31)
    JwtVerifier(secret="x" * 32)
    with pytest.raises(JwtConfigError, match="cannot read"):
        JwtVerifier(public_key=tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(JwtConfigError, match="not a PEM public key"):
        JwtVerifier(public_key=tmp_path / "junk.pem")
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    (tmp_path / "p521.pem").write_bytes(p521.public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(JwtConfigError, match="not supported"):
        JwtVerifier(public_key=tmp_path / "p521.pem")


def test_algorithm_pinned_by_key_type() -> None:
    """RSA -> RS256, P-256 -> ES256, P-384 -> ES384, Ed25519 -> EdDSA."""
    assert algorithm_of(Minter.rs256().key.public_key()) == "RS256"
    assert algorithm_of(ec.generate_private_key(ec.SECP256R1()).public_key()) == "ES256"
    assert algorithm_of(ec.generate_private_key(ec.SECP384R1()).public_key()) == "ES384"
    assert algorithm_of(ed25519.Ed25519PrivateKey.generate().public_key()) == "EdDSA"


# ----------------------------------------------------------------------------- claims -> Caller


def request(authorization: str | None = None, api_key: str | None = None) -> Any:
    headers = {k: v for k, v in (("authorization", authorization), ("x-api-key", api_key)) if v is not None}
    return SimpleNamespace(headers=headers)


async def authenticator(**kw: Any) -> Authenticator:
    kw.setdefault("jwt", JwtVerifier(secret=SECRET))
    auth = Authenticator(mode=kw.pop("mode", "jwt"), **kw)
    await auth.bind(MemoryAuthStore())
    return auth


async def caller_of(auth: Authenticator, claims: dict[str, Any]) -> Caller:
    return await auth.of_request(request(f"Bearer {hs(claims)}"))


async def test_claims_become_a_caller() -> None:
    """tenant, sub, exp, iat and jti of the token are the caller's; via is jwt."""
    claims = good(jti="j-1", roles=["viewer"])
    c = await caller_of(await authenticator(), claims)
    assert (c.tenant, c.sub, c.via, c.jti, c.roles) == ("acme", "alice", "jwt", "j-1", frozenset({VIEWER}))
    assert c.exp == pytest.approx(claims["exp"]) and c.iat == claims["iat"]


@pytest.mark.parametrize("tenant", [None, "", "acme corp", "x" * 129, 7, ["acme"], "a/b"])
async def test_tenant_claim_is_required_and_plain(tenant: Any) -> None:
    """A missing, empty, non-string or out-of-alphabet tenant claim is invalid_token."""
    claims = good()
    if tenant is None:
        del claims["tenant"]
    else:
        claims["tenant"] = tenant
    await refused(caller_of(await authenticator(), claims))


@pytest.mark.parametrize("tenant", ["a", "acme_1", "org:acme", "a.b-c@d", "x" * 128])
async def test_tenant_alphabet(tenant: str) -> None:
    """Tenants of [A-Za-z0-9_.:@-]{1,128} are accepted."""
    assert (await caller_of(await authenticator(), good(tenant=tenant))).tenant == tenant


@pytest.mark.parametrize("sub", ["", 5, "x" * 257])
async def test_sub_must_be_a_non_empty_string(sub: Any) -> None:
    """An empty, non-string or over-long sub is invalid_token."""
    await refused(caller_of(await authenticator(), good(sub=sub)))


async def test_custom_claim_names() -> None:
    """THOUGHTSTREAM_JWT_TENANT_CLAIM / ROLES_CLAIM pick other claims; the default names then mean nothing."""
    auth = await authenticator(tenant_claim="org", roles_claim="https://example.com/roles")
    c = await caller_of(auth, good(org="globex", tenant="ignored", roles=["admin"],
                                   **{"https://example.com/roles": ["viewer"]}))
    assert (c.tenant, c.roles) == ("globex", frozenset({VIEWER}))
    await refused(caller_of(auth, good()))  # no org claim


@pytest.mark.parametrize("roles,expected", [
    (None, {VIEWER, MEMBER}),
    (["viewer"], {VIEWER}),
    (["member"], {VIEWER, MEMBER}),
    (["admin"], {VIEWER, MEMBER, ADMIN}),
    ("viewer", {VIEWER}),
    ("viewer admin", {VIEWER, MEMBER, ADMIN}),
    ("viewer,member", {VIEWER, MEMBER}),
    (["superuser"], set()),
    (["viewer", "superuser"], {VIEWER}),
    ([], set()),
    ("", set()),
], ids=["absent", "viewer", "member", "admin", "string", "space_separated", "comma_separated", "unknown",
        "unknown_ignored", "empty_list", "empty_string"])
async def test_roles_claim_shapes(roles: Any, expected: set[str]) -> None:
    """roles: absent -> member; a list or a space/comma separated string; each role implies the lesser ones; unknown names grant nothing."""
    claims = good() if roles is None else good(roles=roles)
    assert (await caller_of(await authenticator(), claims)).roles == frozenset(expected)


@pytest.mark.parametrize("roles", [5, {"admin": True}, [1, 2], ["admin", None], True])
async def test_roles_claim_of_another_shape_is_refused(roles: Any) -> None:
    """A roles claim that is neither a string nor a list of strings is invalid_token (not a silent member)."""
    await refused(caller_of(await authenticator(), good(roles=roles)))


@pytest.mark.parametrize("authorization,api_key,code", [
    (None, None, "unauthenticated"),
    ("Basic dXNlcjpwdw==", None, "invalid_token"),
    ("Bearer", None, "invalid_token"),
    ("Token abc", None, "invalid_token"),
    ("Bearer tkt_abc", None, "invalid_token"),
    ("Bearer not-a-jwt", "ts_some-key", "invalid_token"),
    (None, "ts_unknown", "invalid_token"),
], ids=["nothing", "basic", "empty_bearer", "other_scheme", "ticket", "authorization_wins", "unknown_key"])
async def test_credential_parsing(authorization: str | None, api_key: str | None, code: str) -> None:
    """No credential is unauthenticated; a non-Bearer scheme, an empty bearer, a ticket or an unknown key is invalid_token; Authorization wins over X-Api-Key."""
    err = await refused((await authenticator()).of_request(request(authorization, api_key)), code)
    challenge = err.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="thoughtstream"')
    assert ("error=" in challenge) == (code != "unauthenticated")


async def test_bearer_scheme_is_case_insensitive() -> None:
    """`bearer <jwt>` works like `Bearer <jwt>`."""
    assert (await (await authenticator()).of_request(request(f"bearer {hs(good())}"))).sub == "alice"


async def test_api_keys_mode_refuses_bearer_tokens(tmp_path: Path) -> None:
    """In api_keys mode a bearer token is invalid_token (no JWT verifier), an API key works."""
    keys = write_keys_file(tmp_path / "k.json", {"k": {"tenant": "acme", "roles": ["viewer"]}})
    auth = await authenticator(mode="api_keys", jwt=None, keys=ApiKeys(tmp_path / "k.json"))
    await refused(auth.of_request(request(f"Bearer {hs(good())}")))
    c = await auth.of_request(request(None, keys["k"]))
    assert (c.tenant, c.sub, c.via, c.exp) == ("acme", "key:k", "api_key", None)


async def test_auth_none_is_the_local_caller() -> None:
    """mode none: every request, whatever it sends, is tenant default, sub local, all roles."""
    auth = Authenticator(mode="none")
    assert not auth.enabled
    assert await auth.of_request(request("Bearer garbage")) is LOCAL_CALLER
    assert await auth.of_socket({}, None) is LOCAL_CALLER
    assert (LOCAL_CALLER.tenant, LOCAL_CALLER.sub, LOCAL_CALLER.roles) == ("default", "local", {VIEWER, MEMBER, ADMIN})


async def test_socket_auth_payload() -> None:
    """Socket.IO connects: auth {token} or {api_key}; non-string values are invalid_token; nothing is unauthenticated."""
    auth = await authenticator()
    assert (await auth.of_socket({}, {"token": hs(good())})).sub == "alice"
    await refused(auth.of_socket({}, {"token": 5}))
    await refused(auth.of_socket({}, {"api_key": ["x"]}))
    await refused(auth.of_socket({}, {}), "unauthenticated")
    assert (await auth.of_socket({"HTTP_AUTHORIZATION": f"Bearer {hs(good())}"}, None)).sub == "alice"


# ----------------------------------------------------------------------------- roles


def test_roles_and_scope() -> None:
    """require() raises 403 forbidden for a missing role (never for AUTHENTICATED); admins are scoped to no tenant."""
    viewer = Caller("acme", "v", expand_roles(["viewer"]))
    assert viewer.require(VIEWER) is viewer and viewer.require(AUTHENTICATED) is viewer
    with pytest.raises(AuthError) as info:
        viewer.require(MEMBER)
    assert (info.value.status, info.value.code, info.value.headers) == (403, "forbidden", {})
    assert Caller("acme", "n").require(AUTHENTICATED)  # no roles at all still authenticated
    assert viewer.scope == "acme" and Caller("ops", "r", expand_roles(["admin"])).scope is None
    assert expand_roles(["member"]) == {VIEWER, MEMBER}
    assert Caller("a", "b", exp=time.time() - 1).expired() and not Caller("a", "b").expired()


# ----------------------------------------------------------------------------- revocation


async def test_sub_revocation_matches_by_iat() -> None:
    """A sub revocation refuses that sub's tokens issued at or before it, and those without iat; later ones and other subs pass."""
    auth = await authenticator()
    now = int(time.time())
    await auth.store.revoke("sub", "alice", now - 20.0, auth.revocation_keep_s)  # a revocation 20 s ago
    await refused(caller_of(auth, good(iat=now - 30)))
    await refused(caller_of(auth, good(iat=now - 20)))  # at the same second: refused
    no_iat = good()
    del no_iat["iat"]
    await refused(caller_of(auth, no_iat))
    assert await caller_of(auth, good(iat=now - 10))
    assert await caller_of(auth, good(sub="bob", iat=now - 30))


async def test_jti_revocation_matches_only_that_token() -> None:
    """A jti revocation refuses the token with that jti, not the sub's other tokens."""
    auth = await authenticator()
    await auth.revoke("jti", "j-1")
    await refused(caller_of(auth, good(jti="j-1")))
    assert await caller_of(auth, good(jti="j-2"))
    assert await caller_of(auth, good())


async def test_api_key_sub_revocation_refuses_the_key(tmp_path: Path) -> None:
    """An API key (no iat) is refused once its sub key:<name> is revoked."""
    keys = write_keys_file(tmp_path / "k.json", {"ci": {"tenant": "acme", "roles": ["member"]}})
    auth = await authenticator(keys=ApiKeys(tmp_path / "k.json"))
    assert await auth.of_request(request(None, keys["ci"]))
    await auth.revoke("sub", "key:ci")
    await refused(auth.of_request(request(None, keys["ci"])))


async def test_memory_store_revocations_expire_after_keep_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A revocation is remembered for keep_s (the longest token lifetime that matters), then forgotten."""
    store = MemoryAuthStore()
    clock = [1000.0]
    monkeypatch.setattr("server.auth.store.time.monotonic", lambda: clock[0])
    await store.revoke("sub", "alice", 5.0, keep_s=60)
    assert await store.revoked_at("alice", None) == (5.0, None)
    clock[0] += 61
    assert await store.revoked_at("alice", None) == (None, None)


# ----------------------------------------------------------------------------- tickets


async def test_ticket_round_trip_and_binding() -> None:
    """A ticket opens its run for its caller (same tenant, sub, roles, exp); another run or a made-up ticket is invalid_token."""
    auth = await authenticator(ticket_ttl_s=60)
    caller = await caller_of(auth, good(roles=["viewer"], jti="j"))
    ticket, expires_in = await auth.mint_ticket(caller, "run-a")
    assert ticket.startswith("tkt_") and 58 <= expires_in <= 60
    back = await auth.of_ticket(ticket, "run-a")
    assert back == caller
    await refused(auth.of_ticket(ticket, "run-b"))
    await refused(auth.of_ticket("tkt_nope", "run-a"))
    await refused(auth.of_ticket(hs(good()), "run-a"))


async def test_ticket_lives_no_longer_than_its_ttl_or_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """expires_in is min(ticket TTL, the minting token's remaining life); past it the ticket is unknown."""
    auth = await authenticator(ticket_ttl_s=60)
    short = await caller_of(auth, good(exp=time.time() + 10))
    _, expires_in = await auth.mint_ticket(short, "r")
    assert 8 <= expires_in <= 10
    ticket, _ = await auth.mint_ticket(await caller_of(auth, good()), "r")
    real = time.monotonic
    monkeypatch.setattr("server.auth.store.time.monotonic", lambda: real() + 61)
    await refused(auth.of_ticket(ticket, "r"))


async def test_ticket_of_an_expired_or_revoked_credential_is_refused() -> None:
    """A ticket still stored but whose minting token has expired is token_expired; one of a revoked sub is invalid_token."""
    auth = await authenticator(ticket_ttl_s=60)
    ticket, _ = await auth.mint_ticket(Caller("acme", "alice", expand_roles(["viewer"]), via="jwt",
                                              exp=time.time() + 0.2), "r")
    await asyncio.sleep(0.01)
    # Stored under its SHA-256 with the ticket's own TTL; make it outlive the token to see the exp check.
    digest_ = hashlib.sha256(ticket.encode()).hexdigest()
    body = await auth.store.get_ticket(digest_)
    assert body is not None and ticket not in json.dumps(body)  # the store never holds the ticket itself
    await auth.store.put_ticket(digest_, {**body, "exp": time.time() - 1}, 60)
    await refused(auth.of_ticket(ticket, "r"), "token_expired")
    other, _ = await auth.mint_ticket(Caller("acme", "bob", expand_roles(["viewer"]), via="jwt",
                                             exp=time.time() + 60, iat=time.time() - 5), "r")
    assert await auth.of_ticket(other, "r")
    await auth.revoke("sub", "bob")
    await refused(auth.of_ticket(other, "r"))


# ----------------------------------------------------------------------------- sessions


class Ends:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.expiring: list[float] = []
        self.at: list[float] = []

    def end(self, why: str) -> None:
        self.reasons.append(why)
        self.at.append(time.time())

    def warn(self, exp: float) -> None:
        self.expiring.append(exp)


async def test_session_ends_at_exp_with_a_warning_before() -> None:
    """A session ends with auth_expired at its caller's exp; on_expiring fires expiring_lead_s before."""
    sessions, ends = Sessions(expiring_lead_s=0.2), Ends()
    exp = time.time() + 0.4
    sessions.open(Caller("a", "s", exp=exp), ends.end, ends.warn)
    assert len(sessions) == 1
    await asyncio.sleep(0.3)
    assert ends.expiring == [exp] and ends.reasons == []
    await asyncio.sleep(0.25)
    assert ends.reasons == [EXPIRED] and exp - 0.05 <= ends.at[0] <= exp + 0.2
    assert len(sessions) == 0


async def test_session_already_expired_ends_at_once_and_without_exp_never() -> None:
    """A caller already past exp ends on the next loop turn; a caller without exp (API key) has no timer; no warning when the lead is longer than the life left."""
    sessions, ends, forever = Sessions(expiring_lead_s=30), Ends(), Ends()
    sessions.open(Caller("a", "s", exp=time.time() - 1), ends.end, ends.warn)
    sessions.open(Caller("a", "k"), forever.end, forever.warn)
    await asyncio.sleep(0.05)
    assert ends.reasons == [EXPIRED] and ends.expiring == []
    assert forever.reasons == [] and len(sessions) == 1


async def test_closed_session_never_fires() -> None:
    """close() cancels the timers and unindexes: no auth_expired and no revocation reaches it."""
    sessions, ends = Sessions(expiring_lead_s=0.05), Ends()
    s = sessions.open(Caller("a", "s", exp=time.time() + 0.1, jti="j"), ends.end, ends.warn)
    s.close()
    await asyncio.sleep(0.2)
    assert sessions.revoked({"kind": "jti", "value": "j", "at": time.time()}) == 0
    assert ends.reasons == [] and ends.expiring == [] and len(sessions) == 0


async def test_renew_moves_the_deadline_and_the_index() -> None:
    """renew() with a new credential cancels the old deadline, arms the new one and reindexes by the new jti."""
    sessions, ends = Sessions(expiring_lead_s=0), Ends()
    s = sessions.open(Caller("a", "s", exp=time.time() + 0.1, jti="old"), ends.end)
    s.renew(Caller("a", "s", exp=time.time() + 0.4, jti="new"))
    await asyncio.sleep(0.2)
    assert ends.reasons == []
    assert sessions.revoked({"kind": "jti", "value": "old", "at": time.time()}) == 0
    assert sessions.revoked({"kind": "jti", "value": "new", "at": time.time()}) == 1
    assert ends.reasons == [REVOKED]
    s.renew(Caller("a", "s", exp=time.time() + 0.05))  # renewing an ended session does nothing
    await asyncio.sleep(0.1)
    assert ends.reasons == [REVOKED]


async def test_revocation_matching_of_sessions() -> None:
    """A sub revocation ends that sub's sessions issued at or before it (and those without iat); a jti one only that token; each at most once."""
    sessions = Sessions()
    at = time.time()
    older, newer, no_iat, other, by_jti = Ends(), Ends(), Ends(), Ends(), Ends()
    sessions.open(Caller("a", "alice", iat=at - 10, jti="1"), older.end)
    sessions.open(Caller("a", "alice", iat=at + 10, jti="2"), newer.end)
    sessions.open(Caller("a", "alice"), no_iat.end)
    sessions.open(Caller("a", "bob", iat=at - 10), other.end)
    sessions.open(Caller("a", "carol", iat=at - 10, jti="c1"), by_jti.end)
    assert sessions.revoked({"kind": "sub", "value": "alice", "at": at}) == 2
    assert (older.reasons, newer.reasons, no_iat.reasons, other.reasons) == ([REVOKED], [], [REVOKED], [])
    assert sessions.revoked({"kind": "sub", "value": "alice", "at": at}) == 0  # already ended
    assert sessions.revoked({"kind": "jti", "value": "c1", "at": at - 100}) == 1  # a jti: whenever issued
    assert by_jti.reasons == [REVOKED] and len(sessions) == 2


@pytest.mark.parametrize("message", [{}, {"kind": "sub", "value": "alice"}, {"kind": "sub", "value": 5, "at": 1.0},
                                     {"kind": "tenant", "value": "alice", "at": 1e12},
                                     {"kind": "sub", "value": "alice", "at": "now"}])
async def test_malformed_revocation_messages_end_nothing(message: dict[str, Any]) -> None:
    """A revocation message without a string value, a numeric at or a known kind ends no session."""
    sessions, ends = Sessions(), Ends()
    sessions.open(Caller("a", "alice", jti="alice"), ends.end)
    assert sessions.revoked(message) == 0
    assert ends.reasons == [] and len(sessions) == 1


async def test_a_failing_callback_does_not_stop_the_sweep(caplog: pytest.LogCaptureFixture) -> None:
    """One stream's callback raising does not keep the revocation from the other streams."""
    sessions, ends = Sessions(), Ends()

    def boom(why: str) -> None:
        raise RuntimeError("transport gone")

    sessions.open(Caller("a", "alice"), boom)
    sessions.open(Caller("a", "alice"), ends.end)
    with caplog.at_level(logging.ERROR):
        assert sessions.revoked({"kind": "sub", "value": "alice", "at": time.time()}) == 2
    assert ends.reasons == [REVOKED] and len(sessions) == 0


async def test_store_revocations_reach_bound_sessions() -> None:
    """Authenticator.revoke goes through the store to its listener: matching open sessions end."""
    auth, ends = await authenticator(), Ends()
    auth.sessions.open(Caller("a", "alice", iat=time.time() - 1), ends.end)
    await auth.revoke("sub", "alice")
    assert ends.reasons == [REVOKED]


# ----------------------------------------------------------------------------- API keys files


def entry(**kw: Any) -> dict[str, Any]:
    return {"tenant": "acme", "roles": ["member"], "name": "ci", **kw}


H = "a" * 64


def test_parse_a_keys_file() -> None:
    """A JSON object of sha256 -> {tenant, roles, name}; roles may be a comma string; name and roles have defaults; empty is no keys."""
    got = parse(json.dumps({H: entry(), "b" * 64: {"tenant": "t", "roles": "viewer,member"},
                            "c" * 64: {"tenant": "t"}}).encode(), Path("f"))
    assert got[H].tenant == "acme" and got[H].roles == ("member",) and got[H].name == "ci"
    assert got["b" * 64].roles == ("viewer", "member") and got["b" * 64].name == "b" * 12
    assert got["c" * 64].roles == ("member",)
    assert parse(b"", Path("f")) == {} and parse(b"  \n", Path("f")) == {} and parse(b"{}", Path("f")) == {}


@pytest.mark.parametrize("raw,words", [
    (b"{", "not JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"A" * 64: entry()}).encode(), "lowercase SHA-256"),
    (json.dumps({"abc": entry()}).encode(), "lowercase SHA-256"),
    (json.dumps({H: "acme"}).encode(), "must be an object"),
    (json.dumps({H: entry(tenant="acme corp")}).encode(), "tenant"),
    (json.dumps({H: {"roles": ["member"]}}).encode(), "tenant"),
    (json.dumps({H: entry(roles=["root"])}).encode(), "roles"),
    (json.dumps({H: entry(roles=[])}).encode(), "roles"),
    (json.dumps({H: entry(roles=5)}).encode(), "roles"),
    (json.dumps({H: entry(name="")}).encode(), "name"),
    (json.dumps({H: entry(name=5)}).encode(), "name"),
], ids=["not_json", "not_object", "uppercase_hash", "short_hash", "entry_not_object", "bad_tenant", "no_tenant",
        "unknown_role", "no_roles", "roles_not_list", "empty_name", "name_not_string"])
def test_parse_refuses_bad_keys_files(raw: bytes, words: str) -> None:
    """Every malformed keys file is a KeysFileError naming the file and what is wrong."""
    with pytest.raises(KeysFileError, match=words) as info:
        parse(raw, Path("/etc/keys.json"))
    assert "/etc/keys.json" in str(info.value)


async def test_api_keys_lookup(tmp_path: Path) -> None:
    """A known key is its entry's caller (sub key:<name>, roles implied, no exp); an unknown one None."""
    keys = write_keys_file(tmp_path / "k.json", {"ci": {"tenant": "acme", "roles": ["member"]}})
    ak = ApiKeys(tmp_path / "k.json")
    c = await ak.lookup(keys["ci"])
    assert c is not None
    assert (c.tenant, c.sub, c.via, c.exp, c.roles) == ("acme", "key:ci", "api_key", None, {VIEWER, MEMBER})
    assert await ak.lookup("ts_nope") is None and len(ak) == 1


def test_api_keys_file_must_exist(tmp_path: Path) -> None:
    """A missing keys file is a KeysFileError at start, pointing at `thoughtstream keys add`."""
    with pytest.raises(KeysFileError, match="keys add"):
        ApiKeys(tmp_path / "missing.json")


async def test_api_keys_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    """The file is re-read when it changed (after RECHECK_S); a broken rewrite keeps the loaded keys; a fixed one is loaded."""
    monkeypatch.setattr(api_keys, "RECHECK_S", 0.0)
    path = tmp_path / "k.json"
    first = write_keys_file(path, {"one": {"tenant": "acme", "roles": ["viewer"]}})
    ak = ApiKeys(path)
    assert await ak.lookup(first["one"])
    second = write_keys_file(path, {"two": {"tenant": "acme", "roles": ["viewer"]}})
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a new mtime, whatever the clock's grain
    assert await ak.lookup(second["two"]) and await ak.lookup(first["one"]) is None
    path.write_text("{broken")
    os.utime(path, ns=(time.time_ns() + 2 * 10**9,) * 2)
    with caplog.at_level(logging.WARNING, logger="server.auth.api_keys"):
        assert await ak.lookup(second["two"])
    assert "not reloaded" in caplog.text
    third = write_keys_file(path, {"three": {"tenant": "acme", "roles": ["viewer"]}})
    os.utime(path, ns=(time.time_ns() + 3 * 10**9,) * 2)
    assert await ak.lookup(third["three"]) and await ak.lookup(second["two"]) is None


async def test_api_keys_are_not_reread_within_recheck_s(tmp_path: Path) -> None:
    """Within RECHECK_S of the last check a changed file is not read again (lookups stay cheap)."""
    path = tmp_path / "k.json"
    write_keys_file(path, {"one": {"tenant": "acme", "roles": ["viewer"]}})
    ak = ApiKeys(path)
    fresh = write_keys_file(path, {"two": {"tenant": "acme", "roles": ["viewer"]}})
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    assert await ak.lookup(fresh["two"]) is None  # just loaded: not re-checked yet
    ak._checked -= api_keys.RECHECK_S  # as if a second had passed
    assert await ak.lookup(fresh["two"]) is not None


def test_add_list_remove_keys(tmp_path: Path) -> None:
    """add_key stores only the SHA-256 (file 0600), default names are unique, duplicates are refused; remove_key drops by name."""
    path = tmp_path / "sub" / "keys.json"
    key1, name1 = add_key(path, tenant="acme", roles=["viewer"], name=None)
    key2, name2 = add_key(path, tenant="acme", roles=["member"], name=None)
    assert name1 != name2 and key1 != key2 and key1.startswith("ts_")
    raw = path.read_text()
    assert key1 not in raw and key2 not in raw and digest(key1) in json.loads(raw)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeysFileError, match="already exists"):
        add_key(path, tenant="acme", roles=["viewer"], name=name1)
    with pytest.raises(KeysFileError, match="tenant"):
        add_key(path, tenant="bad tenant", roles=["viewer"], name="x")
    assert sorted((e["name"], e["roles"]) for e in list_keys(path)) == [(name1, ["viewer"]), (name2, ["member"])]
    assert remove_key(path, name1) and not remove_key(path, name1)
    assert [e["name"] for e in list_keys(path)] == [name2]
    assert list_keys(tmp_path / "none.json") == []
    assert not list(path.parent.glob(".api_keys.*"))  # no temporary files left behind


def test_cli_helpers_refuse_to_edit_a_broken_file(tmp_path: Path) -> None:
    """add_key/remove_key on a file the server would refuse raise KeysFileError and leave it as it was."""
    path = tmp_path / "keys.json"
    path.write_text('{"nothex": {}}')
    with pytest.raises(KeysFileError):
        add_key(path, tenant="acme", roles=["viewer"], name="x")
    with pytest.raises(KeysFileError):
        remove_key(path, "x")
    assert path.read_text() == '{"nothex": {}}'


# ----------------------------------------------------------------------------- settings


def test_from_settings(tmp_path: Path) -> None:
    """none needs nothing; jwt needs one key source; api_keys needs a keys file; what cannot work fails at start."""
    assert not from_settings(Settings(auth="none")).enabled
    auth = from_settings(Settings(auth="jwt", jwt_secret=SECRET, jwt_audience="ts", ticket_ttl_s=5))
    assert auth.enabled and auth.jwt is not None and auth.jwt.audience == "ts" and auth.ticket_ttl_s == 5
    with pytest.raises(JwtConfigError):
        from_settings(Settings(auth="jwt"))
    with pytest.raises(JwtConfigError, match="32 bytes"):
        from_settings(Settings(auth="jwt", jwt_secret="short"))
    with pytest.raises(KeysFileError, match="THOUGHTSTREAM_API_KEYS_FILE"):
        from_settings(Settings(auth="api_keys"))
    with pytest.raises(KeysFileError):
        from_settings(Settings(auth="api_keys", api_keys_file=tmp_path / "missing.json"))
    write_keys_file(tmp_path / "k.json", {"k": {"tenant": "t", "roles": ["viewer"]}})
    assert from_settings(Settings(auth="api_keys", api_keys_file=tmp_path / "k.json")).keys is not None
    # With auth none a keys file is not even read: nobody is checked.
    assert from_settings(Settings(auth="none", api_keys_file=tmp_path / "missing.json")).keys is None
