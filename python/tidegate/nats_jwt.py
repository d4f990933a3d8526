"""NATS v2 JWTs and nkeys: what operator mode (`tidegate nats setup --auth jwt`) signs.

A JWT here is the one nats-server checks: header `{"typ":"JWT","alg":"ed25519-nkey"}`, the
claims `iat`, `iss` (the signer's public nkey), `sub` (whom it describes), `name`, `jti` and a
`nats` object (`type` and the claims of that type), signed with the issuer's ed25519 nkey.
nats-jwt would do this, but it pins an old pytz; the encoding is a few lines.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

import nkeys

# Limits of -1 are "unlimited" in nats-server's claims.
UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
_HEADER = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ed25519-nkey"}').decode().rstrip("=")


def new_key(prefix: int) -> nkeys.KeyPair:
    """A fresh nkey of the kind `prefix` names (nkeys.PREFIX_BYTE_OPERATOR, _ACCOUNT, _USER)."""
    return nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), prefix))


def from_seed(seed: str) -> nkeys.KeyPair:
    """The key pair a stored seed (`S...`) stands for."""
    return nkeys.from_seed(bytearray(seed.encode()))


def seed(key: nkeys.KeyPair) -> str:
    """The key's seed, to store (it signs: whoever has it acts as the key)."""
    return str(key.seed.decode())


def public(key: nkeys.KeyPair) -> str:
    """The key's public nkey (`O...`, `A...`, `U...`)."""
    return str(key.public_key.decode())


def encode(signer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, Any], iat: int) -> str:
    """A JWT about `subject` with the `nats` claims given, issued at `iat` by `signer`."""
    body: dict[str, Any] = {"iat": iat, "iss": public(signer), "name": name, "sub": subject}
    body["nats"] = {**claims, "version": 2}
    # nats-server does not check the JWT id; nats-jwt's is a hash of the claims, so is this one.
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature: bytes = signer.sign(f"{_HEADER}.{payload}".encode())
    return f"{_HEADER}.{payload}.{_b64(signature)}"


def claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (not verified: for reading back what tidegate signed)."""
    payload = token.split(".")[1]
    out: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return out


def user_claims(permissions: dict[str, Any], connection_type: str) -> dict[str, Any]:
    """A user's claims from nats-server config permissions (`publish`/`subscribe` with
    `allow`/`deny`), allowed only on one connection type (`STANDARD` or `MQTT`)."""
    return {
        "type": "user",
        **UNLIMITED,
        "pub": permissions.get("publish", {}),
        "sub": permissions.get("subscribe", {}),
        "allowed_connection_types": [connection_type],
    }


def creds(user_jwt: str, user: nkeys.KeyPair) -> str:
    """A `.creds` file: the user JWT and its seed, as nats-py's `user_credentials` reads it."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed(user)}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
