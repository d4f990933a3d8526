"""The operator-mode alternative to the users file, measured like `nats_device_users.py`: each
device an MQTT user JWT (bearer, its own permissions) signed by an account key tidegate holds,
a revocation an account-JWT update pushed to nats-server's full resolver
(`$SYS.REQ.CLAIMS.UPDATE`). The figures in docs/nats-security.md.

    python benches/nats_device_jwt.py 10000 100000

Issued JWTs cost the broker nothing (it verifies one at connect); what it holds per device is a
revocation. So N devices here means N entries in the account's revocation list, the worst case
(every device revoked or given new credentials once: a user's key keeps one entry however often
it is revoked). Each row: the broker's start and memory with that list, an MQTT connect, and the
time from pushing one more revocation to the connected device's connection being cut.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nkeys
import paho.mqtt.client as mqtt
from nats_device_users import free_port, rss_mb, start_server

UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1}
ACCOUNT_LIMITS = {
    **UNLIMITED,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    # Non-zero JetStream limits turn JetStream on for the account (MQTT needs it).
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}
TRIES = 5
CONNECTS = 20
# nats-server refuses a JWT over 1 MiB; a revocation entry (user key: time) takes ~93 bytes of
# it, so one account lists at most ~11,200 revoked users. Past 10,000 devices they are spread
# over several accounts.
PER_ACCOUNT = 10_000


def new_key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), prefix))


def public(key: nkeys.KeyPair) -> str:
    return str(key.public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode(signer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, Any], iat: int) -> str:
    """A NATS v2 JWT (ed25519-nkey) for `subject`, signed by `signer`."""
    body: dict[str, Any] = {"iat": iat, "iss": public(signer), "name": name, "sub": subject}
    body["nats"] = {**claims, "version": 2}
    digest = hashlib.sha512(json.dumps(body, sort_keys=True).encode()).digest()[:32]
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(b'{"typ":"JWT","alg":"ed25519-nkey"}')
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = key_sign(signer, f"{head}.{payload}".encode())
    return f"{head}.{payload}.{_b64(signature)}"


def key_sign(key: nkeys.KeyPair, data: bytes) -> bytes:
    signed: bytes = key.sign(data)
    return signed


class Keys:
    """An operator, its system account (to push account updates) and `accounts` accounts the
    devices are spread over (one revocation list each)."""

    def __init__(self, accounts: int) -> None:
        now = int(time.time())
        self.operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.accounts = [new_key(nkeys.PREFIX_BYTE_ACCOUNT) for _ in range(accounts)]
        self.admin = new_key(nkeys.PREFIX_BYTE_USER)
        op_claims = {"type": "operator", "system_account": public(self.system)}
        self.operator_jwt = encode(self.operator, public(self.operator), "op", op_claims, now)
        sys_claims = {"type": "account", "limits": {**UNLIMITED, "conn": -1, "wildcards": True}}
        self.system_jwt = encode(self.operator, public(self.system), "SYS", sys_claims, now)
        admin_claims = {"type": "user", **UNLIMITED, "pub": {}, "sub": {}}
        self.admin_jwt = encode(self.system, public(self.admin), "admin", admin_claims, now)

    def account_jwt(self, account: int, revocations: dict[str, int]) -> str:
        claims = {"type": "account", "limits": ACCOUNT_LIMITS, "revocations": revocations}
        key = self.accounts[account]
        return encode(self.operator, public(key), f"DEVICES{account}", claims, int(time.time()))

    def device_jwt(self, account: int, user: str, tenant: str, device: str, iat: int) -> str:
        claims = {
            "type": "user",
            **UNLIMITED,
            "pub": {"allow": [f"tenant.{tenant}.device.{device}.*"]},
            "sub": {"deny": [">"]},
            "bearer_token": True,
            "allowed_connection_types": ["MQTT"],
        }
        return encode(self.accounts[account], user, f"{tenant}.{device}", claims, iat)


def connect(port: int, password: str, client_id: str) -> tuple[mqtt.Client, dict[str, Any]]:
    """An MQTT client connected with the JWT as its password (the user name is not checked,
    but must not be empty); `seen` gets the CONNACK's reason and the time it is cut."""
    seen: dict[str, Any] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set("device", password)
    client.on_connect = lambda _c, _u, _f, rc, _p: seen.setdefault("rc", rc)
    client.on_disconnect = lambda _c, _u, _f, _rc, _p: seen.setdefault("cut", time.monotonic())
    t = time.monotonic()
    client.connect("127.0.0.1", port)
    while "rc" not in seen:
        client.loop(0.001)
        assert time.monotonic() - t < 10, "no CONNACK"
    seen["connect_s"] = time.monotonic() - t
    return client, seen


