"""Credentials minted by the tests themselves (nothing is checked in): an HS256 secret,
RSA and EC key pairs, an API keys file, and a JWKS served from 127.0.0.1 that can rotate."""

from __future__ import annotations

import hashlib
import http.server
import json
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class Minter:
    """Signs tokens for one key: ``Minter.hs256()``, ``Minter.rs256()``, ``Minter.es256()``."""

    def __init__(self, key: Any, algorithm: str, kid: str | None = None) -> None:
        self.key = key
        self.algorithm = algorithm
        self.kid = kid

    @classmethod
    def hs256(cls) -> Minter:
        return cls(secrets.token_urlsafe(40), "HS256")

    @classmethod
    def rs256(cls, kid: str | None = None) -> Minter:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", kid)

    @classmethod
    def es256(cls, kid: str | None = None) -> Minter:
        return cls(ec.generate_private_key(ec.SECP256R1()), "ES256", kid)

    @property
    def secret(self) -> str:
        assert self.algorithm == "HS256"
        return self.key

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def write_public_pem(self, path: Path) -> Path:
        path.write_bytes(self.public_pem())
        return path

    def jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.RSAAlgorithm if self.algorithm == "RS256" else jwt.algorithms.ECAlgorithm
        out = json.loads(algo.to_jwk(self.key.public_key()))
        out.update({"kid": self.kid, "use": "sig", "alg": self.algorithm})
        return out

    def token(self, *, tenant: str | None = "acme", sub: str = "alice", roles: Any = None,
              ttl_s: float | None = 300, **claims: Any) -> str:
        body: dict[str, Any] = {"sub": sub, "iat": int(time.time()), "jti": uuid.uuid4().hex}
        if tenant is not None:
            body["tenant"] = tenant
        if roles is not None:
            body["roles"] = roles
        if ttl_s is not None:
            body["exp"] = time.time() + ttl_s
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(body, self.key, algorithm=self.algorithm, headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_keys_file(path: Path, keys: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{name: {tenant, roles}}`` -> a keys file; returns ``{name: key}``."""
    doc, out = {}, {}
    for name, entry in keys.items():
        key = "ts_" + secrets.token_urlsafe(32)
        doc[hashlib.sha256(key.encode()).hexdigest()] = {"name": name, **entry}
        out[name] = key
    path.write_text(json.dumps(doc))
    return out


class JwksServer:
    """A JWKS at http://127.0.0.1:<port>/jwks.json; ``keys`` can be swapped (rotation).
    ``fetches`` counts requests, to check the server caches and refetches as it should."""

    def __init__(self, *minters: Minter) -> None:
        self.keys = list(minters)
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.fetches += 1
                body = json.dumps({"keys": [m.jwk() for m in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
