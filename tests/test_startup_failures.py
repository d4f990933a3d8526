"""A failed start is one line naming what failed and where, exit 3; unknown flags are named."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn.config
from services import PostgresCluster, free_port
from tidegate import logs
from tidegate.startup import EXIT_START_FAILED

PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"
_OWN_PREFIXES = ("TIDEGATE_", "INFLUX", "DATABASE_", "INGEST_", "NATS_")


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`tidegate *args` to its end, in a clean environment with its data under tmp_path."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), base.get("PYTHONPATH")]))
    base["TIDEGATE_DATA_DIR"] = str(tmp_path / "data")
    base["TIDEGATE_PORT"] = str(free_port())
    base["TIDEGATE_OPS_PORT"] = str(free_port())
    base["TIDEGATE_WORKER_PORT"] = str(free_port())
    base["NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


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


def test_the_exit_status_is_uvicorns_startup_failure() -> None:
    assert EXIT_START_FAILED == uvicorn.config.STARTUP_FAILURE == 3


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
    # Bound before anything opens: no registry, no log.
    assert not (tmp_path / "data").exists()


def test_an_unopenable_sqlite_registry_names_its_path(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    done = run(tmp_path, "serve")
    assert the_failure(done).startswith(
        f"registry cannot be opened at {tmp_path / 'data' / 'registry.sqlite3'}: "
    )


@pytest.mark.parametrize(
    ("args", "prog", "unknown"),
    [
        (("--bogus",), "tidegate", "--bogus"),
        (("tenant", "--bogus"), "tidegate tenant", "--bogus"),
        (("device", "add", "--bogus", "--tenant", "acme"), "tidegate device add", "--bogus"),
        (("serve", "--bogus=1"), "tidegate", "--bogus=1"),
        (("worker", "--port", "1"), "tidegate", "--port 1"),
    ],
)
def test_an_unknown_flag_is_named(
    tmp_path: Path, args: tuple[str, ...], prog: str, unknown: str
) -> None:
    done = run(tmp_path, *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == f"{prog}: error: unrecognized arguments: {unknown}"


def test_help_lists_the_exit_statuses(tmp_path: Path) -> None:
    done = run(tmp_path, "--help")
    assert done.returncode == 0
    statuses = done.stdout.split("exit status:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in statuses if line[2:3].isdigit()] == ["0", "1", "2", "3"]


def uvicorn_says(handler: logging.Handler, level: int, text: str) -> None:
    """One record as uvicorn's lifespan logs it."""
    handler.handle(logging.LogRecord("uvicorn.error", level, __file__, 1, text, None, None))


@pytest.mark.parametrize(("level", "dropped"), [("info", True), ("debug", False)])
def test_uvicorns_echo_of_a_failed_start_is_dropped_unless_debugging(
    capsys: pytest.CaptureFixture[str], level: str, dropped: bool
) -> None:
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    try:
        logs.configure(level)
        handler = root.handlers[0]
        uvicorn_says(handler, logging.ERROR, "Traceback (most recent call last):\n  ...")
        uvicorn_says(handler, logging.ERROR, "Application startup failed. Exiting.")
        uvicorn_says(handler, logging.ERROR, "Exception in ASGI application")
        events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
        echo = ["Traceback (most recent call last):\n  ...", "Application startup failed. Exiting."]
        assert events == ([] if dropped else echo) + ["Exception in ASGI application"]
        # Once started, a failed stop keeps its traceback.
        uvicorn_says(handler, logging.INFO, "Application startup complete.")
        uvicorn_says(handler, logging.ERROR, "Traceback (most recent call last):\n  stop")
        events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
        assert events[-1] == "Traceback (most recent call last):\n  stop"
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
