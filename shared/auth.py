"""API keys: generated once, stored as sha256, carrying scopes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update

from shared.errors import DomainError, NotFound
from shared.models import ApiKey

SCOPES = (
    "ingest:write", "segments:read", "segments:export", "campaigns:write", "recs:read", "feedback:write",
    "analytics:read", "admin",
)
KEY_PREFIX = "sgr_"


class Unauthorized(DomainError):
    """No key, an unknown key or a revoked key."""

    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    """A valid key without the scope the endpoint needs."""

    status = 403
    code = "forbidden"


class UnknownScope(DomainError):
    """A scope name that segrec does not know."""

    status = 422
    code = "validation_error"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and scopes."""

    key_id: int
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """True when the key has the scope, or is an admin key."""
        return scope in self.scopes or "admin" in self.scopes


def hash_key(raw_key: str) -> str:
    """sha256 of a key. Keys are 256-bit random tokens, so a fast unsalted hash cannot be brute-forced."""
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def parse_scopes(text: str) -> list[str]:
    """Split 'recs:read,segments:read' and check every name."""
    scopes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise UnknownScope(
            f"unknown or missing scopes: {', '.join(unknown) or '(none given)'}",
            {"scopes": [f"choose from {', '.join(SCOPES)}"]},
        )
    return scopes


def create_key(session, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Create a key; returns the stored row and the raw key, which is never stored."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        key_prefix=raw_key[:12],
        key_hash=hash_key(raw_key),
        scopes=",".join(scopes),
        created_at=datetime.now(timezone.utc).replace(tzinfo=None),
    )
    session.add(row)
    session.flush()
    return row, raw_key


def revoke_key(session, key_id: int | None = None, prefix: str | None = None) -> int:
    """Revoke a key by id or by its printed prefix; returns how many keys were revoked."""
    statement = update(ApiKey).where(ApiKey.revoked_at.is_(None))
    if key_id is not None:
        statement = statement.where(ApiKey.id == key_id)
    elif prefix:
        statement = statement.where(ApiKey.key_prefix == prefix[:12])
    else:
        raise NotFound("give a key id or prefix")
    result = session.execute(statement.values(revoked_at=datetime.now(timezone.utc).replace(tzinfo=None)))
    return result.rowcount


def bearer_key_hash(authorization_header: str | None) -> str | None:
    """The stored hash of the key in an 'Authorization: Bearer <key>' header; None when it is not one."""
    if not authorization_header or not authorization_header.startswith("Bearer "):
        return None
    return hash_key(authorization_header[len("Bearer ") :].strip())


class KeyVerifier:
    """Looks keys up by hash, caching answers briefly so serving does not hit the database each request."""

    def __init__(self, database, cache_seconds: float = 30.0) -> None:
        self.database = database
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def _fresh_entry(self, key_hash: str) -> tuple[float, Principal | None] | None:
        """The cached (expiry, caller) of a key hash while it is still fresh, else None."""
        entry = self._cache.get(key_hash)
        if entry is not None and entry[0] > time.monotonic():
            return entry
        return None

    def cached(self, authorization_header: str | None) -> Principal | None:
        """The caller of a key this process verified within the last `cache_seconds`, else None (no I/O)."""
        key_hash = bearer_key_hash(authorization_header)
        entry = self._fresh_entry(key_hash) if key_hash is not None else None
        return entry[1] if entry is not None else None

    def verify(self, authorization_header: str | None) -> Principal:
        """Return the caller for an 'Authorization: Bearer <key>' header or raise Unauthorized."""
        key_hash = bearer_key_hash(authorization_header)
        if key_hash is None:
            raise Unauthorized("send 'Authorization: Bearer <api key>'")
        entry = self._fresh_entry(key_hash)
        if entry is not None:
            principal = entry[1]
        else:
            principal = self._load(key_hash)
            if self.cache_seconds > 0:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[key_hash] = (time.monotonic() + self.cache_seconds, principal)
        if principal is None:
            raise Unauthorized("unknown or revoked api key")
        return principal

    def _load(self, key_hash: str) -> Principal | None:
        with self.database.session() as session:
            row = session.execute(
                select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            ).scalar_one_or_none()
            if row is None:
                return None
            return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")))
