"""Tokens and API keys: generated at random, stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def hash_secret(secret: str | bytes) -> bytes:
    """SHA-256 of a token or API key: the only form stored."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).digest()


def secret_matches(secret: str | bytes, stored_hash: bytes) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_secret() -> str:
    """A random 256-bit token, URL-safe."""
    return secrets.token_urlsafe(32)
