"""The command's errors in process: unknown flags named, exit statuses listed, and a failed
start's log kept to one line."""

from __future__ import annotations

import json
import logging

import pytest
import uvicorn.config
from tidegate import logs
from tidegate.cli import main
from tidegate.startup import EXIT_START_FAILED


def test_the_exit_status_is_uvicorns_startup_failure() -> None:
    assert EXIT_START_FAILED == uvicorn.config.STARTUP_FAILURE == 3


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
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], prog: str, unknown: str
) -> None:
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    assert (done.value.code, out.out) == (2, "")
    assert out.err.splitlines()[-1] == f"{prog}: error: unrecognized arguments: {unknown}"


def test_help_lists_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    statuses = capsys.readouterr().out.split("exit status:\n", 1)[1].splitlines()
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
