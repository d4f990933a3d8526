"""The core's contract (docs/core-rules.md), held for the compiled `_core` and the `_twin` alike."""

from __future__ import annotations

import json
import re
import threading
from types import ModuleType
from typing import Any

import pytest
from messages import (
    CORES,
    DROP,
    RECEIVE_NS,
    TS_NS,
    batch_body,
    compact,
    load_core,
    message,
    raw_batch_body,
    read_lines,
    sized_message,
)

NOT_JSON = "body is not valid JSON"
NO_MESSAGES = 'body must be a JSON object with a "messages" list'

LINE = b"telemetry,device_id=dev-1,site_id=site-1 temp=21.5,seq=7i 1714566645000000000\n"


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return load_core(request.param)


def parse(core: ModuleType, body: bytes | str, **kwargs: Any) -> Any:
    if isinstance(body, str):
        body = body.encode()
    return core.parse_batch(body, RECEIVE_NS, **kwargs)


def reason_of(core: ModuleType, msg: object, **kwargs: Any) -> str | None:
    reasons = parse(core, batch_body(msg), **kwargs).reasons()
    assert len(reasons) == 1
    reason: str | None = reasons[0]
    return reason


def raw_reason(core: ModuleType, element: str) -> str | None:
    reason: str | None = parse(core, raw_batch_body(element)).reasons()[0]
    return reason


def line_of(core: ModuleType, msg: object) -> bytes:
    batch = parse(core, batch_body(msg))
    assert batch.reasons() == [None]
    [(_, lines, count)] = batch.tenant_lines()
    assert count == 1
    assert isinstance(lines, bytes)
    return lines


def body_error(core: ModuleType, call: Any, *args: Any) -> str:
    with pytest.raises(core.BodyError) as info:
        call(*args)
    assert isinstance(info.value, ValueError)
    detail: str = info.value.detail
    return detail


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- module surface --------------------------------------------------------------------------


def test_reason_constants_and_limits_are_exported(core: ModuleType) -> None:
    names = [
        "INVALID_MSG_TYPE",
        "INVALID_SCHEMA",
        "INVALID_TIMESTAMP",
        "INVALID_METRICS",
        "PAYLOAD_TOO_LARGE",
        "UNAUTHORIZED",
        "SITE_MISMATCH",
        "RATE_LIMITED",
        "BUFFER_FULL",
        "UNAVAILABLE",
    ]
    assert [getattr(core, n) for n in names] == names
    assert tuple(names) == core.REASONS
    assert (core.MAX_BATCH_MESSAGES, core.MAX_SHELLY_MESSAGES) == (100, 1000)
    assert issubclass(core.BodyError, ValueError)


# -- whole-body errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xff",
        b'{"messages":[{"device_id":"\xed\xa0\x80"}]}',
        "\ufeff" + '{"messages":[{}]}',
        '{"messages":[{}]}'.encode("utf-16"),
        '{"messages":[{}]}'.encode("utf-32"),
        b'{"messages":[{}]',
        b'{"messages":[{}]}}',
        b'{"messages":[{}]} x',
        b'{"messages":[{},]}',
        b'{"messages":[{}],}',
        b'{"messages":[{"seq":01}]}',
        b'{"messages":[{"a":NaN}]}',
        b'{"messages":[{"a":Infinity}]}',
        b'{"messages":[{"a":-Infinity}]}',
        b'{"messages":[{"a":"tab\there"}]}',
        b'{"messages":[{"a":"\x00"}]}',
        b"{'messages':[{}]}",
        b'{"messages":[{}] "x":1}',
        b"{messages:[{}]}",
        b'{"messages":[{"a":tru}]}',
        b'{"messages":[{"a":"\\x"}]}',
        b'{"messages":[{"a":"\\u12"}]}',
        b'{"messages":[{"a":.5}]}',
        b'{"messages":[{"a":1.}]}',
        b'{"messages":[{"a":+1}]}',
    ],
)
def test_a_body_that_is_not_strict_json_is_refused_whole(
    core: ModuleType, body: bytes | str
) -> None:
    raw = body.encode() if isinstance(body, str) else body
    assert body_error(core, core.parse_batch, raw, RECEIVE_NS) == NOT_JSON


def test_nesting_of_127_levels_is_json_and_128_is_not(core: ModuleType) -> None:
    # Depth counts the body object and the messages array: 2 + 125 = 127.
    deepest_ok = '{"messages":[' + nested(125) + "]}"
    assert parse(core, deepest_ok).reasons() == ["INVALID_SCHEMA"]
    too_deep = '{"messages":[' + nested(126) + "]}"
    assert body_error(core, core.parse_batch, too_deep.encode(), RECEIVE_NS) == NOT_JSON


def test_nesting_limit_covers_unknown_keys_and_messages_past_the_limit(core: ModuleType) -> None:
    ok = '{"x":' + nested(126) + ',"messages":[{}]}'
    assert parse(core, ok).reasons() == ["INVALID_SCHEMA"]
    for body in (
        '{"x":' + nested(127) + ',"messages":[{}]}',
        '{"messages":[' + ",".join(["{}"] * 100 + [nested(126)]) + "]}",
        '{"messages":[' + "{}," * 200 + nested(100_000) + "]}",
    ):
        assert body_error(core, core.parse_batch, body.encode(), RECEIVE_NS) == NOT_JSON


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"1",
        b'"messages"',
        b"null",
        b"{}",
        b'{"message":[{}]}',
        b'{"messages":{}}',
        b'{"messages":"[]"}',
        b'{"messages":null}',
        b'{"Messages":[{}]}',
        b'{"messages":[{}],"messages":{}}',
        b'[{"messages":[{}]}]',
    ],
)
def test_a_body_without_a_messages_list_is_refused_whole(core: ModuleType, body: bytes) -> None:
    assert body_error(core, core.parse_batch, body, RECEIVE_NS) == NO_MESSAGES


def test_the_last_messages_key_wins_and_may_be_escaped(core: ModuleType) -> None:
    body = '{"messages":null,"m\\u0065ssages":[' + compact(message()).decode() + "]}"
    assert parse(core, body).reasons() == [None]


def test_an_empty_batch_is_refused(core: ModuleType) -> None:
    assert body_error(core, core.parse_batch, b'{"messages":[]}', RECEIVE_NS) == "batch is empty"


def test_one_and_a_hundred_messages_are_a_batch(core: ModuleType) -> None:
    assert parse(core, batch_body(message())).reasons() == [None]
    batch = parse(core, batch_body(*[message(seq=i) for i in range(100)]))
    assert len(batch) == 100
    assert batch.reasons() == [None] * 100


def test_a_hundred_and_one_messages_are_refused_whole(core: ModuleType) -> None:
    body = batch_body(*[message()] * 101)
    detail = body_error(core, core.parse_batch, body, RECEIVE_NS)
    assert detail == "batch has 101 messages; at most 100 are allowed"


def test_whole_body_errors_are_checked_in_order(core: ModuleType) -> None:
    # Invalid JSON anywhere beats a missing list; a deep unknown key beats the count.
    assert body_error(core, core.parse_batch, b'{"x":1,,"messages":[]}', RECEIVE_NS) == NOT_JSON
    too_many_and_deep = '{"messages":[' + ",".join(["{}"] * 101) + '],"y":' + nested(127) + "}"
    assert body_error(core, core.parse_batch, too_many_and_deep.encode(), RECEIVE_NS) == NOT_JSON


# -- per-item results ------------------------------------------------------------------------


def test_a_valid_message_is_accepted_and_encoded(core: ModuleType) -> None:
    batch = parse(core, batch_body(message()))
    assert batch.reasons() == [None]
    assert batch.groups() == [("acme", "dev-1", "site-1", "tok-1", 1)]
    assert batch.tenant_lines() == [("acme", LINE, 1)]
    assert batch.reason_counts() == []
    assert batch.response_json() == (
        1,
        0,
        b'{"accepted":1,"rejected":0,"results":'
        b'[{"index":0,"status":"accepted","device_id":"dev-1"}]}',
    )


def test_a_batch_with_bad_items_accepts_the_rest(core: ModuleType) -> None:
    batch = parse(
        core,
        batch_body(message(), message(msg_type="event"), 5, message(device_id="dev-2")),
    )
    assert batch.reasons() == [None, "INVALID_MSG_TYPE", "INVALID_SCHEMA", None]
    assert batch.reason_counts() == [("INVALID_MSG_TYPE", 1), ("INVALID_SCHEMA", 1)]
    assert batch.response_json()[2] == (
        b'{"accepted":2,"rejected":2,"results":['
        b'{"index":0,"status":"accepted","device_id":"dev-1"},'
        b'{"index":1,"status":"rejected","reason":"INVALID_MSG_TYPE",'
        b'"detail":"msg_type \'event\' is not one of: telemetry, heartbeat","device_id":"dev-1"},'
        b'{"index":2,"status":"rejected","reason":"INVALID_SCHEMA",'
        b'"detail":"message must be a JSON object, got a number"},'
        b'{"index":3,"status":"accepted","device_id":"dev-2"}]}'
    )


