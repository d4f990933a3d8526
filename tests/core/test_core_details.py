"""Every item the core rejects says what is wrong with it: one example per rule of each reason
code, exact, in both cores (the differential properties hold them byte-identical on any body;
these pin the words). Client text is quoted bounded and a token is never quoted."""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any

import pytest
from messages import DROP, RECEIVE_NS, batch_body, load_core, message

CORES = ["rust", "python"]
ID_RULE = "1 to 128 bytes of UTF-8 without control characters or backslashes"
SEQ_RULE = "seq must be a whole number from 0 to 9223372036854775807"


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return load_core(request.param)


def rejected(core: ModuleType, msg: object, **kwargs: Any) -> tuple[str | None, str | None]:
    batch = core.parse_batch(batch_body(msg), RECEIVE_NS, **kwargs)
    [reason] = batch.reasons()
    details = dict(batch.details())
    return reason, details.get(0)


# (message changes, reason, detail): one per rule, in the order the rules apply.
VALIDATION = [
    ({"tenant_id": DROP}, "INVALID_SCHEMA", "tenant_id is missing"),
    ({"tenant_id": 5}, "INVALID_SCHEMA", "tenant_id must be a string, got a number"),
    (
        {"tenant_id": "Acme"},
        "INVALID_SCHEMA",
        "tenant_id 'Acme' is not a tenant id: 1 to 64 of a-z, 0-9, _ and -",
    ),
    ({"device_id": None}, "INVALID_SCHEMA", "device_id must be a string, got null"),
    (
        {"device_id": "a\\b"},
        "INVALID_SCHEMA",
        f"device_id 'a\\b' is not a valid id: {ID_RULE}",
    ),
    ({"site_id": ["s"]}, "INVALID_SCHEMA", "site_id must be a string, got an array"),
    (
        {"provision_token": "secret\n"},
        "INVALID_SCHEMA",
        f"provision_token is not a valid token: {ID_RULE}",
    ),
    ({"msg_type": DROP}, "INVALID_SCHEMA", "msg_type is missing"),
    ({"msg_type": True}, "INVALID_SCHEMA", "msg_type must be a string, got a boolean"),
    ({"seq": -1}, "INVALID_SCHEMA", SEQ_RULE),
    ({"seq": "7"}, "INVALID_SCHEMA", f"{SEQ_RULE}, got a string"),
    (
        {"msg_type": "event"},
        "INVALID_MSG_TYPE",
        "msg_type 'event' is not one of: telemetry, heartbeat",
    ),
    ({"ts": 1714566645}, "INVALID_TIMESTAMP", "ts must be an RFC 3339 string, got a number"),
    (
        {"ts": "2024-02-30T00:00:00Z"},
        "INVALID_TIMESTAMP",
        "ts '2024-02-30T00:00:00Z' is not an RFC 3339 timestamp within InfluxDB's range"
        " (years 1677 to 2262)",
    ),
    ({"metrics": [1]}, "INVALID_METRICS", "metrics must be an object, got an array"),
    (
        {"metrics": {"temp": "hot"}},
        "INVALID_METRICS",
        "metric 'temp' is a string; metrics must be numbers or booleans",
    ),
    (
        {"metrics": {"b": 1, "a": {"x": 1}}},
        "INVALID_METRICS",
        "metric 'a' is an object; metrics must be numbers or booleans",
    ),
    ({"metrics": {"time": 1}}, "INVALID_METRICS", "metric name 'time' is reserved"),
    (
        {"metrics": {"a\nb": 1}},
        "INVALID_METRICS",
        f"metric name 'a\\u000ab' is not a valid name: {ID_RULE}",
    ),
    (
        {"metrics": {f"m{i}": i for i in range(257)}},
        "INVALID_METRICS",
        "metrics holds 257 names; at most 256 are allowed",
    ),
]


@pytest.mark.parametrize(("changes", "reason", "detail"), VALIDATION)
def test_each_validation_rule_names_what_is_wrong(
    core: ModuleType, changes: dict[str, object], reason: str, detail: str
) -> None:
    assert rejected(core, message(**changes)) == (reason, detail)


