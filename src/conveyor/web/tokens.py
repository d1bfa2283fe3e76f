"""API tokens: created by ``conveyor token create``, stored hashed in the store.

A token is 32 random bytes (``cvy_`` + URL-safe base64). Only its SHA-256 is stored, as
the key of a ``token`` record, so a copy of the store does not let anyone in; the
plaintext is printed once at creation. Because the token carries 256 bits of entropy,
an unsalted fast hash is enough (there is nothing to brute-force), and the lookup by
hash needs no secret comparison; the stored hash is still compared in constant time
as a second check.

Every server process, on any machine, reads the same records, so a token works (and a
revocation applies) everywhere at once. This module needs no web dependency: the CLI
uses it too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from conveyor.backends.base import Backend

KIND = "token"
PREFIX = "cvy_"
#: Characters of the hash shown as the token's id (``token list``, ``token revoke``).
ID_LENGTH = 12
_MAX_TOKEN = 200


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token grants. ``tenant`` None with ``admin``: every tenant."""

    id: str
    tenant: str | None
    admin: bool
    name: str | None
    created_at: float

    def to_json(self, token_hash: str) -> str:
        return json.dumps(
            {
                "hash": token_hash,
                "tenant": self.tenant,
                "admin": self.admin,
                "name": self.name,
                "created_at": self.created_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, token_hash: str, text: str) -> TokenInfo:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=token_hash[:ID_LENGTH],
            tenant=data.get("tenant") or None,
            admin=bool(data.get("admin")),
            name=data.get("name"),
            created_at=float(data.get("created_at") or 0.0),
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(
    backend: Backend, *, tenant: str | None, admin: bool, name: str | None = None
) -> tuple[str, TokenInfo]:
    """A new token (the plaintext, shown once) and what it grants."""
    if not admin and not tenant:
        raise ValueError("a token that is not --admin needs a --tenant")
    if tenant is not None and (not tenant or len(tenant) > 200):
        raise ValueError("tenant must be a non-empty string of at most 200 characters")
    token = PREFIX + secrets.token_urlsafe(32)
    token_hash = hash_token(token)
    info = TokenInfo(
        id=token_hash[:ID_LENGTH], tenant=tenant, admin=admin, name=name, created_at=time.time()
    )
    await backend.put_record(KIND, token_hash, info.to_json(token_hash))
    return token, info


async def find_token(backend: Backend, token: str) -> TokenInfo | None:
    """What ``token`` grants, or None if it is unknown or revoked."""
    if not token.startswith(PREFIX) or len(token) > _MAX_TOKEN:
        return None
    token_hash = hash_token(token)
    text = await backend.get_record(KIND, token_hash)
    if text is None:
        return None
    stored = str(json.loads(text).get("hash", ""))
    if not hmac.compare_digest(stored.encode(), token_hash.encode()):
        return None
    return TokenInfo.from_json(token_hash, text)


async def find_token_by_hash(backend: Backend, token_hash: str) -> TokenInfo | None:
    """For dashboard sessions, which hold the hash rather than the token."""
    text = await backend.get_record(KIND, token_hash)
    return None if text is None else TokenInfo.from_json(token_hash, text)


async def list_tokens(backend: Backend) -> list[TokenInfo]:
    found = [TokenInfo.from_json(h, text) for h, text in await backend.list_records(KIND)]
    return sorted(found, key=lambda t: t.created_at)


async def revoke_token(backend: Backend, token_id: str) -> TokenInfo:
    """Delete the token whose id (a prefix of its hash, at least 8 characters) is given.

    Raises ``LookupError`` when no token or more than one token matches.
    """
    token_id = token_id.strip().lower()
    if len(token_id) < 8:
        raise LookupError("give at least 8 characters of the token id (see `token list`)")
    matches = [(h, t) for h, t in await backend.list_records(KIND) if h.startswith(token_id)]
    if not matches:
        raise LookupError(f"no token with id {token_id!r}")
    if len(matches) > 1:
        raise LookupError(f"{len(matches)} tokens match {token_id!r}; give more characters")
    token_hash, text = matches[0]
    await backend.delete_record(KIND, token_hash)
    return TokenInfo.from_json(token_hash, text)
