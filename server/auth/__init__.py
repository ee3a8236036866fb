"""Identity and isolation: who is calling (JWT, API keys, stream tickets), what their
roles allow, and the open streams to end when a credential expires or is revoked."""

from .caller import ADMIN, AUTHENTICATED, MEMBER, VIEWER, AuthError, Caller
from .identity import DEFAULT_TENANT, LOCAL_CALLER, Authenticator, Identity, from_settings
from .sessions import EXPIRED, REVOKED, Session, Sessions
from .store import AuthStore, MemoryAuthStore, RedisAuthStore

__all__ = ["ADMIN", "AUTHENTICATED", "DEFAULT_TENANT", "EXPIRED", "LOCAL_CALLER", "MEMBER", "REVOKED", "VIEWER", "AuthError",
           "AuthStore", "Authenticator", "Caller", "Identity", "MemoryAuthStore", "RedisAuthStore", "Session",
           "Sessions", "from_settings"]