def test_a_too_large_or_non_object_message_says_so(core: ModuleType) -> None:
    msg = message()
    size = len(batch_body(msg)) - len(b'{"messages":[]}')
    assert rejected(core, msg, max_payload_bytes=size - 1) == (
        "PAYLOAD_TOO_LARGE",
        f"message is {size} bytes; the limit is {size - 1} bytes",
    )
    assert rejected(core, "hi") == ("INVALID_SCHEMA", "message must be a JSON object, got a string")


def test_quoted_client_text_is_bounded_and_escaped(core: ModuleType) -> None:
    hostile = "\x1b[2J\u202e" + "x" * 200
    reason, detail = rejected(core, message(msg_type=hostile))
    assert reason == "INVALID_MSG_TYPE"
    assert detail == f"msg_type '\\u001b[2J\\u202e{'x' * 59}…' is not one of: telemetry, heartbeat"


def test_a_token_is_never_quoted(core: ModuleType) -> None:
    for token in ("s3cret\\", "s3cret" * 40, ""):
        _, detail = rejected(core, message(provision_token=token))
        assert detail is not None and "s3cret" not in detail


def row(device: str, token: str, status: str = "active", **kw: Any) -> tuple[Any, ...]:
    digest = hashlib.sha256(token.encode()).digest()
    return ("acme", device, "site-1", digest, kw.get("rps"), kw.get("burst"), status)


def admitted(core: ModuleType, *messages: dict[str, Any], lookups: int = 100) -> list[Any]:
    """`(reason, detail)` per item once admission decided the batch."""
    a = core.Admission(default_rps=2.0, default_burst=1, lookups_per_s=lookups)
    a.install(
        [("acme", d) for d in ("dev-1", "gone", "slow")],
        [row("dev-1", "tok-1"), row("gone", "tok-g", "revoked"), row("slow", "tok-s", rps=0.5)],
        1000.0,
    )
    batch = core.parse_batch(batch_body(*messages), RECEIVE_NS)
    keys = a.admit(batch, 1000.0)
    if keys:
        assert a.admit(batch, 1000.0) == []
    details = dict(batch.details())
    return [(r, details.get(i)) for i, r in enumerate(batch.reasons())]


def test_admission_names_why_without_naming_a_token(core: ModuleType) -> None:
    got = admitted(
        core,
        message(provision_token="wrong-token"),
        message(device_id="gone", provision_token="tok-g"),
        message(device_id="gone", provision_token="guess"),
        message(site_id="site-2"),
        message(device_id="slow", provision_token="tok-s"),
        message(device_id="slow", provision_token="tok-s"),
        message(device_id="nobody"),
    )
    assert got == [
        ("UNAUTHORIZED", "unknown device or wrong provision token"),
        ("UNAUTHORIZED", "the device is revoked"),
        ("UNAUTHORIZED", "unknown device or wrong provision token"),
        ("SITE_MISMATCH", "site_id 'site-2' is not the device's registered site"),
        (None, None),
        (
            "RATE_LIMITED",
            "rate limit exceeded: the device may send 0.5 messages/s with bursts of 1",
        ),
        ("UNAVAILABLE", "the device registry did not answer; retry later"),
    ]
    assert not any("wrong-token" in (d or "") or "guess" in (d or "") for _, d in got)


def test_lookups_over_the_tenants_budget_say_so(core: ModuleType) -> None:
    got = admitted(core, message(device_id="x1"), message(device_id="x2"), lookups=1)
    assert got[1] == (
        "UNAUTHORIZED",
        "the device could not be looked up: this tenant's registry lookups (1 per second)"
        " are used up",
    )


def test_a_full_buffer_says_so(core: ModuleType) -> None:
    batch = core.parse_batch(batch_body(message()), RECEIVE_NS)
    core.TenantBuffers(max_bytes=1).append(batch)
    assert batch.details() == [(0, "the tenant's ingest buffer is full; retry later")]
    assert batch.rejections() == [
        ("BUFFER_FULL", "acme", "dev-1", "the tenant's ingest buffer is full; retry later")
    ]


def test_rejections_name_the_valid_tenant_of_a_message_refused_before_admission(
    core: ModuleType,
) -> None:
    batch = core.parse_batch(batch_body(message(seq="x"), message(tenant_id="No"), [1]), RECEIVE_NS)
    assert [(r, t, d) for r, t, d, _ in batch.rejections()] == [
        ("INVALID_SCHEMA", "acme", "dev-1"),
        ("INVALID_SCHEMA", "", "dev-1"),
        ("INVALID_SCHEMA", "", None),
    ]
