"""Verifying JWTs with PyJWT: a shared secret, a public key, or a JWKS.

The algorithm is never taken from the token. A secret verifies HS256 only; a PEM key
verifies the one algorithm of its type (RSA: RS256, EC P-256: ES256, P-384: ES384,
Ed25519: EdDSA); a JWKS key the same, by its type. So ``alg: none`` and the classic
confusion (an HS256 token "signed" with the RSA public key as its secret) both fail.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWKClient

from .caller import invalid_token, token_expired

log = logging.getLogger(__name__)

JWKS_CACHE_S = 300


class JwtConfigError(ValueError):
    """The server's JWT settings cannot work (told at start, not at the first request)."""


def algorithm_of(key: Any) -> str:
    """The one algorithm a public key verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
        raise JwtConfigError(f"EC curve {key.curve.name} is not supported (use P-256 or P-384)")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise JwtConfigError(f"{type(key).__name__} keys are not supported (use RSA, EC or Ed25519)")


def load_public_key(path: Path) -> tuple[Any, str]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JwtConfigError(f"cannot read the JWT public key {path}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise JwtConfigError(f"{path} is not a PEM public key") from None
    return key, algorithm_of(key)


class JwtVerifier:
    """Checks a token and returns its claims, or raises ``AuthError`` (401)."""

    def __init__(self, *, secret: str | None = None, public_key: Path | None = None,
                 jwks_url: str | None = None, audience: str | None = None,
                 issuer: str | None = None, leeway_s: float = 0.0, jwks_refetch_s: float = 10.0) -> None:
        given = [name for name, v in (("secret", secret), ("public key", public_key),
                                      ("JWKS URL", jwks_url)) if v]
        if len(given) != 1:
            raise JwtConfigError("auth jwt needs exactly one of THOUGHTSTREAM_JWT_SECRET, "
                                 "THOUGHTSTREAM_JWT_PUBLIC_KEY or THOUGHTSTREAM_JWT_JWKS_URL"
                                 + (f" (got {', '.join(given)})" if given else ""))
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self._static: tuple[Any, str] | None = None
        self._jwks: PyJWKClient | None = None
        if secret:
            if len(secret.encode()) < 32:
                # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits).
                raise JwtConfigError("THOUGHTSTREAM_JWT_SECRET must be at least 32 bytes")
            self._static = (secret.encode(), "HS256")
        elif public_key:
            self._static = load_public_key(Path(public_key))
        else:
            assert jwks_url
            # cooldown: a stream of made-up kids must not become a stream of requests to
            # the identity provider.
            self._jwks = PyJWKClient(jwks_url, cache_keys=False, cache_jwk_set=True,
                                     lifespan=JWKS_CACHE_S, timeout=5, cooldown_duration=jwks_refetch_s)

    @property
    def kind(self) -> str:
        if self._jwks is not None:
            return "jwks"
        return "secret" if self._static and self._static[1] == "HS256" else "public key"

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise invalid_token("the token is not a JWT") from None
        if self._static is not None:
            key, algorithm = self._static
        else:
            key, algorithm = await self._jwks_key(header.get("kid"))
        if header.get("alg") != algorithm:
            raise invalid_token(f"tokens must be signed with {algorithm}, not {str(header.get('alg'))[:20]!r}")
        options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        try:
            return jwt.decode(token, key, algorithms=[algorithm], audience=self.audience,
                              issuer=self.issuer, leeway=self.leeway_s, options=options)
        except jwt.ExpiredSignatureError:
            raise token_expired("the token has expired (exp); get a new one") from None
        except jwt.MissingRequiredClaimError as exc:
            raise invalid_token(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise invalid_token("the token is not for this audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise invalid_token("the token is not from the expected issuer (iss)") from None
        except jwt.ImmatureSignatureError:
            raise invalid_token("the token is not valid yet (nbf/iat)") from None
        except jwt.InvalidTokenError as exc:
            raise invalid_token(f"the token does not verify: {type(exc).__name__}") from None

    async def _jwks_key(self, kid: Any) -> tuple[Any, str]:
        if not isinstance(kid, str) or not kid:
            raise invalid_token("the token names no key (kid); this server verifies tokens by kid")
        assert self._jwks is not None
        try:
            # In a thread: PyJWKClient fetches with blocking urllib. An unknown kid refetches
            # the set (a key rotated in), at most once per cooldown.
            key = await asyncio.to_thread(self._jwks.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS fetch failed: %s", exc)
            raise invalid_token("the signing keys (JWKS) could not be fetched") from None
        except jwt.PyJWKClientError:
            raise invalid_token(f"unknown signing key {kid[:64]!r}") from None
        try:
            return key.key, algorithm_of(key.key)
        except JwtConfigError as exc:
            raise invalid_token(f"key {kid[:64]!r}: {exc}") from None
