"""Structured logs: one JSON object per line, credentials never written."""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import pytest
from tidegate import logs


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Configure logging at debug and return a function giving the JSON lines so far."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("debug")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    yield lines
    root.handlers[:], root.level = saved


def test_log_writes_one_json_line_with_event_and_fields(captured: Any) -> None:
    logs.log("flush_done", tenant="acme", lines=500, seconds=0.25)
    logs.log("flush_failed", level="warning", tenant="beta", status=503)
    first, second = captured()
    assert set(first) == {"ts", "level", "event", "tenant", "lines", "seconds"}
    assert (first["level"], first["event"], first["tenant"], first["lines"]) == (
        "info",
        "flush_done",
        "acme",
        500,
    )
    assert first["ts"].endswith("Z")
    assert (second["level"], second["event"], second["status"]) == ("warning", "flush_failed", 503)


def test_credentials_are_redacted(captured: Any) -> None:
    logs.log(
        "provisioned",
        provision_token="tok-secret",
        api_key="key-secret",
        headers={"Authorization": "Bearer b-secret", "X-Provision-Token": "x-secret", "ok": 1},
        database_url="postgresql://tidegate:pw-secret@db:5432/tidegate",
        idempotency_key="plug_0_123",
    )
    [line] = captured()
    text = json.dumps(line)
    assert "secret" not in text
    assert line["provision_token"] == line["api_key"] == logs.REDACTED
    assert line["headers"] == {
        "Authorization": logs.REDACTED,
        "X-Provision-Token": logs.REDACTED,
        "ok": 1,
    }
    assert line["database_url"] == f"postgresql://tidegate:{logs.REDACTED}@db:5432/tidegate"
    assert line["idempotency_key"] == "plug_0_123"


def test_fields_cannot_overwrite_the_envelope(captured: Any) -> None:
    logs.log("e", ts="x", logger="y")
    [line] = captured()
    assert (line["event"], line["field_ts"], line["field_logger"]) == ("e", "x", "y")


def test_level_filters_events(captured: Any) -> None:
    logs.configure("warning")
    logs.log("dropped_info")
    logs.log("kept", level="error")
    assert [line["event"] for line in captured()] == ["kept"]


def test_other_libraries_records_come_out_as_json_with_their_logger(captured: Any) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("worker %s failed", 3)
    [line] = captured()
    assert (line["level"], line["event"], line["logger"]) == (
        "error",
        "worker 3 failed",
        "uvicorn.error",
    )
    assert "ValueError: boom" in line["exc"]


def test_uvicorn_log_config_is_a_valid_dict_config(captured: Any) -> None:
    logging.config.dictConfig(logs.uvicorn_log_config("info"))
    logging.getLogger("uvicorn.access").info('%s - "%s"', "127.0.0.1", "GET /health")
    # Only uvicorn's: a thread an earlier test left (aiosqlite closing) may log at debug too.
    [line] = [line for line in captured() if line.get("logger") == "uvicorn.access"]
    assert line["event"] == '127.0.0.1 - "GET /health"'
