"""The nats-server NATS mode runs against: its config, its service users and its device users.

`tidegate nats setup --dir DIR` writes, all mode 0600:
- `DIR/nats-server.conf`: listeners, JetStream, MQTT, `include accounts.conf`;
- `DIR/accounts.conf`: one account TIDEGATE (JetStream on) with the users `edge` and `worker`
  and one user per device given MQTT credentials, each with least-privilege permissions;
- `DIR/broker.json`: what regenerating accounts.conf needs (ports, bcrypt hashes, the devices).

Nothing connects anonymously: with users declared and no `no_auth_user`, nats-server refuses a
connection without credentials on both listeners. Passwords are random and only their bcrypt
hashes are written; the edge's and worker's passwords are printed once, by setup.

Streams and the consumer are created by the worker, not by setup (nats-server is not running
when setup writes its config) and not by edges: the worker already owns the consumer and must
re-create it if it disappears, so it holds the `$JS.API` rights for TELEMETRY,
TELEMETRY_REJECTED and `ingest-workers`; an edge may only read the stream's info. Both may
publish and subscribe on the control subject `tidegate.control.>` (nats/control.py): registry
changes they tell each other.

A device's MQTT user may publish only on its own subject, `tenant.{T}.device.{D}.*` (the topic
`tenant/{T}/device/{D}/{type}`), subscribe to nothing, and connect only over MQTT. Adding or
removing one rewrites accounts.conf and reloads nats-server (SIGHUP to the pid in its pid file);
docs/nats-security.md has the figures behind this choice and its limits.

That is the default, `--auth users`. With `--auth jwt` (broker_jwt.py) the same users and
permissions are JWTs in operator mode, and adding or revoking a device pushes an account update
instead of reloading every user.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx

from tidegate import broker_jwt
from tidegate.broker_access import ACCOUNT as ACCOUNT
from tidegate.broker_access import AUTH_MODES as AUTH_MODES
from tidegate.broker_access import (
    EDGE_USER,
    JWT,
    PID_FILE,
    WORKER_USER,
    device_permissions,
    device_user,
    edge_permissions,
    running_pid,
    worker_permissions,
    write_private,
)
from tidegate.broker_access import USERS as USERS
from tidegate.broker_access import BrokerError as BrokerError

CONFIG = "nats-server.conf"
ACCOUNTS = "accounts.conf"
STATE = "broker.json"
LOCK = "broker.lock"
# Service passwords are typed by nobody; a high cost only slows their (rare) connects.
_SERVICE_COST = 10
# Device passwords are 256-bit random: bcrypt adds nothing against guessing them, and a low
# cost keeps a reconnect storm of many devices from eating the broker's CPU.
_DEVICE_COST = 4
_RELOAD_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Listeners:
    """Where nats-server listens; with `tls_cert`/`tls_key` (PEM files) both client listeners
    take TLS only, and clients verify the server against `tls_ca` (default: the certificate
    itself, for a self-signed one)."""

    host: str = "127.0.0.1"
    port: int = 4222
    mqtt_port: int = 1883
    monitor_port: int = 8222
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # The monitoring listener has no auth (nats-server offers none for it): loopback unless
    # asked otherwise, whatever `host` the client listeners take.
    monitor_host: str = "127.0.0.1"


def setup(directory: Path, at: Listeners, auth: str = USERS) -> dict[str, object]:
    """Write a fresh config with new service secrets (`auth`: users file or operator-mode JWTs);
    the edge's and worker's environment."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    root = directory.resolve()
    state: dict[str, Any] = {
        "host": at.host,
        "port": at.port,
        "mqtt_port": at.mqtt_port,
        "monitor_host": at.monitor_host,
        "monitor_port": at.monitor_port,
        "devices": {},
    }
    scheme = "nats" if at.tls_cert is None else "tls"
    common = {"NATS_URL": f"{scheme}://{_url_host(at.host)}:{at.port}"}
    if at.tls_cert is not None:
        common["NATS_TLS_CA"] = str((at.tls_ca or at.tls_cert).resolve())
    if auth == JWT:
        env = broker_jwt.setup(root, state, common)
    else:
        passwords = {EDGE_USER: _password(), WORKER_USER: _password()}
        state["service"] = {u: _hash(p, _SERVICE_COST) for u, p in passwords.items()}
        env = {
            user: {**common, "NATS_USER": user, "NATS_PASSWORD": password}
            for user, password in passwords.items()
        }
    config = root / CONFIG
    write_private(config, _server_conf(root, at))
    _save(root, state)
    return {"config": str(config), "edge_env": env[EDGE_USER], "worker_env": env[WORKER_USER]}


def device_credentials(directory: Path, tenant: str, device: str) -> dict[str, str]:
    """New MQTT credentials for the device (revoking any earlier ones), live once this
    returns."""
    with _locked(directory) as state:
        if state.get("auth") == JWT:
            password = broker_jwt.device_credentials(directory.resolve(), state, tenant, device)
        else:
            password = _password()
            state["devices"][device_user(tenant, device)] = _hash(password, _DEVICE_COST)
    return {"username": device_user(tenant, device), "password": password}


