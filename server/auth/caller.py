"""Who is calling, what they may do, and how a refusal is told."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

VIEWER, MEMBER, ADMIN = "viewer", "member", "admin"
ROLES = (VIEWER, MEMBER, ADMIN)
AUTHENTICATED = "authenticated"  # not a role: any valid credential, whatever its roles
# Each role includes the ones before it: a member may do what a viewer may.
_IMPLIES = {VIEWER: {VIEWER}, MEMBER: {VIEWER, MEMBER}, ADMIN: {VIEWER, MEMBER, ADMIN}}
DEFAULT_ROLES = (MEMBER,)  # a credential that names no roles (DESIGN.md, "Identity")

# Tenants end up in storage keys and metric labels: keep them to a plain alphabet.
TENANT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MAX_SUB = 256

WWW_AUTHENTICATE = 'Bearer realm="thoughtstream"'


class AuthError(Exception):
    """A request refused for its credential (401) or its role (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail: dict[str, Any] = {}
        if status == 401:
            # RFC 6750: a bad credential says so in the challenge; a missing one only asks.
            challenge = WWW_AUTHENTICATE if code == "unauthenticated" else f'{WWW_AUTHENTICATE}, error="invalid_token"'
            self.headers = {"WWW-Authenticate": challenge}
        else:
            self.headers = {}


def unauthenticated(message: str = "this endpoint needs a credential: "
                    "Authorization: Bearer <token> or X-Api-Key: <key>") -> AuthError:
    return AuthError(401, "unauthenticated", message)


def invalid_token(message: str) -> AuthError:
    return AuthError(401, "invalid_token", message)


def token_expired(message: str = "the credential has expired; get a new one") -> AuthError:
    return AuthError(401, "token_expired", message)


def forbidden(role: str) -> AuthError:
    return AuthError(403, "forbidden", f"this needs the {role!r} role")


def expand_roles(roles: Iterable[str]) -> frozenset[str]:
    """The roles a caller holds, with what each implies; unknown role names grant nothing."""
    out: set[str] = set()
    for role in roles:
        out |= _IMPLIES.get(role, set())
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant that owns what they touch, their subject, their roles,
    and the credential they came with (its kind, expiry and id, for cutting streams off)."""

    tenant: str
    sub: str
    roles: frozenset[str] = frozenset()
    via: str = "none"  # none | jwt | api_key (a ticket carries the credential that minted it)
    exp: float | None = None
    iat: float | None = None
    jti: str | None = None

    def can(self, role: str) -> bool:
        return role in self.roles

    def require(self, role: str) -> Caller:
        if role != AUTHENTICATED and role not in self.roles:
            raise forbidden(role)
        return self

    @property
    def scope(self) -> str | None:
        """The tenant this caller's lookups are confined to; None for an admin (every tenant)."""
        return None if ADMIN in self.roles else self.tenant

    def expired(self, now: float | None = None) -> bool:
        return self.exp is not None and (now if now is not None else time.time()) >= self.exp

    def describe(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "sub": self.sub, "roles": sorted(self.roles), "via": self.via,
                "expires_at": self.exp}
