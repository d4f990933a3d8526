"""Operator mode's files and JWTs, without a broker (nats-server is not running: nothing is
pushed, accounts.conf's preload is what it would start with)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import VerifyKey
from tidegate import broker, nats_jwt


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A broker directory set up with `--auth jwt`."""
    broker.setup(tmp_path / "broker", broker.Listeners(), broker.JWT)
    return (tmp_path / "broker").resolve()


def state(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((root / broker.STATE).read_text())
    return out


def verified(token: str, issuer: str) -> dict[str, Any]:
    """The claims of a JWT whose signature `issuer`'s public key verifies."""
    head, body, signature = token.split(".")
    # A public nkey is base32 of a prefix byte, the ed25519 key and a CRC16.
    raw_key = base64.b32decode(issuer + "=" * (-len(issuer) % 8))[1:33]
    raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    VerifyKey(raw_key).verify(f"{head}.{body}".encode(), raw_signature)
    claims = nats_jwt.claims(token)
    assert claims["iss"] == issuer
    return claims


def test_a_device_jwt_is_signed_by_the_account_with_its_own_permissions(root: Path) -> None:
    creds = broker.device_credentials(root, "acme", "d1")
    assert creds["username"] == "acme.d1"
    s = state(root)
    claims = verified(creds["password"], s["account"])
    assert claims["sub"] == s["devices"]["acme.d1"]["key"]
    assert claims["nats"] == {
        "type": "user",
        "subs": -1,
        "data": -1,
        "payload": -1,
        "pub": {"allow": ["tenant.acme.device.d1.*"]},
        "sub": {"deny": [">"]},
        "allowed_connection_types": ["MQTT"],
        "bearer_token": True,
        "version": 2,
    }
    account = verified(s["account_jwt"], nats_jwt.claims(s["operator_jwt"])["iss"])
    assert account["sub"] == s["account"]
    assert account["nats"]["revocations"] == {}


def test_new_credentials_revoke_the_old_ones_under_one_entry_per_device(root: Path) -> None:
    tokens = [broker.device_credentials(root, "acme", "d1")["password"] for _ in range(3)]
    s = state(root)
    key = s["devices"]["acme.d1"]["key"]
    iats = [nats_jwt.claims(t)["iat"] for t in tokens]
    assert iats == sorted(set(iats))  # each later than the last
    # Revoked: every JWT of the key issued at or before the entry; the newest is after it.
    assert s["revocations"] == {key: iats[-1] - 1}
    assert nats_jwt.claims(s["account_jwt"])["nats"]["revocations"] == s["revocations"]
    broker.remove_devices(root, "acme", ["d1", "never-issued"])
    assert state(root)["revocations"] == {key: iats[-1]}


def test_past_the_1_mib_account_jwt_a_revoke_fails_and_changes_nothing(root: Path) -> None:
    broker.device_credentials(root, "acme", "d1")
    s = state(root)
    # ~11,200 revocations fill a 1 MiB JWT; these keys are never seen by a broker.
    s["revocations"] = {f"U{i:055d}": s["account_iat"] for i in range(11_300)}
    (root / broker.STATE).write_text(json.dumps(s))
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    with pytest.raises(broker.BrokerError, match="refuses a JWT over 1048576 bytes"):
        broker.remove_devices(root, "acme", ["d1"])
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_the_config_preloads_the_latest_account_jwt(root: Path) -> None:
    broker.device_credentials(root, "acme", "d1")
    broker.remove_devices(root, "acme", ["d1"])
    s = state(root)
    conf = (root / broker.ACCOUNTS).read_text()
    assert f"operator: {s['operator_jwt']}\n" in conf
    assert json.dumps({s["system"]: s["system_jwt"], s["account"]: s["account_jwt"]}) in conf
    assert f'resolver: {{type: full, dir: "{root / "jwt"}", allow_delete: false}}' in conf
