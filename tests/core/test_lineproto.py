"""Line protocol (`parse_lines`, `line_devices`): the compiled core and the twin agree on any
body, generated or hostile, and what the core accepts reads back as `line-protocol-parser`
reads the client's line."""

from __future__ import annotations

import math
from typing import Any

import line_protocol_parser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages import load_core

RUST = load_core("rust")
TWIN = load_core("python")
RECEIVE_NS = 1_714_566_645_000_000_000
DEVICE = ("dev 1", "site=1", "tok")
SITES = {"d1": "s1", "d,2": "s 2"}

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies --------------------------------------------------------------------------------

name_char = st.sampled_from(["a", "b", "z", "0", "_", "é", "湿", "\\,", "\\ ", "\\=", '"', "#"])
name = st.lists(name_char, min_size=1, max_size=6).map("".join)
tag = st.tuples(
    st.one_of(name, st.sampled_from(["device_id", "site_id", "time"])),
    st.one_of(name, st.sampled_from(["d1", "d\\,2", "d3"])),
).map(lambda kv: f"{kv[0]}={kv[1]}")
string_value = st.lists(
    st.sampled_from(["a", " ", ",", "=", '\\"', "\\\\", "\\n", "é"]), max_size=6
).map(lambda parts: '"' + "".join(parts) + '"')
number = st.one_of(
    st.integers(-(2**64), 2**64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1.", ".5", "-.5", "1e5", "1E-3", "1e400", "0x10", ".", "-", "+1", "1_0"]),
)
value = st.one_of(
    number,
    number.map(lambda n: n + "i"),
    number.map(lambda n: n + "u"),
    string_value,
    st.sampled_from(["t", "T", "true", "True", "TRUE", "f", "FALSE", "tru", "yes"]),
)
field = st.tuples(st.one_of(name, st.sampled_from(["device_id", "time"])), value).map(
    lambda kv: f"{kv[0]}={kv[1]}"
)
timestamp = st.one_of(
    st.just(""),
    st.integers(-(2**63), 2**63).map(lambda n: f" {n}"),
    st.sampled_from([" 1.5", " 12a", "  7", " -0"]),
)
structured_line = st.builds(
    lambda m, tags, fields, ts: m + "".join("," + t for t in tags) + " " + ",".join(fields) + ts,
    name,
    st.lists(tag, max_size=4),
    st.lists(field, min_size=1, max_size=4),
    timestamp,
)
fragment = st.sampled_from(
    ["m", "cpu", "\\,", "\\ ", "\\=", "\\", ",", "=", " ", '"', "t=1", "f=1", "1i", "2u", "-3",
     "1.5", "T", "device_id=d1", "site_id=x", "time", '"a b,c=d\\""', "é", "\t", "\r", "#", "0"]
)  # fmt: skip
hostile_line = st.lists(fragment, max_size=12).map("".join)
line = st.one_of(structured_line, structured_line, hostile_line, st.sampled_from(["", "# c", "  "]))
body = st.lists(line, max_size=8).map(lambda lines: "\n".join(lines).encode())


# Lines from a few names and values, so that neighbours share measurements, tags and keys
# (the core keeps what it read of them from line to line).
close_name = st.sampled_from(["a", "b", "ab", "a\\ b", "a\\,b", "device_id", "site_id", "time"])
close_line = st.builds(
    lambda m, tags, fields, ts: m + "".join("," + t for t in tags) + " " + ",".join(fields) + ts,
    st.sampled_from(["m", "m\\ x", "cpu"]),
    st.lists(
        st.tuples(close_name, st.sampled_from(["d1", "x", "d\\,2"])).map("=".join), max_size=3
    ),
    st.lists(
        st.tuples(close_name, st.sampled_from(["1", "2i", "3u", '"s"', "t", "x", "1.5", "=1"])).map(
            "=".join
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["", " 5", " x"]),
)
close_body = (
    st.lists(close_line, min_size=1, max_size=4)
    .flatmap(lambda pool: st.lists(st.one_of(st.sampled_from(pool), close_line), max_size=12))
    .map(lambda lines: "\n".join(lines).encode())
)


def outcome(core: Any, call: Any) -> Any:
    """What a core gives for a call: the batch's whole state, or the error."""
    try:
        b = call(core)
    except (core.BodyError, ValueError) as exc:
        return type(exc).__name__, str(exc)
    if isinstance(b, list):
        return b
    return (
        b.reasons(),
        b.line_numbers(),
        b.details(),
        b.tenant_lines(),
        b.groups(),
        b.response_json(),
    )


@SETTINGS
@given(body, st.sampled_from(["ns", "s", "ms", "h", "x"]), st.sampled_from([40, 8192]))
def test_core_and_twin_agree_on_any_body(data: bytes, precision: str, max_bytes: int) -> None:
    calls = [
        lambda c: c.parse_lines(data, "acme", RECEIVE_NS, precision, max_bytes, device=DEVICE),
        lambda c: c.parse_lines(data, "acme", RECEIVE_NS, precision, max_bytes, sites=SITES),
        lambda c: c.line_devices(data, max_bytes),
    ]
    for call in calls:
        assert outcome(RUST, call) == outcome(TWIN, call)


@SETTINGS
@given(close_body)
def test_lines_read_alike_whatever_their_neighbours_sent(data: bytes) -> None:
    calls = [
        lambda c: c.parse_lines(data, "acme", RECEIVE_NS, device=DEVICE),
        lambda c: c.parse_lines(data, "acme", RECEIVE_NS, sites=SITES),
        lambda c: c.line_devices(data),
    ]
    for call in calls:
        assert outcome(RUST, call) == outcome(TWIN, call)


@SETTINGS
@given(close_body, close_body, st.sampled_from([3, 100]))
def test_field_types_judge_line_protocol_alike(first: bytes, second: bytes, cap: int) -> None:
    """Lines of a shape the core has verified skip the read-back: never a conflict missed."""
    judged = []
    for core in (RUST, TWIN):
        types = core.FieldTypes(cap)
        verdicts = []
        for data in (first, second, first):
            b = core.parse_lines(data, "acme", RECEIVE_NS, device=DEVICE)
            types.admit(b)
            verdicts.append((b.reasons(), b.details(), b.tenant_lines()))
        judged.append((verdicts, len(types), types.untracked))
    assert judged[0] == judged[1]


def _reads_back(client_line: str, stored: bytes) -> None:
    """The reference parser reads the client's line and ours the same, identity tags aside."""
    try:
        ref = line_protocol_parser.parse_line(client_line)
    except line_protocol_parser.LineFormatError:
        # The reference is stricter than InfluxDB on one point: its strtod reports a subnormal
        # float (5e-324) as out of range. It has no reading of such a line to compare with.
        return
    ours = line_protocol_parser.parse_line(stored.decode().rstrip("\n"))
    assert ours["measurement"] == ref["measurement"]
    ref_tags = {k: v for k, v in ref["tags"].items() if k not in ("device_id", "site_id")}
    assert ours["tags"] == {**ref_tags, "device_id": DEVICE[0], "site_id": DEVICE[1]}
    assert ours["fields"].keys() == ref["fields"].keys()
    for k, v in ref["fields"].items():
        got = ours["fields"][k]
        if isinstance(v, float) and math.isnan(v):
            pytest.fail(f"NaN accepted in {client_line!r}")
        assert got == v and type(got) is type(v), (k, client_line)
    if ref["time"] is not None:
        assert ours["time"] == ref["time"]


@SETTINGS
@given(structured_line)
def test_accepted_lines_read_back_as_the_reference_parser_reads_them(client_line: str) -> None:
    b = RUST.parse_lines(client_line.encode(), "acme", RECEIVE_NS, device=DEVICE)
    lines = b.tenant_lines()
    if not lines:
        return
    _reads_back(client_line, lines[0][1])


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        ("m f=1 1 2", "INVALID_TIMESTAMP", "invalid timestamp"),
        ("m\\=x f=1", "INVALID_SCHEMA", "invalid measurement"),
        ("m,t=a\\\\b f=1", "INVALID_SCHEMA", "invalid tag set"),
        ("m device_id=1", "INVALID_METRICS", "invalid field set"),
        ("m f=1.5i", "INVALID_METRICS", "invalid field value"),
    ],
)
def test_a_refused_line_has_a_reason_and_a_detail(line: str, reason: str, detail: str) -> None:
    for core in (RUST, TWIN):
        b = core.parse_lines(f"ok f=1\n{line}\n".encode(), "acme", RECEIVE_NS, device=DEVICE)
        assert b.reasons() == [None, reason]
        assert b.line_numbers() == [1, 2]
        assert b.details() == [(1, detail)]