@pytest.mark.parametrize("size", [8192, 8193])
def test_a_message_over_max_payload_bytes_is_too_large(core: ModuleType, size: int) -> None:
    raw = sized_message(size)
    assert len(raw) == size
    want = None if size <= 8192 else "PAYLOAD_TOO_LARGE"
    assert parse(core, b'{"messages":[' + raw + b"]}").reasons() == [want]


def test_payload_size_is_the_raw_element_in_bytes_without_surrounding_whitespace(
    core: ModuleType,
) -> None:
    wide = message(pad="é" * 40)  # 2 bytes each in UTF-8
    raw = compact(wide)
    body = b'{"messages":[ \n\t' + raw + b"\r\n , " + raw + b" ]}"
    assert parse(core, body, max_payload_bytes=len(raw)).reasons() == [None, None]
    assert parse(core, body, max_payload_bytes=len(raw) - 1).reasons() == ["PAYLOAD_TOO_LARGE"] * 2
    spaced = raw.replace(b",", b" , ")
    assert parse(core, b'{"messages":[' + spaced + b"]}", max_payload_bytes=len(raw)).reasons() == [
        "PAYLOAD_TOO_LARGE"
    ]


def test_payload_too_large_comes_before_every_other_reason(core: ModuleType) -> None:
    assert parse(core, raw_batch_body('"' + "x" * 9000 + '"')).reasons() == ["PAYLOAD_TOO_LARGE"]
    big_bad = message(tenant_id="BAD", pad="x" * 9000)
    assert reason_of(core, big_bad) == "PAYLOAD_TOO_LARGE"
    assert reason_of(core, message(metrics={"x": "y"}), max_payload_bytes=10) == (
        "PAYLOAD_TOO_LARGE"
    )


@pytest.mark.parametrize("element", ["1", '"msg"', "null", "true", "[]", '[{"tenant_id":"acme"}]'])
def test_a_message_that_is_not_an_object_has_an_invalid_schema(
    core: ModuleType, element: str
) -> None:
    assert raw_reason(core, element) == "INVALID_SCHEMA"


@pytest.mark.parametrize(
    "field", ["tenant_id", "device_id", "site_id", "provision_token", "msg_type"]
)
@pytest.mark.parametrize("value", [DROP, None, 1, True, ["x"], {"x": 1}])
def test_a_missing_or_non_string_identity_field_is_invalid_schema(
    core: ModuleType, field: str, value: object
) -> None:
    assert reason_of(core, message(**{field: value})) == "INVALID_SCHEMA"


@pytest.mark.parametrize(
    ("tenant", "valid"),
    [
        ("a" * 64, True),
        ("a" * 65, False),
        ("t", True),
        ("acme_01-eu", True),
        ("", False),
        ("Acme", False),
        ("acme.eu", False),
        ("acme eu", False),
        ("acmé", False),
        ("acme\n", False),
    ],
)
def test_tenant_id_names_a_database(core: ModuleType, tenant: str, valid: bool) -> None:
    assert reason_of(core, message(tenant_id=tenant)) == (None if valid else "INVALID_SCHEMA")


@pytest.mark.parametrize("field", ["device_id", "site_id", "provision_token"])
@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("d" * 128, True),
        ("d" * 129, False),
        ("é" * 64, True),
        ("é" * 64 + "d", False),
        ("€" * 42 + "dd", True),
        ("€" * 43, False),
        ("😀" * 32, True),
        ("", False),
        ("a b,c=d", True),
        ('"quoted"', True),
        ("湿度", True),
        ("\xa0nbsp", True),
        ("nul\x00", False),
        ("unit\x1f", False),
        ("del\x7f", False),
        ("c1\x80", False),
        ("c1\x9f", False),
        ("new\nline", False),
        ("cr\r", False),
        ("tab\t", False),
        ("back\\slash", False),
        ("trail\\", False),
    ],
)
def test_ids_are_1_to_128_bytes_without_control_characters_or_backslashes(
    core: ModuleType, field: str, value: str, valid: bool
) -> None:
    assert reason_of(core, message(**{field: value})) == (None if valid else "INVALID_SCHEMA")


@pytest.mark.parametrize("field", ["tenant_id", "device_id", "site_id", "provision_token"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "ab\\ud800\\u0041", "\\udfff\\ud800"])
def test_an_id_holding_a_lone_surrogate_is_invalid_and_not_echoed(
    core: ModuleType, field: str, escape: str
) -> None:
    text = compact(message()).decode().replace(json.dumps(message()[field]), f'"{escape}"', 1)
    batch = parse(core, raw_batch_body(text))
    assert batch.reasons() == ["INVALID_SCHEMA"]
    result = json.loads(batch.response_json()[2])["results"][0]
    assert ("device_id" in result) == (field != "device_id")


def test_a_surrogate_pair_escape_is_one_valid_character(core: ModuleType) -> None:
    text = compact(message()).decode().replace('"dev-1"', '"d\\ud83d\\ude00"')
    batch = parse(core, raw_batch_body(text))
    assert batch.reasons() == [None]
    assert batch.groups()[0][1] == "d😀"
    assert batch.tenant_lines()[0][1].startswith("telemetry,device_id=d😀,".encode())


def test_escaped_keys_and_values_are_decoded_before_validation(core: ModuleType) -> None:
    text = compact(message()).decode()
    text = text.replace('"tenant_id"', '"tenant\\u005fid"').replace('"site-1"', '"site\\u002d1"')
    assert parse(core, raw_batch_body(text)).tenant_lines() == [("acme", LINE, 1)]


@pytest.mark.parametrize("msg_type", ["telemetry", "heartbeat"])
def test_telemetry_and_heartbeat_are_the_message_types(core: ModuleType, msg_type: str) -> None:
    assert line_of(core, message(msg_type=msg_type)).startswith(msg_type.encode() + b",")


@pytest.mark.parametrize("msg_type", ["Telemetry", "event", "", " telemetry", "telemetry\n"])
def test_any_other_message_type_is_invalid(core: ModuleType, msg_type: str) -> None:
    assert reason_of(core, message(msg_type=msg_type)) == "INVALID_MSG_TYPE"


def test_lone_surrogate_message_type_is_an_invalid_type(core: ModuleType) -> None:
    text = compact(message()).decode().replace('"telemetry"', '"\\ud800"')
    assert raw_reason(core, text) == "INVALID_MSG_TYPE"


def test_rules_apply_in_order_schema_type_timestamp_metrics(core: ModuleType) -> None:
    everything_wrong = message(tenant_id="X", msg_type="x", ts="x", metrics="x")
    assert reason_of(core, everything_wrong) == "INVALID_SCHEMA"
    assert reason_of(core, message(msg_type="x", ts="x", metrics="x")) == "INVALID_MSG_TYPE"
    assert reason_of(core, message(ts="x", metrics="x")) == "INVALID_TIMESTAMP"
    assert reason_of(core, message(metrics="x")) == "INVALID_METRICS"


def test_unknown_keys_are_ignored_and_duplicate_keys_last_wins(core: ModuleType) -> None:
    text = compact(message(extra={"deep": [1, 2]})).decode()
    text = '{"device_id":"first",' + text[1:].replace('"seq":7', '"seq":-1,"seq":7')
    text = text.replace('"metrics":{"temp":21.5}', '"metrics":{"temp":1,"temp":21.5}')
    assert parse(core, raw_batch_body(text)).tenant_lines() == [("acme", LINE, 1)]


# -- seq ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "encoded"),
    [
        ("0", b"0i"),
        ("-0", b"0i"),
        ("null", b"0i"),
        ("42", b"42i"),
        ("9223372036854775807", b"9223372036854775807i"),
    ],
)
def test_seq_is_an_integer_from_0_to_2_63_minus_1(
    core: ModuleType, seq: str, encoded: bytes
) -> None:
    text = compact(message()).decode().replace('"seq":7', f'"seq":{seq}')
    batch = parse(core, raw_batch_body(text))
    assert batch.tenant_lines()[0][1] == LINE.replace(b"seq=7i", b"seq=" + encoded)


def test_an_absent_seq_is_zero(core: ModuleType) -> None:
    assert line_of(core, message(seq=DROP)) == LINE.replace(b"seq=7i", b"seq=0i")


