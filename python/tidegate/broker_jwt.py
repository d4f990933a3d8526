"""Operator mode (`tidegate nats setup --auth jwt`): who may connect is decided by JWTs tidegate
signs, not by a users file nats-server re-reads.

Setup writes, besides the config (all mode 0600):
- the seeds of the operator, the system account and the TIDEGATE account (`*.nk`): whoever
  reads the account seed can mint device credentials;
- `edge.creds`, `worker.creds`: user JWT + nkey seed, the same permissions as the users file's
  `edge` and `worker`; `admin.creds`: a system-account user that may only push account updates;
- `accounts.conf`: the operator JWT, a full resolver (account JWTs kept under `DIR/jwt`, updated
  by a push on `$SYS.REQ.CLAIMS.UPDATE`) and the two account JWTs preloaded.

A device's credentials are a bearer user JWT (the MQTT password; the user name is not checked)
signed by the account key: nats-server verifies it at connect, so issuing one touches nothing on
the broker. Each device keeps one user key; revoking it (or issuing new credentials, which
revokes the old ones) adds `user key: time` to the account JWT's revocations and pushes the
account, which closes the device's connections and refuses every JWT of that key issued at or
before that time. A JWT is limited to 1 MiB, so an account holds ~11,200 revocations; past that
a revoke fails (docs/nats-security.md).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nkeys

from tidegate import broker_access as access
from tidegate.nats_jwt import creds, encode, from_seed, new_key, public, seed, user_claims

OPERATOR_SEED = "operator.nk"
SYSTEM_SEED = "system.nk"
ACCOUNT_SEED = "account.nk"
ADMIN_CREDS = "admin.creds"
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
# nats-server refuses a JWT over 1 MiB (a revocation entry takes ~93 bytes of it).
MAX_JWT_BYTES = 1 << 20
# Clients keep nats-server's default message size limit: the server's own is raised only so
# that the system account can push an account JWT of up to 1 MiB.
_CLIENT_PAYLOAD = 1 << 20
ACCOUNT_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": _CLIENT_PAYLOAD,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    # Non-zero JetStream limits turn JetStream on for the account (MQTT needs it too).
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}
_SYSTEM_LIMITS = {"subs": -1, "data": -1, "payload": -1, "conn": -1, "wildcards": True}
_PUSH_TIMEOUT_S = 10.0


def setup(root: Path, state: dict[str, Any], env: dict[str, str]) -> dict[str, dict[str, str]]:
    """New keys, service credentials and account JWTs into `root` and `state` (written by the
    caller); the edge's and worker's environment, `env` plus their `.creds`."""
    operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
    system = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    for name, key in ((OPERATOR_SEED, operator), (SYSTEM_SEED, system), (ACCOUNT_SEED, account)):
        access.write_private(root / name, seed(key) + "\n")
    now = int(time.time())
    op_claims = {"type": "operator", "system_account": public(system)}
    sys_claims = {"type": "account", "limits": _SYSTEM_LIMITS}
    admin = {"publish": {"allow": [CLAIMS_UPDATE]}, "subscribe": {"allow": ["_INBOX.>"]}}
    services = {
        access.EDGE_USER: (account, access.edge_permissions()),
        access.WORKER_USER: (account, access.worker_permissions()),
        "admin": (system, admin),
    }
    for user, (issuer, permissions) in services.items():
        key = new_key(nkeys.PREFIX_BYTE_USER)
        token = encode(issuer, public(key), user, user_claims(permissions, "STANDARD"), now)
        access.write_private(root / f"{user}.creds", creds(token, key))
    state.update(
        auth=access.JWT,
        url=env["NATS_URL"],
        tls_ca=env.get("NATS_TLS_CA"),
        operator_jwt=encode(operator, public(operator), "tidegate", op_claims, now),
        system=public(system),
        system_jwt=encode(operator, public(system), "SYS", sys_claims, now),
        account=public(account),
        account_iat=now - 1,
        revocations={},
    )
    sign_account(root, state)
    return {
        role: {**env, "NATS_CREDS": str(root / f"{role}.creds")}
        for role in (access.EDGE_USER, access.WORKER_USER)
    }


def sign_account(root: Path, state: dict[str, Any]) -> None:
    """Re-sign the TIDEGATE account JWT with the state's revocations (a later `iat` than the
    last one: the resolver keeps the newest)."""
    iat = max(int(time.time()), state["account_iat"] + 1)
    claims = {
        "type": "account",
        "limits": ACCOUNT_LIMITS,
        "revocations": state["revocations"],
    }
    operator = from_seed((root / OPERATOR_SEED).read_text().strip())
    token = encode(operator, state["account"], access.ACCOUNT, claims, iat)
    if len(token) > MAX_JWT_BYTES:
        raise access.BrokerError(
            f"the {access.ACCOUNT} account JWT would be {len(token)} bytes with "
            f"{len(state['revocations'])} revocations: nats-server refuses a JWT over "
            f"{MAX_JWT_BYTES} bytes (docs/nats-security.md)"
        )
    state["account_iat"] = iat
    state["account_jwt"] = token


def device_credentials(root: Path, state: dict[str, Any], tenant: str, device: str) -> str:
    """A bearer JWT for the device; any earlier one of it revoked (in `state`)."""
    name = access.device_user(tenant, device)
    entry = state["devices"].get(name)
    if entry is None:
        entry = {"key": public(new_key(nkeys.PREFIX_BYTE_USER)), "iat": 0}
        state["devices"][name] = entry
        iat = int(time.time())
    else:
        # Revocations are in whole seconds and cover JWTs issued at or before them: the new
        # JWT is dated after the revocation of the old one (nats-server takes a JWT dated in
        # the coming second at once).
        iat = _revoke(state, entry) + 1
        sign_account(root, state)
    entry["iat"] = iat
    claims = user_claims(access.device_permissions(tenant, device), "MQTT")
    claims["bearer_token"] = True
    account = from_seed((root / ACCOUNT_SEED).read_text().strip())
    return encode(account, entry["key"], name, claims, iat)


def remove_devices(root: Path, state: dict[str, Any], tenant: str, devices: list[str]) -> None:
    """Revoke the devices' JWTs (in `state`); their user keys stay, so one device never takes
    more than one revocation entry."""
    changed = False
    for device in devices:
        entry = state["devices"].get(access.device_user(tenant, device))
        if entry is not None:
            _revoke(state, entry)
            changed = True
    if changed:
        sign_account(root, state)


def _revoke(state: dict[str, Any], entry: dict[str, Any]) -> int:
    at: int = max(int(time.time()), entry["iat"])
    state["revocations"][entry["key"]] = at
    return at


def accounts_conf(root: Path, state: dict[str, Any]) -> str:
    """The operator, the resolver and the accounts it starts with (the latest account JWT, so
    a restart never goes back to an older one)."""
    q = json.dumps
    preload = {state["system"]: state["system_jwt"], state["account"]: state["account_jwt"]}
    return (
        "# Written by tidegate: do not edit.\n"
        "# An account JWT (up to 1 MiB) is one message to the resolver; clients are held to\n"
        "# 1 MiB by their account's limits.\n"
        "max_payload: 2MB\n"
        f"operator: {state['operator_jwt']}\n"
        f"system_account: {state['system']}\n"
        f"resolver: {{type: full, dir: {q(str(root / 'jwt'))}, allow_delete: false}}\n"
        "resolver_preload: " + q(preload) + "\n"
    )


def push(root: Path, state: dict[str, Any]) -> None:
    """Send the account JWT to a running nats-server as the admin user; its revocations close
    the revoked devices' connections."""
    if access.running_pid(root) is None:
        return  # not running: it loads accounts.conf's preload when it starts
    asyncio.run(_push(root, state))


async def _push(root: Path, state: dict[str, Any]) -> None:
    options: dict[str, Any] = {"user_credentials": str(root / ADMIN_CREDS)}
    if state["tls_ca"] is not None:
        options["tls"] = ssl.create_default_context(cafile=state["tls_ca"])
    try:
        nc = await nats.connect(
            state["url"], max_reconnect_attempts=0, connect_timeout=_PUSH_TIMEOUT_S, **options
        )
    except (OSError, nats.errors.Error) as exc:
        raise access.BrokerError(f"cannot reach nats-server to push the account: {exc}") from exc
    try:
        reply = await nc.request(
            CLAIMS_UPDATE, state["account_jwt"].encode(), timeout=_PUSH_TIMEOUT_S
        )
    except (nats.errors.Error, TimeoutError) as exc:
        raise access.BrokerError(f"nats-server did not take the account update: {exc}") from exc
    finally:
        await nc.close()
    answer = json.loads(reply.data)
    if answer.get("data", {}).get("code") != 200:
        raise access.BrokerError(f"nats-server refused the account update: {answer}")