def test_forged_identity_tags_never_reach_the_line() -> None:
    body = b"m,device_id=other,site_id=elsewhere,room=1 t=21.5 1700000000"
    for core in (RUST, TWIN):
        b = core.parse_lines(body, "acme", RECEIVE_NS, "s", device=DEVICE)
        assert b.tenant_lines() == [
            (
                "acme",
                b"m,device_id=dev\\ 1,room=1,site_id=site\\=1 t=21.5 1700000000000000000\n",
                1,
            )
        ]


def test_a_field_type_sent_on_one_route_is_enforced_on_the_other() -> None:
    for core in (RUST, TWIN):
        types = core.FieldTypes()
        first = core.parse_lines(b"telemetry temp=21.5", "acme", RECEIVE_NS, device=DEVICE)
        types.admit(first)
        again = core.parse_lines(b'telemetry temp="warm"', "acme", RECEIVE_NS, device=DEVICE)
        types.admit(again)
        assert again.reasons() == ["INVALID_METRICS"]
        assert again.details() == [
            (0, 'field type conflict: "temp" of telemetry is float, this message sends string')
        ]
        assert types.get("acme", "telemetry", "temp") == "float"


def test_a_tenant_key_batch_is_admitted_without_device_tokens() -> None:
    import hashlib

    for core in (RUST, TWIN):
        admission = core.Admission(default_rps=100.0, default_burst=2)
        b = core.parse_lines(b"m f=1\nm f=2\nm f=3", "acme", RECEIVE_NS, sites={})
        assert b.reasons() == ["INVALID_SCHEMA"] * 3
        b = core.parse_lines(
            b"m,device_id=d1 f=1\nm,device_id=d1 f=2\nm,device_id=d1 f=3",
            "acme",
            RECEIVE_NS,
            sites={"d1": "s1"},
        )
        keys = admission.admit(b, 1.0)
        assert keys == [("acme", "d1")]
        row = ("acme", "d1", "s1", hashlib.sha256(b"secret").digest(), None, None, "active")
        admission.install(keys, [row], 1.0)
        assert admission.admit(b, 1.0) == []
        # Counted in lines: a burst of 2 takes two of the three.
        assert b.reasons() == [None, None, "RATE_LIMITED"]