@pytest.mark.parametrize(
    "seq",
    ["9223372036854775808", "-1", "1.0", "1e2", "0.5", '"5"', "true", "[1]", "{}", "1" * 400],
)
def test_any_other_seq_is_invalid_schema(core: ModuleType, seq: str) -> None:
    text = compact(message()).decode().replace('"seq":7', f'"seq":{seq}')
    assert raw_reason(core, text) == "INVALID_SCHEMA"


# -- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        ("2024-05-01T12:30:45Z", 1_714_566_645_000_000_000),
        ("2024-05-01t12:30:45z", 1_714_566_645_000_000_000),
        ("2024-05-01T14:30:45+02:00", 1_714_566_645_000_000_000),
        ("2024-05-01T12:00:45-00:30", 1_714_566_645_000_000_000),
        ("2024-05-01T12:30:45-00:00", 1_714_566_645_000_000_000),
        ("2024-05-01T12:30:45.5Z", 1_714_566_645_500_000_000),
        ("2024-05-01T12:30:45.000000001Z", 1_714_566_645_000_000_001),
        ("2024-05-01T12:30:45.123456789Z", 1_714_566_645_123_456_789),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000_000_000),
        ("2000-02-29T00:00:00Z", 951_782_400_000_000_000),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("1970-01-01T00:00:00-23:59", 86_340_000_000_000),
        ("2262-04-11T23:47:16.854775806Z", 9_223_372_036_854_775_806),
        ("1677-09-21T00:12:43.145224194Z", -9_223_372_036_854_775_806),
    ],
)
def test_ts_is_rfc3339_with_an_offset_in_ns(core: ModuleType, ts: str, ns: int) -> None:
    assert line_of(core, message(ts=ts)).endswith(b" %d\n" % ns)


@pytest.mark.parametrize("ts", [DROP, None])
def test_an_absent_ts_is_the_receive_time(core: ModuleType, ts: object) -> None:
    assert line_of(core, message(ts=ts)).endswith(b" %d\n" % RECEIVE_NS)


def test_ts_less_messages_get_the_receive_time_plus_their_index(core: ModuleType) -> None:
    msgs = [message(ts=DROP), message(), message(seq=-1), message(ts=None), message(ts=DROP)]
    batch = parse(core, batch_body(*msgs))
    assert batch.reasons() == [None, None, "INVALID_SCHEMA", None, None]
    [(_, lines, _)] = batch.tenant_lines()
    # One device, one series: without distinct timestamps InfluxDB would keep only the last.
    assert [line["time"] for line in read_lines(lines)] == [
        RECEIVE_NS,
        TS_NS,
        RECEIVE_NS + 3,
        RECEIVE_NS + 4,
    ]


def test_only_the_last_messages_list_counts_for_the_index(core: ModuleType) -> None:
    first, last = compact(message()).decode(), compact(message(ts=None)).decode()
    body = f'{{"messages":[{first},{first}],"messages":[{last}]}}'
    assert parse(core, body).tenant_lines()[0][1].endswith(b" %d\n" % RECEIVE_NS)


MAX_NS = 9_223_372_036_854_775_806


@pytest.mark.parametrize(
    ("receive_ns", "reasons"),
    [
        (MAX_NS - 1, [None, None]),
        (MAX_NS, [None, "INVALID_TIMESTAMP"]),
        (2**63 - 1, ["INVALID_TIMESTAMP", "INVALID_TIMESTAMP"]),
        (-MAX_NS, [None, None]),
        (-MAX_NS - 1, ["INVALID_TIMESTAMP", None]),
        (-(2**63), ["INVALID_TIMESTAMP", "INVALID_TIMESTAMP"]),
    ],
)
def test_a_ts_less_timestamp_outside_influxdbs_range_is_invalid(
    core: ModuleType, receive_ns: int, reasons: list[str | None]
) -> None:
    batch = core.parse_batch(batch_body(message(ts=DROP), message(ts=None)), receive_ns)
    assert batch.reasons() == reasons
    accepted = b"".join(lines for _, lines, _ in batch.tenant_lines())
    times = [line["time"] for line in read_lines(accepted)] if accepted else []
    assert times == [receive_ns + i for i, r in enumerate(reasons) if r is None]


@pytest.mark.parametrize(
    "ts",
    [
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2100-02-29T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-01T00:00:00Z",
        "2024-05-00T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T00:60:00Z",
        "2024-05-01T23:59:60Z",
        "2024-05-01T00:00:00+24:00",
        "2024-05-01T00:00:00+00:60",
        "2024-05-01T00:00:00",
        "2024-05-01",
        "2024-05-01 00:00:00Z",
        "2024-05-01T00:00:00.Z",
        "2024-05-01T00:00:00.1234567890Z",
        "2024-05-01T00:00:00+0100",
        "2024-05-01T00:00:00+01",
        "2024-05-01T00:00:00Z ",
        " 2024-05-01T00:00:00Z",
        "2024-05-01T00:00:00Z\n",
        "\uff12024-05-01T00:00:00Z",  # a fullwidth digit
        "+2024-05-01T00:00:00Z",
        "24-05-01T00:00:00Z",
        "2262-04-11T23:47:16.854775807Z",
        "1677-09-21T00:12:43.145224193Z",
        "2262-04-12T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "",
        1714566645,
        1714566645.5,
        True,
        ["2024-05-01T00:00:00Z"],
        {},
    ],
)
def test_any_other_ts_is_invalid(core: ModuleType, ts: object) -> None:
    assert reason_of(core, message(ts=ts)) == "INVALID_TIMESTAMP"


def test_a_lone_surrogate_ts_is_invalid(core: ModuleType) -> None:
    text = compact(message()).decode().replace('"2024-05-01T12:30:45Z"', '"2024\\ud800"')
    assert raw_reason(core, text) == "INVALID_TIMESTAMP"


# -- metrics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "encoded"),
    [
        ("22", "22.0"),
        ("22.0", "22.0"),
        ("-0", "-0.0"),
        ("-0.0", "-0.0"),
        ("0", "0.0"),
        ("0.0001", "0.0001"),
        ("0.00001", "1e-05"),
        ("1.5e-5", "1.5e-05"),
        ("1E16", "1e+16"),
        ("1234567890123456", "1234567890123456.0"),
        ("12345678901234567", "1.2345678901234568e+16"),
        ("9007199254740993", "9007199254740992.0"),
        ("0.1", "0.1"),
        ("-273.15", "-273.15"),
        ("1e-400", "0.0"),
        ("5e-324", "5e-324"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("1" + "0" * 300, "1e+300"),
        ("true", "true"),
        ("false", "false"),
    ],
)
def test_metric_values_are_canonical_floats_or_bools(
    core: ModuleType, number: str, encoded: str
) -> None:
    text = compact(message()).decode().replace('{"temp":21.5}', f'{{"temp":{number}}}')
    batch = parse(core, raw_batch_body(text))
    assert batch.tenant_lines()[0][1] == LINE.replace(b"21.5", encoded.encode())


@pytest.mark.parametrize("metrics", [DROP, None, {}])
def test_absent_or_empty_metrics_leave_only_seq(core: ModuleType, metrics: object) -> None:
    expected = b"telemetry,device_id=dev-1,site_id=site-1 seq=7i 1714566645000000000\n"
    assert line_of(core, message(metrics=metrics)) == expected


def test_fields_are_sorted_by_code_point_then_seq(core: ModuleType) -> None:
    metrics = {"z": 1, "é": 2, "B": 3, "a": True, "b": False, "_": 4, "😀": 5, "\uffff": 6}
    fields = line_of(core, message(metrics=metrics)).split(b" ")[1]
    assert fields.decode() == "B=3.0,_=4.0,a=true,b=false,z=1.0,é=2.0,\uffff=6.0,😀=5.0,seq=7i"


@pytest.mark.parametrize("count", [256, 257])
def test_at_most_256_metrics(core: ModuleType, count: int) -> None:
    metrics = {f"m{i:03d}": i for i in range(count)}
    want = None if count == 256 else "INVALID_METRICS"
    assert reason_of(core, message(metrics=metrics)) == want


def test_a_duplicate_metric_name_keeps_only_its_last_value(core: ModuleType) -> None:
    pairs = '"temp":"x","temp":null,"hum":[1],"temp":22,"hum":1e400,"hum":true'
    text = compact(message()).decode().replace('{"temp":21.5}', "{" + pairs + "}")
    batch = parse(core, raw_batch_body(text))
    assert batch.tenant_lines() == [("acme", LINE.replace(b"temp=21.5", b"hum=true,temp=22.0"), 1)]


