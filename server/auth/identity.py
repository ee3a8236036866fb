"""Decides who is calling, on every door: HTTP requests, SSE tickets, Socket.IO connects.

Transports only ask (``of_request``, ``of_socket``, ``of_ticket``, ``of_token``) and
check roles on the ``Caller`` they get; every refusal is an ``AuthError``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any, Mapping, Protocol

from .api_keys import ApiKeys
from .caller import (ADMIN, DEFAULT_ROLES, MAX_SUB, MEMBER, TENANT_RE, VIEWER, AuthError, Caller, expand_roles,
                     invalid_token, token_expired, unauthenticated)
from .jwt_keys import JwtVerifier
from .sessions import Sessions
from .store import AuthStore

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
# With no authentication the server trusts whoever reaches its port (loopback by default):
# one tenant, every role.
LOCAL_CALLER = Caller(DEFAULT_TENANT, "local", frozenset({VIEWER, MEMBER, ADMIN}))
TICKET_PREFIX = "tkt_"


class Identity(Protocol):
    async def of_request(self, request: Any) -> Caller: ...

    async def of_socket(self, environ: Mapping[str, Any], auth: Any) -> Caller: ...


def _claim_roles(raw: Any) -> frozenset[str]:
    if raw is None:
        return expand_roles(DEFAULT_ROLES)
    if isinstance(raw, str):
        raw = raw.replace(",", " ").split()
    if not (isinstance(raw, list) and all(isinstance(r, str) for r in raw)):
        raise invalid_token("the roles claim must be a list of role names")
    return expand_roles(raw)


class Authenticator:
    """``mode``: none (everyone is the local caller), jwt (JWTs, and API keys if a keys
    file is given), api_keys (API keys only)."""

    def __init__(self, *, mode: str = "none", jwt: JwtVerifier | None = None, keys: ApiKeys | None = None,
                 tenant_claim: str = "tenant", roles_claim: str = "roles", ticket_ttl_s: float = 60.0,
                 revocation_keep_s: float = 7 * 86400.0, expiring_lead_s: float = 30.0) -> None:
        self.mode = mode
        self.jwt = jwt
        self.keys = keys
        self.tenant_claim = tenant_claim
        self.roles_claim = roles_claim
        self.ticket_ttl_s = ticket_ttl_s
        self.revocation_keep_s = revocation_keep_s
        self.sessions = Sessions(expiring_lead_s)
        self._store: AuthStore | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    async def bind(self, store: AuthStore) -> None:
        """Use the backend's store (the lifespan calls this before serving)."""
        self._store = store
        await store.on_revoke(self.sessions.revoked)

    @property
    def store(self) -> AuthStore:
        if self._store is None:
            raise RuntimeError("the authenticator has no store yet (the lifespan binds it)")
        return self._store

    # ------------------------------------------------------------------ doors

    async def of_request(self, request: Any) -> Caller:
        if not self.enabled:
            return LOCAL_CALLER
        headers = request.headers
        return await self._credential(headers.get("authorization"), headers.get("x-api-key"))

    async def of_socket(self, environ: Mapping[str, Any], auth: Any) -> Caller:
        """The connect ``auth`` payload ({token} or {api_key}); headers for non-browser clients."""
        if not self.enabled:
            return LOCAL_CALLER
        token = key = None
        if isinstance(auth, dict):
            token, key = auth.get("token"), auth.get("api_key")
            if token is not None and not isinstance(token, str) or key is not None and not isinstance(key, str):
                raise invalid_token("auth.token and auth.api_key must be strings")
        if token:
            return await self.of_token(token)
        if key:
            return await self._credential(None, key)
        return await self._credential(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))

    async def of_token(self, token: str) -> Caller:
        """A bare JWT (a Socket.IO connect or ``refresh``)."""
        return await self._credential(f"Bearer {token}", None)

    async def _credential(self, authorization: str | None, api_key: str | None) -> Caller:
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise invalid_token("the Authorization header must be 'Bearer <token>'")
            if token.startswith(TICKET_PREFIX):
                raise invalid_token("a ticket only opens its run's stream: GET /runs/{id}/events?ticket=…")
            if self.jwt is None:
                raise invalid_token("this server takes API keys (X-Api-Key), not bearer tokens")
            caller = self._caller_of(await self.jwt.verify(token))
        elif api_key:
            found = await self.keys.lookup(api_key) if self.keys is not None else None
            if found is None:
                raise invalid_token("unknown API key")
            caller = found
        else:
            raise unauthenticated()
        await self._check_revoked(caller)
        return caller

    def _caller_of(self, claims: dict[str, Any]) -> Caller:
        tenant = claims.get(self.tenant_claim)
        if not (isinstance(tenant, str) and TENANT_RE.match(tenant)):
            raise invalid_token(f"the token's {self.tenant_claim!r} claim must name a tenant "
                                "(1-128 characters of A-Z a-z 0-9 _ . : @ -)")
        sub = claims.get("sub")
        if not (isinstance(sub, str) and 0 < len(sub) <= MAX_SUB):
            raise invalid_token("the token's 'sub' claim must be a non-empty string")
        jti = claims.get("jti")
        iat = claims.get("iat")
        # ``exp`` on the caller is when this server stops taking the token: with a leeway,
        # streams and HTTP agree on the same moment.
        leeway = self.jwt.leeway_s if self.jwt is not None else 0.0
        return Caller(tenant, sub, _claim_roles(claims.get(self.roles_claim)), via="jwt",
                      exp=float(claims["exp"]) + leeway,
                      iat=float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else None,
                      jti=jti if isinstance(jti, str) and jti else None)

    async def _check_revoked(self, caller: Caller) -> None:
        sub_at, jti_at = await self.store.revoked_at(caller.sub, caller.jti)
        if jti_at is not None or (sub_at is not None and (caller.iat is None or caller.iat <= sub_at)):
            raise AuthError(401, "invalid_token", "this credential was revoked")

    # ------------------------------------------------------------------ tickets

    async def mint_ticket(self, caller: Caller, run_id: str) -> tuple[str, int]:
        """A short-lived, opaque ticket that opens one run's SSE stream for this caller.
        Only its hash is stored, so the store never holds a usable ticket."""
        ttl = self.ticket_ttl_s
        if caller.exp is not None:
            ttl = min(ttl, caller.exp - time.time())
        ticket = TICKET_PREFIX + secrets.token_urlsafe(24)
        body = {"run_id": run_id, "tenant": caller.tenant, "sub": caller.sub, "roles": sorted(caller.roles),
                "via": caller.via, "exp": caller.exp, "iat": caller.iat, "jti": caller.jti}
        await self.store.put_ticket(_digest(ticket), body, max(ttl, 0.001))
        return ticket, max(0, int(ttl))

    async def of_ticket(self, ticket: str, run_id: str) -> Caller:
        body = await self.store.get_ticket(_digest(ticket)) if ticket.startswith(TICKET_PREFIX) else None
        if body is None:
            raise invalid_token("the ticket is unknown or expired; POST /runs/{id}/ticket gives a new one")
        if body.get("run_id") != run_id:
            raise invalid_token("this ticket opens another run's stream")
        caller = Caller(body["tenant"], body["sub"], frozenset(body["roles"]), via=body["via"],
                        exp=body["exp"], iat=body["iat"], jti=body["jti"])
        if caller.expired():
            raise token_expired("the credential that minted this ticket has expired")
        if self.enabled:
            await self._check_revoked(caller)
        return caller

    # ------------------------------------------------------------------ revocation

    async def revoke(self, kind: str, value: str) -> float:
        at = time.time()
        await self.store.revoke(kind, value, at, self.revocation_keep_s)
        return at


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def from_settings(settings: Any) -> Authenticator:
    """The authenticator the settings ask for; a setting that cannot work fails here, at start."""
    from .api_keys import KeysFileError
    from .jwt_keys import JwtConfigError

    mode = settings.auth
    keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file and mode != "none" else None
    verifier = None
    if mode == "jwt":
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        verifier = JwtVerifier(secret=secret, public_key=settings.jwt_public_key,
                               jwks_url=settings.jwt_jwks_url, audience=settings.jwt_audience,
                               issuer=settings.jwt_issuer, leeway_s=settings.jwt_leeway_s,
                               jwks_refetch_s=settings.jwt_jwks_refetch_s)
    elif mode == "api_keys" and keys is None:
        raise KeysFileError("auth api_keys needs THOUGHTSTREAM_API_KEYS_FILE (create keys with "
                            "`thoughtstream keys add`)")
    elif mode not in ("none", "api_keys"):
        raise JwtConfigError(f"unknown auth mode {mode!r}: none, jwt or api_keys")
    return Authenticator(mode=mode, jwt=verifier, keys=keys, tenant_claim=settings.jwt_tenant_claim,
                         roles_claim=settings.jwt_roles_claim, ticket_ttl_s=settings.ticket_ttl_s,
                         expiring_lead_s=settings.auth_expiring_s)
