"""API keys for curl and scripts: a JSON file of ``{sha256(key): {tenant, roles, name}}``.

Only hashes are stored, so the file is not a list of secrets. A key is 32 random bytes,
so a plain SHA-256 is enough (a slow password hash protects guessable secrets; these
are not guessable). The file is re-read when it changes, so ``thoughtstream keys add``
takes effect on a running server within a second or two.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .caller import MAX_SUB, ROLES, TENANT_RE, Caller, expand_roles

log = logging.getLogger(__name__)

KEY_PREFIX = "ts_"
RECHECK_S = 1.0


class KeysFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class KeyEntry:
    tenant: str
    roles: tuple[str, ...]
    name: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse(raw: bytes, where: Path) -> dict[str, KeyEntry]:
    try:
        doc = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise KeysFileError(f"{where} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KeysFileError(f"{where} must be a JSON object of sha256 -> {{tenant, roles, name}}")
    out: dict[str, KeyEntry] = {}
    for h, entry in doc.items():
        label = f"{where}: entry {h[:12]}…"
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise KeysFileError(f"{label}: keys of the file must be lowercase SHA-256 hex digests")
        if not isinstance(entry, dict):
            raise KeysFileError(f"{label}: must be an object {{tenant, roles, name}}")
        tenant, roles, name = entry.get("tenant"), entry.get("roles", ["member"]), entry.get("name", h[:12])
        if not (isinstance(tenant, str) and TENANT_RE.match(tenant)):
            raise KeysFileError(f"{label}: tenant must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
        if isinstance(roles, str):
            roles = roles.replace(",", " ").split()
        if not (isinstance(roles, list) and roles and all(r in ROLES for r in roles)):
            raise KeysFileError(f"{label}: roles must be a non-empty list of {', '.join(ROLES)}")
        if not (isinstance(name, str) and 0 < len(name) <= MAX_SUB - 4):
            raise KeysFileError(f"{label}: name must be a non-empty string")
        out[h] = KeyEntry(tenant, tuple(roles), name)
    return out


class ApiKeys:
    """The keys file, as the server reads it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise KeysFileError(f"cannot read the API keys file {self.path}: {exc.strerror}; "
                                "create keys with `thoughtstream keys add`") from None
        self._entries = parse(self.path.read_bytes(), self.path)
        self._seen = (stat.st_mtime_ns, stat.st_size)
        self._checked = time.monotonic()
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, key: str) -> Caller | None:
        if time.monotonic() - self._checked >= RECHECK_S:
            await self._reload()
        entry = self._entries.get(digest(key))
        if entry is None:
            return None
        return Caller(entry.tenant, f"key:{entry.name}", expand_roles(entry.roles), via="api_key")

    async def _reload(self) -> None:
        async with self._lock:
            if time.monotonic() - self._checked < RECHECK_S:
                return  # another request just did
            try:
                loaded = await asyncio.to_thread(self._read_if_changed)
            except (OSError, KeysFileError) as exc:
                # Keep serving the keys we have: a half-written or broken file must not lock
                # everyone out (nor let anyone in).
                log.warning("API keys file not reloaded, keeping the %d keys already loaded: %s",
                            len(self._entries), exc)
                loaded = None
            finally:
                self._checked = time.monotonic()
            if loaded is not None:
                self._entries = loaded
                log.info("API keys file %s reloaded: %d keys", self.path, len(loaded))

    def _read_if_changed(self) -> dict[str, KeyEntry] | None:
        stat = self.path.stat()
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return None
        entries = parse(self.path.read_bytes(), self.path)
        self._seen = seen
        return entries


# --------------------------------------------------------------------------- the CLI's side


def _read_doc(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    raw = path.read_bytes()
    parse(raw, path)  # refuse to edit a file the server would refuse
    return orjson.loads(raw) if raw.strip() else {}


def _write_doc(path: Path, doc: dict[str, Any]) -> None:
    """Atomically (a server may be reading it), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".api_keys.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def add_key(path: Path, *, tenant: str, roles: list[str], name: str | None) -> tuple[str, str]:
    """Create a key; store its hash. Returns (key, name): the key exists nowhere else."""
    doc = _read_doc(path)
    names = {e.get("name") for e in doc.values()}
    if name is None:
        name = f"{tenant}-{len(doc) + 1}"
        while name in names:
            name += "x"
    elif name in names:
        raise KeysFileError(f"a key named {name!r} already exists in {path}")
    key = new_key()
    doc[digest(key)] = {"tenant": tenant, "roles": roles, "name": name}
    parse(orjson.dumps(doc), path)  # the same rules as the server
    _write_doc(path, doc)
    return key, name


def list_keys(path: Path) -> list[dict[str, Any]]:
    return [{"name": e.name, "tenant": e.tenant, "roles": list(e.roles), "sha256": h[:12]}
            for h, e in parse(path.read_bytes(), path).items()] if path.exists() else []


def remove_key(path: Path, name: str) -> bool:
    doc = _read_doc(path)
    kept = {h: e for h, e in doc.items() if e.get("name") != name}
    if len(kept) == len(doc):
        return False
    _write_doc(path, kept)
    return True