def test_metric_count_is_after_last_wins_dedup(core: ModuleType) -> None:
    pairs = ",".join(f'"m{i:03d}":{i}' for i in range(256)) + ',"m000":1'
    text = compact(message()).decode().replace('{"temp":21.5}', "{" + pairs + "}")
    assert raw_reason(core, text) is None


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("n" * 128, True),
        ("n" * 129, False),
        ("é" * 64, True),
        ("é" * 64 + "n", False),
        ("", False),
        ("seq", False),
        ("time", False),
        ("device_id", False),
        ("site_id", False),
        ("Seq", True),
        ("tenant_id", True),
        ("msg_type", True),
        ("new\nline", False),
        ("nul\x00", False),
        ("c1\x85", False),
        ("back\\slash", False),
        ("a b,c=d", True),
        ('"q"', True),
        ("#hash", True),
    ],
)
def test_metric_names_follow_the_id_rules_and_are_not_reserved(
    core: ModuleType, name: str, valid: bool
) -> None:
    want = None if valid else "INVALID_METRICS"
    assert reason_of(core, message(metrics={"ok": 1, name: 2})) == want


@pytest.mark.parametrize(
    "value", ["null", '"22"', "[22]", '{"v":22}', "1e400", "-1e400", "9" * 400]
)
def test_a_metric_value_that_is_not_a_finite_number_or_bool_is_invalid(
    core: ModuleType, value: str
) -> None:
    text = compact(message()).decode().replace('{"temp":21.5}', f'{{"ok":1,"temp":{value}}}')
    assert raw_reason(core, text) == "INVALID_METRICS"


@pytest.mark.parametrize("metrics", ["[]", '"temp"', "1", "true"])
def test_metrics_that_are_not_an_object_are_invalid(core: ModuleType, metrics: str) -> None:
    text = compact(message()).decode().replace('{"temp":21.5}', metrics)
    assert raw_reason(core, text) == "INVALID_METRICS"


def test_a_lone_surrogate_metric_name_is_invalid(core: ModuleType) -> None:
    text = compact(message()).decode().replace('{"temp":21.5}', '{"t\\udc00":1}')
    assert raw_reason(core, text) == "INVALID_METRICS"


# -- escaping ----------------------------------------------------------------------------------


def test_tag_values_and_field_keys_escape_comma_equals_and_space(core: ModuleType) -> None:
    msg = message(
        device_id="dev 1,x=y",
        site_id='"site" é 湿度',
        metrics={"a b": 1, "c,d": 2, "e=f": 3, 'g"h': 4, "température": 5},
    )
    line = line_of(core, msg)
    assert line.decode() == (
        'telemetry,device_id=dev\\ 1\\,x\\=y,site_id="site"\\ é\\ 湿度 '
        'a\\ b=1.0,c\\,d=2.0,e\\=f=3.0,g"h=4.0,température=5.0,seq=7i 1714566645000000000\n'
    )
    [parsed] = read_lines(line)
    assert parsed == {
        "measurement": "telemetry",
        "tags": {"device_id": "dev 1,x=y", "site_id": '"site" é 湿度'},
        "fields": {"a b": 1.0, "c,d": 2.0, "e=f": 3.0, 'g"h': 4.0, "température": 5.0, "seq": 7},
        "time": TS_NS,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "d\nweather,device_id=x t=1 1"),
        ("site_id", "s\r\n"),
        ("device_id", "d\\"),
        ("site_id", "s\\ ,x=1"),
    ],
)
def test_nothing_a_client_sends_can_end_a_line_or_escape_the_escaping(
    core: ModuleType, field: str, value: str
) -> None:
    assert reason_of(core, message(**{field: value})) == "INVALID_SCHEMA"
    metrics = {value: 1}
    assert reason_of(core, message(metrics=metrics)) == "INVALID_METRICS"


def test_encoded_lines_read_back_as_the_values_sent(core: ModuleType) -> None:
    msgs = [
        message(device_id=f"dev {i}", seq=i, metrics={"v=1": i / 7, "on": i % 2 == 0})
        for i in range(5)
    ] + [message(msg_type="heartbeat", ts=None, metrics=None, site_id="s,1")]
    [(tenant, lines, count)] = parse(core, batch_body(*msgs)).tenant_lines()
    assert (tenant, count) == ("acme", 6)
    parsed = read_lines(lines)
    for i in range(5):
        assert parsed[i] == {
            "measurement": "telemetry",
            "tags": {"device_id": f"dev {i}", "site_id": "site-1"},
            "fields": {"v=1": i / 7, "on": i % 2 == 0, "seq": i},
            "time": TS_NS,
        }
    assert parsed[5] == {
        "measurement": "heartbeat",
        "tags": {"device_id": "dev-1", "site_id": "s,1"},
        "fields": {"seq": 7},
        "time": RECEIVE_NS + 5,
    }


# -- response JSON -----------------------------------------------------------------------------


def test_response_echoes_device_ids_escaped_like_json_dumps(core: ModuleType) -> None:
    ids = ["back\\slash", "new\nline", "ctl\x01\x1f\x08\x0c\t\r", "é湿度😀\x7f", 'q"uote/é']
    batch = parse(core, batch_body(*[message(device_id=d) for d in ids]))
    assert batch.reasons() == ["INVALID_SCHEMA"] * 4 + [None]
    rule = " is not a valid id: 1 to 128 bytes of UTF-8 without control characters or backslashes"
    assert batch.response_json() == (
        1,
        4,
        '{"accepted":1,"rejected":4,"results":['
        '{"index":0,"status":"rejected","reason":"INVALID_SCHEMA",'
        f'"detail":"device_id \'back\\\\slash\'{rule}","device_id":"back\\\\slash"}},'
        '{"index":1,"status":"rejected","reason":"INVALID_SCHEMA",'
        f'"detail":"device_id \'new\\\\u000aline\'{rule}","device_id":"new\\nline"}},'
        '{"index":2,"status":"rejected","reason":"INVALID_SCHEMA",'
        '"detail":"device_id \'ctl\\\\u0001\\\\u001f\\\\u0008\\\\u000c\\\\u0009\\\\u000d\''
        f'{rule}","device_id":"ctl\\u0001\\u001f\\b\\f\\t\\r"}},'
        '{"index":3,"status":"rejected","reason":"INVALID_SCHEMA",'
        f'"detail":"device_id \'é湿度😀\\\\u007f\'{rule}","device_id":"é湿度😀\x7f"}},'
        '{"index":4,"status":"accepted","device_id":"q\\"uote/é"}]}'.encode(),
    )


def test_response_has_no_device_id_when_it_is_not_a_string(core: ModuleType) -> None:
    batch = parse(core, batch_body(message(device_id=1), message(device_id=DROP), [1]))
    assert batch.response_json()[2] == (
        b'{"accepted":0,"rejected":3,"results":['
        b'{"index":0,"status":"rejected","reason":"INVALID_SCHEMA",'
        b'"detail":"device_id must be a string, got a number"},'
        b'{"index":1,"status":"rejected","reason":"INVALID_SCHEMA",'
        b'"detail":"device_id is missing"},'
        b'{"index":2,"status":"rejected","reason":"INVALID_SCHEMA",'
        b'"detail":"message must be a JSON object, got an array"}]}'
    )


def test_response_echoes_the_device_id_of_a_too_large_message(core: ModuleType) -> None:
    batch = parse(core, batch_body(message(device_id="big")), max_payload_bytes=10)
    assert batch.response_json()[2] == (
        b'{"accepted":0,"rejected":1,"results":['
        b'{"index":0,"status":"rejected","reason":"PAYLOAD_TOO_LARGE",'
        b'"detail":"message is 166 bytes; the limit is 10 bytes","device_id":"big"}]}'
    )


# -- groups and verdicts -----------------------------------------------------------------------


def mixed_batch(core: ModuleType) -> Any:
    return parse(
        core,
        batch_body(
            message(device_id="a"),
            message(device_id="b"),
            message(device_id="a"),
            message(device_id="a", tenant_id="BAD"),
            message(device_id="a", site_id="other"),
            message(device_id="b"),
            message(device_id="a", metrics={"x": None}),
            message(device_id="a"),
            message(device_id="c", tenant_id="beta"),
        ),
    )


def test_groups_are_distinct_valid_identities_in_order_of_first_appearance(
    core: ModuleType,
) -> None:
    assert mixed_batch(core).groups() == [
        ("acme", "a", "site-1", "tok-1", 3),
        ("acme", "b", "site-1", "tok-1", 2),
        ("acme", "a", "other", "tok-1", 1),
        ("beta", "c", "site-1", "tok-1", 1),
    ]


