"""Dashboard sessions and CSRF tokens: HMAC-signed, nothing kept in server memory.

The session cookie holds the token's *hash* (never the token), a random nonce and an
expiry, signed with the server secret. Each request looks the hash up in the store
again, so revoking a token ends its sessions at once. The CSRF token of a form is
HMAC(secret, nonce): a page from another site cannot read it, and the cookie is
``SameSite=Strict`` and ``HttpOnly`` besides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

COOKIE = "conveyor_session"
LOGIN_COOKIE = "conveyor_login"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    nonce: str
    expires: float


def _mac(secret: bytes, data: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, data, hashlib.sha256).digest()).decode()


def sign(secret: bytes, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    return f"{body.decode()}.{_mac(secret, body)}"


def unsign(secret: bytes, value: str | None) -> dict[str, Any] | None:
    if not value or value.count(".") != 1 or len(value) > 4096:
        return None
    body, mac = value.split(".")
    if not hmac.compare_digest(mac, _mac(secret, body.encode())):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body.encode()))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def new_session(secret: bytes, token_hash: str, now: float | None = None) -> str:
    expires = (time.time() if now is None else now) + SESSION_SECONDS
    return sign(secret, {"h": token_hash, "n": secrets.token_urlsafe(16), "exp": expires})


def read_session(secret: bytes, value: str | None, now: float | None = None) -> Session | None:
    data = unsign(secret, value)
    if data is None:
        return None
    try:
        session = Session(str(data["h"]), str(data["n"]), float(data["exp"]))
    except (KeyError, TypeError, ValueError):
        return None
    return session if session.expires > (time.time() if now is None else now) else None


def csrf_token(secret: bytes, nonce: str) -> str:
    return _mac(secret, b"csrf:" + nonce.encode())


def csrf_ok(secret: bytes, nonce: str, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given, csrf_token(secret, nonce))