def remove_devices(directory: Path, tenant: str, devices: Collection[str]) -> None:
    """Take the devices' MQTT access away: one reload or account update, which closes their
    connections."""
    with _locked(directory) as state:
        if state.get("auth") == JWT:
            broker_jwt.remove_devices(directory.resolve(), state, tenant, list(devices))
            return
        for device in devices:
            state["devices"].pop(device_user(tenant, device), None)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[dict[str, Any]]:
    """The state under an exclusive lock; on a clean exit accounts.conf is rewritten from it
    and a running nats-server reloaded or sent the new account JWT."""
    root = directory.resolve()
    path = root / STATE
    if not path.is_file():
        raise BrokerError(f"no {STATE} in {root}: run `tidegate nats setup --dir {root}` first")
    # A lock file of its own: the state file is replaced, not rewritten in place.
    with (root / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state: dict[str, Any] = json.loads(path.read_text())
        before = json.dumps(state, sort_keys=True)
        account_jwt = state.get("account_jwt")
        yield state
        if json.dumps(state, sort_keys=True) != before:
            _save(root, state)
            if state.get("auth") != JWT:
                _reload(root, state)
            elif state["account_jwt"] != account_jwt:
                broker_jwt.push(root, state)  # a device's first JWT changes nothing there


def _save(root: Path, state: dict[str, Any]) -> None:
    if state.get("auth") == JWT:
        write_private(root / ACCOUNTS, broker_jwt.accounts_conf(root, state))
    else:
        write_private(root / ACCOUNTS, _accounts_conf(state))
    write_private(root / STATE, json.dumps(state, indent=1))


def _reload(root: Path, state: dict[str, Any]) -> None:
    """SIGHUP nats-server and wait until /varz shows the new config loaded."""
    pid = running_pid(root)
    if pid is None:
        return  # not running: it reads the new file when it starts
    # A directory written before monitor_host existed has its monitor on `host`.
    monitor_host = _url_host(state.get("monitor_host", state["host"]))
    monitor = f"http://{monitor_host}:{state['monitor_port']}/varz"
    before = _load_time(monitor)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + _RELOAD_WAIT_S
    while time.monotonic() < deadline:
        if _load_time(monitor) not in (before, None):
            return
        time.sleep(0.05)
    raise BrokerError(f"nats-server (pid {pid}) did not reload within {_RELOAD_WAIT_S:.0f} s")


def _load_time(monitor: str) -> str | None:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        value = httpx.get(monitor, timeout=2).json()["config_load_time"]
        return str(value)
    return None


def _server_conf(root: Path, at: Listeners) -> str:
    # JSON strings are valid nats-server config strings (no `$VAR` expansion inside quotes).
    q = json.dumps
    tls = ""
    if at.tls_cert is not None:
        assert at.tls_key is not None, "a certificate goes with its key"
        cert, key = q(str(at.tls_cert.resolve())), q(str(at.tls_key.resolve()))
        tls = f"  tls {{\n    cert_file: {cert}\n    key_file: {key}\n  }}\n"
    return (
        "# Written by `tidegate nats setup`; who may connect, and do what, is in accounts.conf.\n"
        f"server_name: {q('tidegate-' + str(at.port))}\n"
        f"listen: {q(f'{at.host}:{at.port}')}\n"
        f"http: {q(f'{at.monitor_host}:{at.monitor_port}')}\n"
        f"pid_file: {q(str(root / PID_FILE))}\n"
        "jetstream {\n"
        f"  store_dir: {q(str(root / 'jetstream'))}\n"
        "  # A PubAck is an fsync: an R1 stream keeps every acknowledged (202'd) message.\n"
        "  sync_interval: always\n"
        "}\n"
        f"mqtt {{\n  listen: {q(f'{at.host}:{at.mqtt_port}')}\n{tls}}}\n"
        + tls.replace("\n  ", "\n").removeprefix("  ")
        + f"include {ACCOUNTS}\n"
    )


def _accounts_conf(state: dict[str, Any]) -> str:
    service = state["service"]
    users = [
        _user(EDGE_USER, service[EDGE_USER], edge_permissions(), "STANDARD"),
        _user(WORKER_USER, service[WORKER_USER], worker_permissions(), "STANDARD"),
    ]
    for name, digest in sorted(state["devices"].items()):
        tenant, device = name.split(".", 1)
        users.append(_user(name, digest, device_permissions(tenant, device), "MQTT"))
    accounts = {ACCOUNT: {"jetstream": "enabled", "users": users}}
    return "# Written by tidegate: do not edit.\naccounts: " + json.dumps(accounts) + "\n"


def _user(name: str, digest: str, permissions: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "user": name,
        "password": digest,
        "permissions": permissions,
        "allowed_connection_types": [kind],
    }


def _password() -> str:
    return secrets.token_urlsafe(32)


def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
