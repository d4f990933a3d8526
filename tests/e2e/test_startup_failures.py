"""A failed start, as a real process: one line naming what failed and where, exit 3."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import PostgresCluster, free_port
from tidegate.startup import EXIT_START_FAILED
from tidegate_process import own_environment, tidegate


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tidegate *args` to its end, its data under tmp_path, on free ports."""
    base = {
        **own_environment(),
        "TIDEGATE_DATA_DIR": str(tmp_path / "data"),
        "TIDEGATE_PORT": str(free_port()),
        "TIDEGATE_OPS_PORT": str(free_port()),
        "TIDEGATE_WORKER_PORT": str(free_port()),
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    return tidegate({**base, **env}, *args)


def errors(stderr: str) -> list[dict[str, object]]:
    """The error-level log lines (every line must be one JSON object)."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    return [line for line in lines if line["level"] == "error"]


def the_failure(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a failed start, its `error`; no traceback anywhere."""
    assert done.returncode == EXIT_START_FAILED, done.stderr
    assert done.stdout == ""
    (line,) = errors(done.stderr)
    assert line["event"] == "start_failed"
    assert set(line) == {"ts", "level", "event", "error"}
    assert "Traceback" not in done.stderr
    return str(line["error"])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unreachable_registry_is_one_line_naming_its_address(
    tmp_path: Path, command: str
) -> None:
    port = free_port()
    url = f"postgresql://tidegate:hunter2@127.0.0.1:{port}/registry"
    done = run(tmp_path, command, DATABASE_URL=url)
    assert the_failure(done) == f"registry unreachable at 127.0.0.1:{port}: connection refused"
    assert "hunter2" not in done.stderr


def test_a_registry_that_refuses_is_one_line_naming_its_address_and_why(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    url = postgres.url("no_such_database")
    where = url.split("@", 1)[1].split("/", 1)[0]
    assert the_failure(run(tmp_path, "serve", DATABASE_URL=url)) == (
        f'registry at {where} refused: database "no_such_database" does not exist'
    )


def test_with_debug_logging_the_failed_start_carries_its_traceback(tmp_path: Path) -> None:
    url = f"postgresql://tidegate@127.0.0.1:{free_port()}/registry"
    done = run(tmp_path, "serve", "--log-level", "debug", DATABASE_URL=url)
    assert done.returncode == EXIT_START_FAILED
    failed = [line for line in errors(done.stderr) if line["event"] == "start_failed"]
    assert len(failed) == 1
    assert "Traceback (most recent call last)" in str(failed[0]["exc"])


@pytest.mark.parametrize(
    ("variable", "command", "listener"),
    [
        ("TIDEGATE_PORT", "serve", "public"),
        ("TIDEGATE_OPS_PORT", "serve", "ops"),
        ("TIDEGATE_WORKER_PORT", "worker", "worker"),
    ],
)
def test_a_port_in_use_is_one_line_naming_the_listener_and_nothing_starts(
    tmp_path: Path, taken_port: int, variable: str, command: str, listener: str
) -> None:
    done = run(tmp_path, command, **{variable: str(taken_port)})
    assert the_failure(done) == (
        f"{listener} listener cannot bind 127.0.0.1:{taken_port}: address already in use"
    )
    # Bound before anything opens: no registry, no log (the directory holds its owner's lock).
    assert not (tmp_path / "data" / "registry.sqlite3").exists()
    assert not (tmp_path / "data" / "wal").exists()


def test_an_unopenable_sqlite_registry_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "data" / "registry.sqlite3").mkdir(parents=True)  # a directory, not a file
    done = run(tmp_path, "serve")
    assert the_failure(done).startswith(
        f"registry cannot be opened at {tmp_path / 'data' / 'registry.sqlite3'}: "
    )
