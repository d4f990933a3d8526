"""Request bodies for the core's tests, fuzz target and benches, and line protocol read back."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any, Final

import pytest
from line_protocol_parser import parse_line
from tidegate import core

CORES: Final = ("rust", "python")

RECEIVE_NS: Final = 1_700_000_000_123_456_789
TS: Final = "2024-05-01T12:30:45Z"
TS_NS: Final = 1_714_566_645_000_000_000
NOW_S: Final = 1_714_566_645

DROP: Final = object()
"""A `message()` field value that removes the field."""


def load_core(name: str) -> ModuleType:
    """`tidegate._core` ("rust") or `tidegate._twin` ("python"); fails saying how to build."""
    try:
        return core.load(name)
    except ImportError as exc:
        pytest.fail(f"{exc}: build the compiled core first with `make build`", pytrace=False)


def message(**changes: object) -> dict[str, Any]:
    """A valid batch message; `changes` replace fields, `DROP` removes one."""
    msg: dict[str, Any] = {
        "tenant_id": "acme",
        "device_id": "dev-1",
        "msg_type": "telemetry",
        "provision_token": "tok-1",
        "site_id": "site-1",
        "ts": TS,
        "seq": 7,
        "metrics": {"temp": 21.5},
    }
    for key, value in changes.items():
        if value is DROP:
            msg.pop(key, None)
        else:
            msg[key] = value
    return msg


def compact(value: object) -> bytes:
    """`value` as compact UTF-8 JSON, the way a careful client sends it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def batch_body(*messages: object) -> bytes:
    """A `{"messages": [...]}` body."""
    return compact({"messages": list(messages)})


def raw_batch_body(*elements: str) -> str:
    """A batch body from message texts written by hand (escapes, duplicate keys, numbers)."""
    return '{"messages":[' + ",".join(elements) + "]}"


def sized_message(size: int, **changes: object) -> bytes:
    """A valid message whose compact JSON is exactly `size` bytes (padded by an unknown key)."""
    base = compact(message(**changes, pad=""))
    return compact(message(**changes, pad="x" * (size - len(base))))


def read_lines(lines: bytes) -> list[dict[str, Any]]:
    """Each newline-terminated line of `lines` parsed by `line-protocol-parser`."""
    assert lines.endswith(b"\n")
    return [parse_line(line + b"\n") for line in lines[:-1].split(b"\n")]
