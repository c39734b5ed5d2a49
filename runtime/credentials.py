"""Bearer tokens stored as SHA-256 digests and checked in constant time: the gateway's keys and the trainer's
tokens use this one piece.

A presented token is hashed and compared with every configured digest by `hmac.compare_digest`, so neither a match
nor a miss returns early. Random keys of 32 bytes make a plain hash the right tool (there is nothing to guess).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TypeVar

KEY_PREFIX = "kdg-"
T = TypeVar("T")


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def identify(token: str | None, known: tuple[tuple[bytes, T], ...]) -> T | None:
    """Who `token` is among `known` (digest, who) pairs, every digest compared; None for no token or no match."""
    if token is None:
        return None
    presented = digest(token)
    found = None
    for candidate, who in known:
        if hmac.compare_digest(presented, candidate) and found is None:
            found = who
    return found


def new_key() -> tuple[str, str]:
    """A fresh random key and its SHA-256 hex digest (what a configuration stores)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def bearer(headers) -> str | None:
    """The bearer token of an ASGI scope's headers, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None