def test_resolve_keeps_the_first_allowed_items_of_each_group(core: ModuleType) -> None:
    batch = mixed_batch(core)
    batch.resolve([(2, "RATE_LIMITED"), (0, "UNAUTHORIZED"), (0, "SITE_MISMATCH"), (5, None)])
    assert batch.reasons() == [
        None,
        "UNAUTHORIZED",
        None,
        "INVALID_SCHEMA",
        "SITE_MISMATCH",
        "UNAUTHORIZED",
        "INVALID_METRICS",
        "RATE_LIMITED",
        None,
    ]
    assert batch.reason_counts() == [
        ("INVALID_SCHEMA", 1),
        ("INVALID_METRICS", 1),
        ("UNAUTHORIZED", 2),
        ("SITE_MISMATCH", 1),
        ("RATE_LIMITED", 1),
    ]
    lines = batch.tenant_lines()
    assert [(t, n) for t, _, n in lines] == [("acme", 2), ("beta", 1)]
    assert [p["tags"]["device_id"] for p in read_lines(lines[0][1])] == ["a", "a"]
    accepted, rejected, body = batch.response_json()
    assert (accepted, rejected) == (3, 6)
    assert [r.get("reason") for r in json.loads(body)["results"]] == batch.reasons()


def test_a_tenant_with_nothing_accepted_has_no_lines(core: ModuleType) -> None:
    batch = mixed_batch(core)
    batch.resolve([(3, None), (2, None), (1, None), (0, "UNAUTHORIZED")])
    assert [(t, n) for t, _, n in batch.tenant_lines()] == [("acme", 6)]


def test_every_reason_code_is_a_verdict_reason(core: ModuleType) -> None:
    for code in ("UNAUTHORIZED", "SITE_MISMATCH", "RATE_LIMITED", "BUFFER_FULL", "INVALID_SCHEMA"):
        batch = parse(core, batch_body(message()))
        batch.resolve([(0, code)])
        assert batch.reasons() == [code]


@pytest.mark.parametrize(
    ("verdicts", "error"),
    [
        ([], "expected 4 verdicts, got 0"),
        ([(3, None)] * 5, "expected 4 verdicts, got 5"),
        ([(3, None), (2, None), (1, None), (0, "NOPE")], 'unknown reason code "NOPE"'),
        ([(3, None), (2, None), (1, None), (1, "rate_limited")], "unknown reason code"),
        (
            [(3, None), (1, None), (1, None), (1, None)],
            "verdict 1 rejects items but gives no reason",
        ),
        ([(3, None), (2, None), (-1, "UNAUTHORIZED"), (1, None)], "verdict 2 allows a negative"),
    ],
)
def test_wrong_verdicts_raise_value_error_and_change_nothing(
    core: ModuleType, verdicts: list[tuple[int, str | None]], error: str
) -> None:
    batch = mixed_batch(core)
    before = batch.reasons()
    with pytest.raises(ValueError, match=re.escape(error)):
        batch.resolve(verdicts)
    assert batch.reasons() == before


def test_verdicts_apply_once(core: ModuleType) -> None:
    batch = parse(core, batch_body(message()))
    batch.resolve([(1, None)])
    with pytest.raises(ValueError, match="verdicts were already applied to this batch"):
        batch.resolve([(0, "UNAUTHORIZED")])
    assert batch.reasons() == [None]


def test_verdicts_come_before_append(core: ModuleType) -> None:
    batch = parse(core, batch_body(message()))
    core.TenantBuffers().append(batch)
    with pytest.raises(ValueError, match="this batch was already appended"):
        batch.resolve([(0, "UNAUTHORIZED")])
    assert batch.reasons() == [None]


def test_a_batch_without_valid_items_has_no_groups(core: ModuleType) -> None:
    batch = parse(core, batch_body(message(seq=-1), 3))
    assert batch.groups() == []
    batch.resolve([])
    assert batch.reasons() == ["INVALID_SCHEMA", "INVALID_SCHEMA"]
    assert batch.tenant_lines() == []


# -- single-message form -----------------------------------------------------------------------


def single(core: ModuleType, body: bytes | str, **kwargs: Any) -> Any:
    if isinstance(body, str):
        body = body.encode()
    identity = {
        "tenant_id": "acme",
        "device_id": "dev-1",
        "msg_type": "telemetry",
        "provision_token": "tok-1",
    }
    identity.update(kwargs.pop("identity", {}))
    return core.parse_single(body, *identity.values(), RECEIVE_NS, **kwargs)


def test_single_message_takes_its_identity_from_the_arguments(core: ModuleType) -> None:
    own = {"tenant_id": "BAD", "device_id": 5, "msg_type": "heartbeat", "provision_token": None}
    batch = single(core, compact(message(**own)))
    assert len(batch) == 1
    assert batch.tenant_lines() == [("acme", LINE, 1)]
    assert batch.groups() == [("acme", "dev-1", "site-1", "tok-1", 1)]


def test_a_ts_less_single_message_gets_the_receive_time(core: ModuleType) -> None:
    [(_, lines, count)] = single(core, b'{"site_id":"site-1"}').tenant_lines()
    assert count == 1
    assert lines.endswith(b" %d\n" % RECEIVE_NS)


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        ({"tenant_id": "Acme"}, "INVALID_SCHEMA"),
        ({"device_id": ""}, "INVALID_SCHEMA"),
        ({"device_id": "d" * 129}, "INVALID_SCHEMA"),
        ({"provision_token": "t\n"}, "INVALID_SCHEMA"),
        ({"msg_type": "event"}, "INVALID_MSG_TYPE"),
        ({"msg_type": "heartbeat"}, None),
    ],
)
def test_single_message_validates_its_arguments_like_fields(
    core: ModuleType, identity: dict[str, str], reason: str | None
) -> None:
    body = compact({"site_id": "site-1", "metrics": {"temp": 1}})
    assert single(core, body, identity=identity).reasons() == [reason]


def test_single_message_response_echoes_the_argument_device_id(core: ModuleType) -> None:
    batch = single(core, b"{}", identity={"device_id": 'd"1'})
    assert batch.response_json()[2] == (
        b'{"accepted":0,"rejected":1,"results":['
        b'{"index":0,"status":"rejected","reason":"INVALID_SCHEMA",'
        b'"detail":"site_id is missing","device_id":"d\\"1"}]}'
    )


@pytest.mark.parametrize("size", [8192, 8193])
def test_single_message_size_is_the_body_without_outer_whitespace(
    core: ModuleType, size: int
) -> None:
    body = b" \r\n\t" + sized_message(size) + b"\n\n"
    want = None if size <= 8192 else "PAYLOAD_TOO_LARGE"
    assert single(core, body).reasons() == [want]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", NOT_JSON),
        (b"{", NOT_JSON),
        (b'{"a":NaN}', NOT_JSON),
        (b"\xc3", NOT_JSON),
        (b"{} {}", NOT_JSON),
        (nested(128).encode(), NOT_JSON),
        (b"[]", "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
        (b'"{}"', "body must be a JSON object"),
        (b"1", "body must be a JSON object"),
        (nested(127).encode(), "body must be a JSON object"),
    ],
)
def test_single_message_body_errors(core: ModuleType, body: bytes, detail: str) -> None:
    assert body_error(core, single, core, body) == detail


def test_single_message_nesting_limit(core: ModuleType) -> None:
    ok = "{" + '"a":{' * 126 + "}" * 127
    assert single(core, ok).reasons() == ["INVALID_SCHEMA"]
    too_deep = "{" + '"a":{' * 127 + "}" * 128
    assert body_error(core, single, core, too_deep) == NOT_JSON


# -- TenantBuffers -----------------------------------------------------------------------------


def lines_for(tenant: str, count: int, start: int = 0) -> bytes:
    return b"".join(
        b"m,t=%s v=%di %d\n" % (tenant.encode(), i, i) for i in range(start, start + count)
    )


