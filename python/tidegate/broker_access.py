"""Who the broker knows and what each may do, in either auth mode (`broker.py`: a users file;
`broker_jwt.py`: operator-mode JWTs), and the 0600 files in the broker directory that hold their
secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tidegate.nats.settings import (
    CONSUMER,
    CONTROL_SUBJECTS,
    EDGE_SUBJECTS,
    MAX_DELIVERIES_ADVISORY,
    REJECTED_STREAM,
    REJECTED_SUBJECTS,
    STREAM,
)

ACCOUNT = "TIDEGATE"
EDGE_USER = "edge"
WORKER_USER = "worker"
PID_FILE = "nats-server.pid"
USERS = "users"
JWT = "jwt"
AUTH_MODES = (USERS, JWT)


class BrokerError(Exception):
    """The broker directory is missing or unreadable, or nats-server did not reload or take
    an account update."""


def _api(*names: str) -> list[str]:
    return [f"$JS.API.{name}" for name in names]


def edge_permissions() -> dict[str, Any]:
    """Publish telemetry and read TELEMETRY's info; replies on the inbox; say and hear
    registry changes on the control subject."""
    return {
        "publish": {"allow": [EDGE_SUBJECTS, *_api(f"STREAM.INFO.{STREAM}"), CONTROL_SUBJECTS]},
        "subscribe": {"allow": ["_INBOX.>", CONTROL_SUBJECTS]},
    }


def worker_permissions() -> dict[str, Any]:
    """Own both streams and the consumer (create, update, info), fetch, ack, publish rejected
    messages, take a message that reached MaxDeliver out of TELEMETRY; hear that advisory; say
    and hear registry changes on the control subject."""
    streams = [
        f"STREAM.{op}.{name}"
        for name in (STREAM, REJECTED_STREAM)
        for op in ("INFO", "CREATE", "UPDATE")
    ]
    consumer = [
        f"CONSUMER.{op}.{STREAM}.{CONSUMER}"
        for op in ("CREATE", "DURABLE.CREATE", "INFO", "MSG.NEXT")
    ]
    # Taking a message out of TELEMETRY (MaxDeliver reached); reading back what it rejected.
    moved = [
        f"STREAM.MSG.GET.{STREAM}",
        f"STREAM.MSG.DELETE.{STREAM}",
        f"STREAM.MSG.GET.{REJECTED_STREAM}",
    ]
    return {
        "publish": {
            "allow": [
                *_api(*streams, *consumer, *moved),
                f"$JS.ACK.{STREAM}.{CONSUMER}.>",
                REJECTED_SUBJECTS,
                CONTROL_SUBJECTS,
            ]
        },
        "subscribe": {"allow": ["_INBOX.>", MAX_DELIVERIES_ADVISORY, CONTROL_SUBJECTS]},
    }


def device_user(tenant: str, device: str) -> str:
    """A device's MQTT user name."""
    return f"{tenant}.{device}"


def device_permissions(tenant: str, device: str) -> dict[str, Any]:
    """Publish on its own subjects only; subscribe to nothing."""
    return {
        "publish": {"allow": [f"tenant.{tenant}.device.{device}.*"]},
        "subscribe": {"deny": [">"]},
    }


def running_pid(root: Path) -> int | None:
    """The pid in nats-server's pid file, None when there is none or no such process."""
    try:
        pid = int((root / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except PermissionError:
        return pid  # it runs, as another user
    except (OSError, ValueError):
        return None
    return pid


def write_private(path: Path, text: str) -> None:
    """Replace the file atomically, created 0600 (it holds hashes or keys, not for other
    users)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