async def push(keys: Keys, url: str, account_jwt: str) -> float:
    """Send the account JWT to the resolver as the system account's user; seconds it took."""
    nc = await nats.connect(
        url,
        user_jwt_cb=lambda: keys.admin_jwt.encode(),
        signature_cb=lambda nonce: base64.b64encode(key_sign(keys.admin, nonce.encode())),
        max_reconnect_attempts=0,
    )
    try:
        t = time.monotonic()
        reply = await nc.request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.encode(), timeout=60)
        took = time.monotonic() - t
        code = json.loads(reply.data).get("data", {}).get("code")
        assert code == 200, reply.data[:300]
        return took
    finally:
        await nc.close()


def measure(devices: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="tidegate-jwt-"))
    proc: subprocess.Popen[bytes] | None = None
    keys = Keys(max(1, -(-devices // PER_ACCOUNT)))
    spread = len(keys.accounts)
    try:
        issued = int(time.time()) - 10
        # One user key per device, each revoked once: the lists' worst case.
        revoked: list[dict[str, int]] = [{} for _ in range(spread)]
        for i in range(devices):
            revoked[i % spread][public(new_key(nkeys.PREFIX_BYTE_USER))] = issued + 1
        account_jwts = [keys.account_jwt(a, revoked[a]) for a in range(spread)]
        live = [
            (i % spread, public(new_key(nkeys.PREFIX_BYTE_USER))) for i in range(TRIES + CONNECTS)
        ]
        t = time.monotonic()
        tokens = [keys.device_jwt(a, u, "t1", f"d{i}", issued) for i, (a, u) in enumerate(live)]
        sign_ms = (time.monotonic() - t) * 1000 / len(tokens)
        port, mqtt_port, monitor_port = free_port(), free_port(), free_port()
        preload = [f"{public(keys.system)}: {keys.system_jwt}"]
        preload += [f"{public(k)}: {j}" for k, j in zip(keys.accounts, account_jwts, strict=True)]
        (root / "nats-server.conf").write_text(
            f'listen: "127.0.0.1:{port}"\nhttp: "127.0.0.1:{monitor_port}"\nserver_name: bench\n'
            # An account JWT (up to 1 MiB) is one message to the resolver.
            "max_payload: 2MB\n"
            f"operator: {keys.operator_jwt}\nsystem_account: {public(keys.system)}\n"
            f'resolver: {{type: full, dir: "{root / "jwt"}", allow_delete: false}}\n'
            "resolver_preload: {\n  " + "\n  ".join(preload) + "\n}\n"
            f'jetstream {{store_dir: "{root / "js"}"}}\n'
            f'mqtt {{listen: "127.0.0.1:{mqtt_port}"}}\n'
        )
        proc, start_s = start_server(root / "nats-server.conf", monitor_port)
        rss_start = rss_mb(proc.pid)
        connects = []
        # The first MQTT connect in an account creates its MQTT streams: a round not counted.
        for counted in (False, True):
            for i, token in enumerate(tokens[TRIES:]):
                client, seen = connect(mqtt_port, token, f"c{i}")
                assert seen["rc"] == 0, seen["rc"]
                if counted:
                    connects.append(seen["connect_s"])
                client.disconnect()
        # Revoke a connected device: push its account with one more entry, wait for the cut.
        pushes, cuts, refused = [], [], 0
        for i, token in enumerate(tokens[:TRIES]):
            client, seen = connect(mqtt_port, token, f"r{i}")
            account, user = live[i]
            revoked[account][user] = int(time.time())
            update = keys.account_jwt(account, revoked[account])
            t = time.monotonic()
            pushes.append(asyncio.run(push(keys, f"nats://127.0.0.1:{port}", update)))
            while "cut" not in seen:
                client.loop(0.001)
                assert time.monotonic() - t < 120, "the revoked device is still connected"
            cuts.append(seen["cut"] - t)
            again, seen = connect(mqtt_port, token, f"again{i}")
            refused += seen["rc"] != 0
            again.disconnect()
        return {
            "revoked_devices": devices,
            "accounts": spread,
            "account_jwt_mb_max": round(max(map(len, account_jwts)) / 2**20, 2),
            "sign_one_jwt_ms": round(sign_ms, 3),
            "start_s": round(start_s, 2),
            "rss_mb_after_start": round(rss_start, 1),
            "mqtt_connect_ms_median": round(statistics.median(connects) * 1000, 1),
            "claims_update_s_median": round(statistics.median(pushes), 3),
            "revoke_to_cut_s": [round(c, 3) for c in cuts],
            "reconnect_refused": f"{refused}/{TRIES}",
            f"rss_mb_after_{TRIES}_updates": round(rss_mb(proc.pid), 1),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for n in sys.argv[1:] or ["10000"]:
        print(json.dumps(measure(int(n))), flush=True)