def test_append_buffers_accepted_lines_per_tenant(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    batch = mixed_batch(core)
    assert buffers.append(batch) == []
    [(_, acme, _), (_, beta, _)] = batch.tenant_lines()
    assert batch.tenant_lines() == [("acme", acme, 6), ("beta", beta, 1)]
    assert buffers.depth() == {"acme": (6, len(acme)), "beta": (1, len(beta))}
    assert buffers.total_bytes == len(acme) + len(beta)
    assert sorted(buffers.tenants()) == ["acme", "beta"]
    assert buffers.drain("acme") == (acme, 6)
    assert buffers.drain("beta") == (beta, 1)


def test_append_returns_tenants_at_batch_size_or_flush_bytes(core: ModuleType) -> None:
    buffers = core.TenantBuffers(batch_size=3, flush_bytes=len(LINE) * 2 + 1)
    assert buffers.append(parse(core, batch_body(message(), message()))) == []
    assert buffers.ready() == []
    assert buffers.append(parse(core, batch_body(message()))) == ["acme"]
    assert buffers.ready() == ["acme"]
    by_bytes = core.TenantBuffers(batch_size=100, flush_bytes=len(LINE) * 2)
    assert by_bytes.append(parse(core, batch_body(message(), message()))) == ["acme"]


def test_append_reports_tenants_in_order_of_first_appearance(core: ModuleType) -> None:
    buffers = core.TenantBuffers(batch_size=2)
    buffers.append_lines("a", b"x\n", 1)
    batch = parse(
        core,
        batch_body(
            message(tenant_id="c"),
            message(tenant_id="b"),
            message(tenant_id="a"),
            message(tenant_id="b"),
        ),
    )
    assert buffers.append(batch) == ["b", "a"]
    assert buffers.ready() == ["a", "b"]
    assert buffers.tenants() == ["a", "c", "b"]
    assert list(buffers.depth()) == ["a", "c", "b"]


def test_a_batch_appends_once(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    batch = parse(core, batch_body(message()))
    buffers.append(batch)
    with pytest.raises(ValueError, match="this batch was already appended"):
        buffers.append(batch)
    assert buffers.depth() == {"acme": (1, len(LINE))}


def test_items_over_the_cap_get_buffer_full_and_nothing_partial_is_stored(
    core: ModuleType,
) -> None:
    buffers = core.TenantBuffers(max_bytes=len(LINE) * 2 + 10)
    batch = parse(core, batch_body(message(), message(), message(tenant_id="x" * 3), message()))
    assert buffers.append(batch) == []
    assert batch.reasons() == [None, None, "BUFFER_FULL", "BUFFER_FULL"]
    assert batch.reason_counts() == [("BUFFER_FULL", 2)]
    assert batch.tenant_lines() == [("acme", LINE * 2, 2)]
    assert batch.response_json()[:2] == (2, 2)
    assert buffers.total_bytes == len(LINE) * 2
    assert buffers.depth() == {"acme": (2, len(LINE) * 2)}


def test_a_small_item_still_fits_after_a_large_one_did_not(core: ModuleType) -> None:
    big = message(device_id="d" * 100)
    buffers = core.TenantBuffers(max_bytes=len(LINE) + 20)
    batch = parse(core, batch_body(big, message()))
    buffers.append(batch)
    assert batch.reasons() == ["BUFFER_FULL", None]


def test_append_only_buffers_items_still_accepted_after_resolve(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    batch = mixed_batch(core)
    batch.resolve([(1, "RATE_LIMITED"), (0, "UNAUTHORIZED"), (1, None), (0, "UNAUTHORIZED")])
    buffers.append(batch)
    [(tenant, lines, count)] = batch.tenant_lines()
    assert buffers.depth() == {tenant: (count, len(lines))} == {"acme": (2, len(lines))}


def test_withdraw_rejects_the_accepted_items_of_unpublished_tenants(core: ModuleType) -> None:
    batch = mixed_batch(core)
    batch.resolve([(1, "RATE_LIMITED"), (0, "UNAUTHORIZED"), (1, None), (1, None)])
    published = batch.tenant_lines()
    assert [(t, n) for t, _, n in published] == [("acme", 2), ("beta", 1)]
    assert batch.withdraw(["beta", "gamma"], "UNAVAILABLE", "not stored") == 1
    assert batch.reasons()[-1] == "UNAVAILABLE"
    assert batch.details()[-1] == (len(batch) - 1, "not stored")
    assert batch.reason_counts()[-1] == ("UNAVAILABLE", 1)
    assert [(t, n) for t, _, n in batch.tenant_lines()] == [("acme", 2)]
    assert batch.response_json()[:2] == (2, 7)


def test_withdraw_happens_once_and_forbids_a_later_append(core: ModuleType) -> None:
    batch = parse(core, batch_body(message()))
    with pytest.raises(ValueError, match='unknown reason code "GONE"'):
        batch.withdraw(["acme"], "GONE", "")
    assert batch.withdraw([], "UNAVAILABLE", "") == 0
    with pytest.raises(ValueError, match="this batch was already appended"):
        batch.withdraw(["acme"], "UNAVAILABLE", "")
    with pytest.raises(ValueError, match="this batch was already appended"):
        core.TenantBuffers().append(batch)
    assert batch.reasons() == [None]


def test_append_lines_is_all_or_nothing(core: ModuleType) -> None:
    buffers = core.TenantBuffers(max_bytes=100)
    assert buffers.append_lines("t", b"a\nb\n", 2) is True
    assert buffers.append_lines("t", b"c\n" + b"x" * 94 + b"\n", 2) is False
    assert buffers.total_bytes == 4
    assert buffers.depth() == {"t": (2, 4)}


def test_append_lines_respects_the_cap_exactly(core: ModuleType) -> None:
    buffers = core.TenantBuffers(max_bytes=10)
    assert buffers.append_lines("t", b"abcd\n", 1) is True
    assert buffers.append_lines("u", b"abcdef\n", 1) is False
    assert buffers.append_lines("u", b"abcd\n", 1) is True
    assert buffers.total_bytes == 10
    assert buffers.append_lines("u", b"\n", 1) is False
    assert buffers.depth() == {"t": (1, 5), "u": (1, 5)}


@pytest.mark.parametrize(
    ("lines", "count"),
    [(b"a\nb\n", 1), (b"a\nb\n", 3), (b"a\nb", 2), (b"a\nb", 1), (b"", 0), (b"a\n", 0)],
)
def test_append_lines_refuses_lines_that_do_not_match_their_count(
    core: ModuleType, lines: bytes, count: int
) -> None:
    buffers = core.TenantBuffers()
    with pytest.raises(ValueError, match="lines must be line_count newline-terminated lines"):
        buffers.append_lines("t", lines, count)
    assert buffers.total_bytes == 0


def test_drain_takes_at_most_max_lines_whole_lines_oldest_first(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    buffers.append_lines("t", lines_for("t", 3), 3)
    buffers.append_lines("t", lines_for("t", 4, 3), 4)
    assert buffers.drain("t", max_lines=2) == (lines_for("t", 2), 2)
    buffers.settle("t", 2)
    assert buffers.drain("t", max_lines=4) == (lines_for("t", 4, 2), 4)
    buffers.settle("t", 4)
    assert buffers.depth() == {"t": (1, len(lines_for("t", 1, 6)))}
    assert buffers.drain("t") == (lines_for("t", 1, 6), 1)
    buffers.settle("t", 1)
    assert buffers.drain("t") is None
    assert buffers.drain("nobody") is None
    assert buffers.total_bytes == 0


def test_drain_refuses_max_lines_below_one(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    buffers.append_lines("t", b"a\n", 1)
    with pytest.raises(ValueError, match="max_lines must be at least 1"):
        buffers.drain("t", max_lines=0)


def test_drained_bytes_count_until_settled(core: ModuleType) -> None:
    buffers = core.TenantBuffers(max_bytes=10)
    buffers.append_lines("t", b"abcd\n", 1)
    buffers.append_lines("t", b"efgh\n", 1)
    buffers.drain("t", max_lines=1)
    assert buffers.total_bytes == 10
    assert buffers.append_lines("t", b"x\n", 1) is False
    buffers.settle("t", 1)
    assert buffers.total_bytes == 5
    assert buffers.append_lines("t", b"x\n", 1) is True
    assert buffers.depth() == {"t": (2, 7)}


def test_settle_refuses_more_than_is_in_flight(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    buffers.append_lines("t", b"abcd\nef\n", 2)
    with pytest.raises(ValueError, match='tenant "t" has no body in flight'):
        buffers.settle("t", 1)
    buffers.drain("t")
    with pytest.raises(ValueError, match=r"3 lines are not in flight \(only 2 are\)"):
        buffers.settle("t", 3)
    buffers.settle("t", 1)
    assert buffers.total_bytes == 3
    buffers.settle("t", 1)
    assert buffers.total_bytes == 0
    with pytest.raises(ValueError, match='tenant "t" has no body in flight'):
        buffers.put_back("t")


def test_a_tenant_has_at_most_one_body_in_flight(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    buffers.append_lines("t", b"a\nb\n", 2)
    assert buffers.drain("t", max_lines=1) == (b"a\n", 1)
    with pytest.raises(ValueError, match='tenant "t" already has a body in flight'):
        buffers.drain("t")
    buffers.settle("t", 1)
    assert buffers.drain("t") == (b"b\n", 1)


def test_a_put_back_body_is_the_next_drain_and_always_fits(core: ModuleType) -> None:
    buffers = core.TenantBuffers(batch_size=100, max_bytes=len(lines_for("t", 3)))
    buffers.append_lines("t", lines_for("t", 3), 3)
    body, _ = buffers.drain("t", max_lines=2)
    assert buffers.ready() == []
    buffers.put_back("t")
    assert buffers.ready() == ["t"]
    assert buffers.tenants() == ["t"]
    assert buffers.depth() == {"t": (3, len(lines_for("t", 3)))}
    assert buffers.total_bytes == buffers.max_bytes
    assert buffers.drain("t", max_lines=1) == (body, 2)
    buffers.settle("t", 2)
    assert buffers.drain("t") == (lines_for("t", 1, 2), 1)
    buffers.settle("t", 1)
    assert buffers.total_bytes == 0
    assert buffers.depth() == {}
    assert buffers.tenants() == []


def test_put_back_bodies_count_toward_the_thresholds(core: ModuleType) -> None:
    buffers = core.TenantBuffers(batch_size=3)
    buffers.append_lines("t", b"a\nb\n", 2)
    buffers.drain("t")
    buffers.put_back("t")
    assert buffers.ready() == ["t"]
    assert buffers.append_lines("t", b"c\n", 1)
    batch = parse(core, batch_body(message(tenant_id="t")))
    assert buffers.append(batch) == ["t"]
    assert buffers.depth() == {"t": (4, 6 + len(LINE))}
    assert buffers.drain("t", max_lines=1) == (b"a\nb\n", 2)
    buffers.settle("t", 2)
    assert buffers.drain("t", max_lines=1) == (b"c\n", 1)


def test_put_back_of_a_tenant_with_nothing_buffered(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    buffers.append_lines("t", b"a\n", 1)
    buffers.drain("t")
    assert buffers.tenants() == []
    buffers.put_back("t")
    assert buffers.tenants() == ["t"]
    assert buffers.drain("t") == (b"a\n", 1)


def test_buffers_are_thread_safe(core: ModuleType) -> None:
    buffers = core.TenantBuffers(max_bytes=1 << 30)
    line = b"m v=1i 1\n"
    drained = [0] * 4

    def produce(worker: int) -> None:
        for i in range(500):
            tenant = f"t{(worker + i) % 3}"
            assert buffers.append_lines(tenant, line * 4, 4)
            if i % 50 == 0:
                try:
                    body = buffers.drain(tenant, max_lines=7)
                except ValueError:  # another worker's body of this tenant is in flight
                    continue
                if body is not None:
                    drained[worker] += body[1]
                    buffers.settle(tenant, body[1])

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    remaining = sum(lines for lines, _ in buffers.depth().values())
    assert remaining + sum(drained) == 4 * 500 * 4
    assert buffers.total_bytes == remaining * len(line)


def test_buffers_report_their_limits(core: ModuleType) -> None:
    buffers = core.TenantBuffers(batch_size=10, flush_bytes=20, max_bytes=30)
    assert (buffers.max_bytes, buffers.tenant_max_bytes, buffers.total_bytes) == (30, 30, 0)
    assert core.TenantBuffers(max_bytes=30, tenant_max_bytes=10).tenant_max_bytes == 10


def test_a_tenant_over_its_share_gets_buffer_full_and_others_do_not(core: ModuleType) -> None:
    buffers = core.TenantBuffers(max_bytes=1000, tenant_max_bytes=len(LINE) + 1)
    batch = parse(
        core,
        batch_body(message(), message(), message(tenant_id="beta"), message(tenant_id="beta")),
    )
    buffers.append(batch)
    assert batch.reasons() == [None, "BUFFER_FULL", None, "BUFFER_FULL"]
    assert buffers.append_lines("acme", b"x\n", 1) is False
    assert buffers.append_lines("gamma", b"x\n", 1) is True
    assert buffers.tenant_bytes() == {"acme": len(LINE), "beta": len(LINE), "gamma": 2}
    buffers.drain("acme")
    assert buffers.tenant_bytes()["acme"] == len(LINE)
    buffers.settle("acme", 1)
    assert "acme" not in buffers.tenant_bytes()


def test_marks_are_delivered_once_every_line_is_settled(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    batch = parse(core, batch_body(message(), message(tenant_id="beta")))
    assert buffers.append(batch, 1) == []
    assert buffers.append_lines("acme", b"a\nb\n", 2, mark=2)
    assert buffers.append_lines("acme", b"c\n", 1, mark=3)
    assert (buffers.take_delivered(), buffers.delivered_through) == ([], 0)
    assert buffers.drain("acme", max_lines=3) == (LINE + b"a\nb\n", 3)
    buffers.settle("acme", 2)  # a 413 split: the first half is written ...
    buffers.put_back("acme")  # ... the second half fails and goes back
    assert (buffers.take_delivered(), buffers.delivered_through) == ([], 0)
    assert buffers.drain("beta") is not None
    buffers.settle("beta", 1)
    assert (buffers.take_delivered(), buffers.delivered_through) == ([1], 1)
    assert buffers.drain("acme") == (b"b\n", 1)
    buffers.settle("acme", 1)
    assert (buffers.take_delivered(), buffers.delivered_through) == ([2], 2)
    assert buffers.drain("acme") == (b"c\n", 1)
    buffers.settle("acme", 1)
    assert (buffers.take_delivered(), buffers.delivered_through) == ([3], 3)


def test_a_mark_with_nothing_stored_is_delivered_at_once(core: ModuleType) -> None:
    buffers = core.TenantBuffers(max_bytes=2)
    assert buffers.append_lines("t", b"abc\n", 1, mark=4) is False
    batch = parse(core, batch_body(message()))
    buffers.append(batch, 5)
    assert batch.reasons() == ["BUFFER_FULL"]
    assert (buffers.take_delivered(), buffers.delivered_through) == ([4, 5], 5)


def test_marks_must_not_go_back(core: ModuleType) -> None:
    buffers = core.TenantBuffers()
    assert buffers.append_lines("a", b"x\n", 1, mark=7)
    assert buffers.append_lines("b", b"x\n", 1, mark=7)
    with pytest.raises(ValueError, match=r"mark 6 is below the last mark given \(7\)"):
        buffers.append_lines("a", b"x\n", 1, mark=6)
    buffers.drain("a")
    buffers.settle("a", 1)
    buffers.drain("b")
    buffers.settle("b", 1)
    assert buffers.take_delivered() == [7]
    with pytest.raises(ValueError, match="mark 7 is already delivered"):
        buffers.append(parse(core, batch_body(message())), 7)
    assert buffers.delivered_through == 7


# -- Shelly ------------------------------------------------------------------------------------

NOW = 1_714_566_645


def reading(**channels: object) -> dict[str, Any]:
    return {"src": "shelly-1", "timestamp": NOW, "params": channels}


def shelly(core: ModuleType, *messages: object, **kwargs: Any) -> Any:
    return core.parse_shelly(batch_body(*messages), NOW, **kwargs)


def columns(batch: Any) -> list[tuple[Any, ...]]:
    return list(
        zip(
            batch.device_id,
            batch.channel,
            batch.power,
            batch.voltage,
            batch.current,
            batch.timestamp,
            batch.idempotency_key,
            strict=True,
        )
    )


def test_shelly_readings_come_out_as_columns(core: ModuleType) -> None:
    msg = {
        "src": " shelly-1\n",
        "timestamp": NOW,
        "params": {
            "switch:0": {"apower": 12.5, "voltage": 230.1, "current": 0.054},
            "switch:3": {"apower": 0, "voltage": None},
            "switch:4": {"apower": 1},
            "switch:1": None,
            "switch:2": {"voltage": 1},
            "sys": {"apower": 9},
        },
    }
    batch = shelly(core, msg)
    assert (batch.total_messages, batch.devices, batch.duplicates_in_batch) == (1, 1, 0)
    assert batch.errors == []
    assert batch.channel == [0, 3]
    minute = NOW // 60
    assert columns(batch) == [
        ("shelly-1", 0, 12.5, 230.1, 0.054, NOW, f"shelly-1_0_{minute}"),
        ("shelly-1", 3, 0.0, None, None, NOW, f"shelly-1_3_{minute}"),
    ]
    assert batch.encode([0, 1]) == (
        b"power,channel=0,device_id=shelly-1 apower=12.5,current=0.054,voltage=230.1 "
        b"1714566645000000000\n"
        b"power,channel=3,device_id=shelly-1 apower=0.0 1714566645000000000\n",
        2,
    )
    assert batch.encode([1]) == (
        b"power,channel=3,device_id=shelly-1 apower=0.0 1714566645000000000\n",
        1,
    )
    assert batch.encode([]) == (b"", 0)
    assert batch.encode([1, 1])[1] == 2
    with pytest.raises(IndexError, match="row 2 out of range"):
        batch.encode([0, 2])


def test_shelly_columns_come_at_once_and_sizes_match_the_encoding(core: ModuleType) -> None:
    on = {"apower": 5, "voltage": 229.5}
    batch = shelly(core, reading(**{"switch:0": on, "switch:2": {"apower": -1.25}}))
    minute = NOW // 60
    assert len(batch) == 2
    assert batch.columns() == (
        ["shelly-1", "shelly-1"],
        [0, 2],
        [5.0, -1.25],
        [229.5, None],
        [None, None],
        [NOW, NOW],
        [f"shelly-1_0_{minute}", f"shelly-1_2_{minute}"],
    )
    for rows in ([0, 1], [1], [], [1, 1, 0]):
        assert batch.encoded_size(rows) == len(batch.encode(rows)[0])
    for method in (batch.encode, batch.encoded_size):
        with pytest.raises(IndexError, match=r"^row 2 out of range$"):
            method([0, 2])
        with pytest.raises(IndexError, match=r"^row -1 out of range$"):
            method([-1, 5])


def test_shelly_message_errors_in_order(core: ModuleType) -> None:
    ok = {"switch:0": {"apower": 1}}
    msgs: list[object] = [
        "not an object",
        {"timestamp": NOW, "params": ok},
        {"src": 5, "timestamp": NOW, "params": ok},
        {"src": " \t\r\n", "timestamp": NOW, "params": ok},
        {"src": "a\\b", "timestamp": NOW, "params": ok},
        {"src": "s" * 129, "timestamp": NOW, "params": ok},
        {"src": "a\x00", "timestamp": NOW, "params": ok},
        {"src": "s", "params": ok},
        {"src": "s", "timestamp": 0, "params": ok},
        {"src": "s", "timestamp": -5, "params": ok},
        {"src": "s", "timestamp": 1.5, "params": ok},
        {"src": "s", "timestamp": str(NOW), "params": ok},
        {"src": "s", "timestamp": NOW + 86401, "params": ok},
        {"src": "s", "timestamp": 10**30, "params": ok},
        {"src": "s", "timestamp": NOW},
        {"src": "s", "timestamp": NOW, "params": [ok]},
        {"src": "s", "timestamp": NOW, "params": None},
        {"src": "b" * 128, "timestamp": NOW + 86400, "params": {}},
        {"src": "x\\", "timestamp": 0, "params": None},
    ]
    batch = shelly(core, *msgs)
    assert batch.errors == [
        (0, "INVALID_MESSAGE"),
        (1, "INVALID_SRC"),
        (2, "INVALID_SRC"),
        (3, "INVALID_SRC"),
        (4, "INVALID_SRC"),
        (5, "INVALID_SRC"),
        (6, "INVALID_SRC"),
        (7, "INVALID_TIMESTAMP"),
        (8, "INVALID_TIMESTAMP"),
        (9, "INVALID_TIMESTAMP"),
        (10, "INVALID_TIMESTAMP"),
        (11, "INVALID_TIMESTAMP"),
        (12, "INVALID_TIMESTAMP"),
        (13, "INVALID_TIMESTAMP"),
        (14, "INVALID_PARAMS"),
        (15, "INVALID_PARAMS"),
        (16, "INVALID_PARAMS"),
        (18, "INVALID_SRC"),
    ]
    assert (batch.total_messages, batch.devices, len(batch.power)) == (19, 1, 0)


def test_shelly_bad_readings_skip_their_channel_only(core: ModuleType) -> None:
    batch = shelly(
        core,
        reading(
            **{
                "switch:0": {"apower": "12"},
                "switch:1": {"apower": True},
                "switch:2": {"apower": 5, "voltage": "230"},
                "switch:3": {"apower": 6, "current": 0.1},
            }
        ),
        reading(**{"switch:0": {"apower": 1, "current": [1]}, "switch:1": {"apower": 2}}),
    )
    assert batch.errors == [(0, "INVALID_READING")] * 3 + [(1, "INVALID_READING")]
    assert [(c, p, cur) for _, c, p, _, cur, _, _ in columns(batch)] == [
        (3, 6.0, 0.1),
        (1, 2.0, None),
    ]
    assert batch.duplicates_in_batch == 0


@pytest.mark.parametrize("value", ["1e400", "-1e400", "9" * 400])
def test_shelly_non_finite_readings_are_invalid(core: ModuleType, value: str) -> None:
    for key in ("apower", "voltage", "current"):
        switch = f'{{"apower":1,"{key}":{value}}}'
        body = f'{{"messages":[{{"src":"s","timestamp":{NOW},"params":{{"switch:0":{switch}}}}}]}}'
        batch = core.parse_shelly(body.encode(), NOW)
        assert batch.errors == [(0, "INVALID_READING")]
        assert batch.power == []


def test_shelly_duplicates_are_counted_not_kept(core: ModuleType) -> None:
    minute_start = NOW - NOW % 60
    batch = shelly(
        core,
        {"src": "a", "timestamp": minute_start, "params": {"switch:0": {"apower": 1}}},
        {"src": "a", "timestamp": minute_start + 59, "params": {"switch:0": {"apower": 2}}},
        {"src": " a ", "timestamp": minute_start + 60, "params": {"switch:0": {"apower": 3}}},
        {"src": "a", "timestamp": minute_start, "params": {"switch:1": {"apower": 4}}},
        {"src": "b", "timestamp": minute_start, "params": {"switch:0": {"apower": 5}}},
        {"src": "a", "timestamp": minute_start, "params": {}},
    )
    assert batch.duplicates_in_batch == 1
    assert batch.power == [1.0, 3.0, 4.0, 5.0]
    assert batch.devices == 2
    assert batch.idempotency_key[:2] == [
        f"a_0_{minute_start // 60}",
        f"a_0_{minute_start // 60 + 1}",
    ]


def test_shelly_encode_escapes_the_device_tag(core: ModuleType) -> None:
    batch = shelly(
        core,
        {
            "src": "shelly 1,x=y",
            "timestamp": NOW,
            "params": {"switch:1": {"apower": 1e16, "current": -0.0}},
        },
    )
    body, count = batch.encode([0])
    assert (body, count) == (
        b"power,channel=1,device_id=shelly\\ 1\\,x\\=y apower=1e+16,current=-0.0 "
        b"1714566645000000000\n",
        1,
    )
    assert read_lines(body) == [
        {
            "measurement": "power",
            "tags": {"channel": "1", "device_id": "shelly 1,x=y"},
            "fields": {"apower": 1e16, "current": -0.0},
            "time": NOW * 10**9,
        }
    ]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"nope", NOT_JSON),
        (b'{"messages":[{"a":NaN}]}', NOT_JSON),
        (b"[]", NO_MESSAGES),
        (b'{"messages":{}}', NO_MESSAGES),
        (b'{"messages":[]}', "batch is empty"),
        (('{"messages":[' + nested(126) + "]}").encode(), NOT_JSON),
    ],
)
def test_shelly_body_errors(core: ModuleType, body: bytes, detail: str) -> None:
    assert body_error(core, core.parse_shelly, body, NOW) == detail


def test_shelly_message_count_limit(core: ModuleType) -> None:
    msgs = [reading()] * 1001
    assert shelly(core, *msgs[:1000]).total_messages == 1000
    detail = body_error(core, shelly, core, *msgs)
    assert detail == "batch has 1001 messages; at most 1000 are allowed"
    detail = body_error(core, lambda: shelly(core, *msgs[:3], max_messages=2))
    assert detail == "batch has 3 messages; at most 2 are allowed"


def test_shelly_lone_surrogate_src_is_invalid(core: ModuleType) -> None:
    body = f'{{"messages":[{{"src":"a\\ud800","timestamp":{NOW},"params":{{}}}}]}}'
    assert core.parse_shelly(body.encode(), NOW).errors == [(0, "INVALID_SRC")]


def test_negative_counts_are_refused_with_the_cores_own_message(core: ModuleType) -> None:
    body = batch_body(message())
    buffers = core.TenantBuffers()
    calls: list[tuple[str, Any]] = [
        ("max_payload_bytes", lambda: core.parse_batch(body, RECEIVE_NS, -1)),
        ("max_payload_bytes", lambda: core.parse_single(b"{}", "t", "d", "m", "p", 0, -1)),
        ("max_messages", lambda: core.parse_shelly(body, 0, -1)),
        ("batch_size", lambda: core.TenantBuffers(-1)),
        ("flush_bytes", lambda: core.TenantBuffers(1, -1)),
        ("max_bytes", lambda: core.TenantBuffers(1, 1, -1)),
        ("tenant_max_bytes", lambda: core.TenantBuffers(1, 1, 1, -1)),
        ("line_count", lambda: buffers.append_lines("t", b"x\n", -1)),
        ("mark", lambda: buffers.append_lines("t", b"x\n", 1, -1)),
        ("mark", lambda: buffers.append(core.parse_batch(body, RECEIVE_NS), -1)),
        ("max_lines", lambda: buffers.drain("t", -1)),
        ("line_count", lambda: buffers.settle("t", -1)),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=f"^{name} must not be negative$"):
            call()
