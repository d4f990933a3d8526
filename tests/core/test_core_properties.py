"""Differential properties: the compiled `_core` and the `_twin` agree byte for byte on any body,
and encoded line protocol reads back as the values sent."""

from __future__ import annotations

import calendar
import contextlib
import datetime
import json
import math
import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages import RECEIVE_NS, load_core, read_lines

RUST = load_core("rust")
TWIN = load_core("python")

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = 1_714_566_645

# -- JSON text strategies --------------------------------------------------------------------

ws = st.sampled_from(["", "", "", " ", "\n", "\t ", "\r\n  "])


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (`one_of` picks evenly)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(pool))).flatmap(lambda i: pool[i])


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in `n` draws (hypothesis' integers lean towards their bounds)."""
    return st.sampled_from([False] * (n - 1) + [True])


LONE_SURROGATES = ["\\ud800", "\\udfff", "\\udc00\\ud800", "\\ud800\\u0041", "\\udbff"]
SURROGATE_PAIR = "\\ud83d\\ude00"


@st.composite
def json_string(draw: st.DrawFn, text: st.SearchStrategy[str] | None = None) -> str:
    """A JSON string literal of `text`, raw or escaped, sometimes with a lone surrogate."""
    s = draw(text if text is not None else st.text(max_size=12))
    ensure_ascii = draw(st.booleans())
    roll = draw(st.sampled_from(range(20)))
    if roll > 1:
        return json.dumps(s, ensure_ascii=ensure_ascii)
    at = draw(st.integers(0, len(s)))
    escape = draw(st.sampled_from(LONE_SURROGATES)) if roll == 0 else SURROGATE_PAIR
    head = json.dumps(s[:at], ensure_ascii=ensure_ascii)[:-1]
    return head + escape + json.dumps(s[at:], ensure_ascii=ensure_ascii)[1:]


NUMBER_TEXTS = [
    "0",
    "-0",
    "-0.0",
    "1",
    "22",
    "21.5",
    "1e400",
    "-1e400",
    "1e-400",
    "9" * 400,
    "-" + "9" * 30,
    "5e-324",
    "2.2250738585072014e-308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "1E16",
    "1e+16",
    "0.0001",
    "0.00001",
    "123456789012345678901234567890",
    "1.5",
    "-273.15",
]


def number_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NUMBER_TEXTS),
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.builds(
            "{}.{}e{}".format,
            st.integers(-999, 999),
            st.integers(0, 10**6),
            st.integers(-330, 330),
        ),
    )


def scalar_text() -> st.SearchStrategy[str]:
    return st.one_of(
        number_text(),
        st.sampled_from(["true", "false", "null"]),
        json_string(),
    )


def nest(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value wrapped in arrays/objects, sometimes right at the depth limit."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        depth = draw(weighted((4, st.integers(0, 4)), (1, st.integers(118, 130))))
        text = draw(inner)
        for _ in range(depth):
            text = "[" + text + "]" if draw(st.booleans()) else '{"k":' + text + "}"
        return text

    return build()


any_value = st.one_of(scalar_text(), nest(scalar_text()), st.just("{}"), st.just("[]"))


def json_object(pairs: list[tuple[str, str]], draw: st.DrawFn) -> str:
    """An object from raw key/value texts (duplicates kept), with random whitespace."""
    parts = [f"{draw(ws)}{k}{draw(ws)}:{draw(ws)}{v}{draw(ws)}" for k, v in pairs]
    return "{" + ",".join(parts) + "}" if parts else "{" + draw(ws) + "}"


def key(name: str) -> st.SearchStrategy[str]:
    """A key literal for `name` (ASCII), sometimes with its first character escaped."""
    return st.sampled_from([json.dumps(name), f'"\\u{ord(name[0]):04x}{name[1:]}"'])


IDS = [
    "dev-1",
    "d",
    "d" * 128,
    "d" * 129,
    "é" * 64,
    "€" * 43,
    "a b,c=d",
    '"q"',
    "湿度",
    "",
    "new\nline",
    "c1\x85",
    "back\\slash",
    "trail\\",
    "\x7f",
    "😀" * 32,
]
TENANTS = ["acme", "beta", "a" * 64, "a" * 65, "Acme", "t-1_x", "", "acmé"]
TIMESTAMPS = [
    "2024-05-01T12:30:45Z",
    "2024-02-29T00:00:00.123456789+05:30",
    "2023-02-29T00:00:00Z",
    "2262-04-11T23:47:16.854775806Z",
    "2262-04-11T23:47:16.854775807Z",
    "1677-09-21T00:12:43.145224194Z",
    "1677-09-21T00:12:43.145224193Z",
    "2024-05-01T12:30:45",
    "2024-05-01t12:30:45z",
    "2024-05-01T23:59:60Z",
    "2024-05-01T12:30:45-23:59",
    "2024-05-01T12:30:45+24:00",
    "2024-05-01T12:30:45.1234567890Z",
]
METRIC_NAMES = [
    "temp",
    "humidity",
    "a b",
    "c,d",
    "e=f",
    'g"h',
    "température",
    "湿度",
    "😀",
    "Seq",
    "n" * 128,
    "#",
    " ",
    "\uffff",
]
BAD_METRIC_NAMES = [
    "seq",
    "time",
    "device_id",
    "site_id",
    "",
    "n" * 129,
    "new\nline",
    "back\\slash",
]


def id_text(values: list[str]) -> st.SearchStrategy[str]:
    return weighted(
        (6, json_string(st.sampled_from(values))),
        (2, json_string(st.text(max_size=140))),
        (1, scalar_text()),
    )


def timestamp_text() -> st.SearchStrategy[str]:
    generated = st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format,
        st.integers(1600, 2300),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 60),
        st.sampled_from(["", ".5", ".000000001", ".123456789"]),
        st.sampled_from(["Z", "z", "+00:00", "-00:30", "+23:59", "+14:00", ""]),
    )
    return st.one_of(
        json_string(st.sampled_from(TIMESTAMPS)),
        json_string(generated),
        st.sampled_from(["null", "1714566645", "true"]),
        json_string(),
    )


@st.composite
def metrics_text(draw: st.DrawFn) -> str:
    names = weighted(
        (6, st.sampled_from(METRIC_NAMES)),
        (1, st.sampled_from(BAD_METRIC_NAMES)),
        (2, st.text(max_size=8)),
    )
    if draw(one_in(30)):
        count = draw(st.sampled_from([255, 256, 257]))
        pairs = [(json.dumps(f"m{i}"), str(i)) for i in range(count)]
    else:
        value = weighted(
            (6, number_text()), (2, st.sampled_from(["true", "false"])), (1, any_value)
        )
        pairs = draw(st.lists(st.tuples(json_string(names), value), max_size=5))
        if pairs and draw(st.booleans()):
            # An earlier duplicate, often of another type: last one wins.
            pairs.insert(
                0, (draw(st.sampled_from(pairs))[0], draw(weighted((1, value), (1, any_value))))
            )
    return json_object(pairs, draw)


FIELDS: dict[str, Callable[[], st.SearchStrategy[str]]] = {
    "tenant_id": lambda: id_text(TENANTS),
    "device_id": lambda: id_text(IDS),
    "site_id": lambda: id_text(IDS),
    "provision_token": lambda: id_text(IDS),
    "msg_type": lambda: st.one_of(
        json_string(st.sampled_from(["telemetry", "heartbeat", "Telemetry", "event"])),
        scalar_text(),
    ),
    "ts": timestamp_text,
    "seq": lambda: st.one_of(number_text(), st.sampled_from(["null", '"5"', "-1"])),
    "metrics": lambda: weighted((5, metrics_text()), (1, any_value)),
}

VALID_FIELDS = {
    "tenant_id": '"acme"',
    "device_id": '"dev-1"',
    "site_id": '"site-1"',
    "provision_token": '"tok-1"',
    "msg_type": '"telemetry"',
    "ts": '"2024-05-01T12:30:45Z"',
    "seq": "7",
    "metrics": '{"temp":21.5}',
}


@st.composite
def message_text(draw: st.DrawFn) -> str:
    """A message: most fields valid, a few mutated, duplicated or missing; extras mixed in."""
    mutate = draw(
        weighted(
            (2, st.just(frozenset())),
            (3, st.just(frozenset(["metrics"]))),
            (4, st.frozensets(st.sampled_from(list(FIELDS)), min_size=1, max_size=2)),
        )
    )
    drop = draw(st.sets(st.sampled_from(list(FIELDS)), max_size=1))
    # An item without `ts` is timed by its index in the batch: make them common.
    untimed = draw(weighted((6, st.just("")), (1, st.just("absent")), (1, st.just("null"))))
    pairs = []
    for name, strategy in FIELDS.items():
        if name == "ts" and untimed:
            if untimed == "null":
                pairs.append((json.dumps(name), "null"))
            continue
        if name in drop and draw(one_in(5)):
            continue
        if name not in mutate:
            pairs.append((json.dumps(name), VALID_FIELDS[name]))
            continue
        pairs.append((draw(key(name)), draw(strategy())))
        if draw(one_in(4)):
            duplicate = (json.dumps(name), VALID_FIELDS[name])
            pairs.insert(draw(st.integers(0, len(pairs))), duplicate)
    pairs.extend(draw(st.lists(st.tuples(json_string(), any_value), max_size=2)))
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    if draw(one_in(10)):
        pairs.append((json.dumps("pad"), json.dumps("x" * draw(st.integers(7000, 8300)))))
    return json_object(pairs, draw)


@st.composite
def batch_text(draw: st.DrawFn) -> str:
    element = weighted((5, message_text()), (1, any_value))
    elements = draw(st.lists(element, min_size=0 if draw(one_in(20)) else 1, max_size=6))
    if draw(one_in(20)):
        elements = elements * draw(st.integers(17, 25))
    items = "[" + ",".join(f"{draw(ws)}{e}{draw(ws)}" for e in elements) + "]"
    pairs = [(draw(key("messages")), items)]
    pairs += draw(st.lists(st.tuples(json_string(), any_value), max_size=2))
    if draw(one_in(10)):
        pairs.append((json.dumps("messages"), draw(any_value)))
    return draw(ws) + json_object(draw(st.permutations(pairs)), draw) + draw(ws)


MUTATION_BYTES = [*list(b'{}[]",:\\ \n0-e.tnu'), 0, 128, 195, 237, 255]


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> bytes:
    """A body with a few bytes deleted, inserted, replaced, or cut off."""
    data = bytearray(draw(base).encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 3))
        if op == 0 and at < len(data):
            del data[at]
        elif op == 1:
            data.insert(at, draw(st.sampled_from(MUTATION_BYTES)))
        elif op == 2 and at < len(data):
            data[at] = draw(st.sampled_from(MUTATION_BYTES))
        else:
            del data[at:]
    return bytes(data)


def bodies(base: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Mostly well-formed bodies, some mutated, a few of garbage."""
    return weighted(
        (12, base.map(str.encode)),
        (4, mutated(base)),
        (1, st.binary(max_size=64)),
        (1, st.text(max_size=64).map(str.encode)),
        (1, any_value.map(str.encode)),
    )


# -- outcomes ----------------------------------------------------------------------------------


def error_of(exc: Exception) -> tuple[str, str]:
    return type(exc).__name__, str(getattr(exc, "detail", exc))


def batch_outcome(core: Any, body: bytes, max_payload: int, receive_ns: int) -> Any:
    """Everything observable about one batch: parse, verdicts, buffering, response."""
    try:
        batch = core.parse_batch(body, receive_ns, max_payload)
    except ValueError as exc:
        return error_of(exc)
    first = (len(batch), batch.reasons(), batch.groups(), batch.tenant_lines())
    verdicts = [
        (count // 2, "RATE_LIMITED" if i % 2 else "UNAUTHORIZED")
        for i, (*_, count) in enumerate(batch.groups())
    ]
    batch.resolve(verdicts)
    resolved = (batch.reasons(), batch.reason_counts())
    line_bytes = sum(len(lines) for _, lines, _ in batch.tenant_lines())
    buffers = core.TenantBuffers(
        batch_size=2, flush_bytes=300, max_bytes=line_bytes // 2, tenant_max_bytes=line_bytes // 3
    )
    ready = buffers.append(batch)
    buffered = (ready, buffers.depth(), buffers.total_bytes, buffers.tenants())
    refusals = [batch.refusals(code) for code in ("RATE_LIMITED", "BUFFER_FULL")]
    return (
        first,
        resolved,
        buffered,
        batch.tenant_lines(),
        batch.response_json(),
        batch.details(),
        batch.rejections(),
        refusals,
        batch.tenant_counts(),
        latest_outcome(core, batch),
    )


def latest_outcome(core: Any, batch: Any) -> Any:
    """What `Latest` keeps of the batch: the dirty rows, then each group's snapshot."""
    latest = core.Latest()
    latest.record(batch)
    keys = [(tenant, device) for tenant, device, *_ in batch.groups()]
    got = [latest.get(tenant, [device, "never-sent"]) for tenant, device in keys]
    return latest.take_dirty(), got, latest.take_dirty(), len(latest)


def single_outcome(
    core: Any, body: bytes, identity: tuple[str, str, str, str], receive_ns: int
) -> Any:
    try:
        batch = core.parse_single(body, *identity, receive_ns, 200)
    except ValueError as exc:
        return error_of(exc)
    return (
        batch.reasons(),
        batch.groups(),
        batch.tenant_lines(),
        batch.response_json(),
        batch.rejections(),
    )


def shelly_outcome(core: Any, body: bytes, max_messages: int) -> Any:
    try:
        batch = core.parse_shelly(body, NOW, max_messages)
    except ValueError as exc:
        return error_of(exc)
    rows = range(len(batch.power))
    return (
        batch.total_messages,
        batch.devices,
        batch.duplicates_in_batch,
        batch.errors,
        batch.device_id,
        batch.channel,
        batch.power,
        batch.voltage,
        batch.current,
        batch.timestamp,
        batch.idempotency_key,
        batch.encode(rows),
        batch.encode(list(rows)[::-2]),
        len(batch),
        batch.columns(),
        batch.encoded_size(rows),
    )


def same(a: Any, b: Any) -> None:
    """Equal, with floats compared by their bits (-0.0 is not 0.0)."""
    assert repr(a) == repr(b)
    assert a == b


# -- batch and single --------------------------------------------------------------------------

MAX_NS = 9_223_372_036_854_775_806
# A `ts`-less item gets `receive_ns + index`: near either end of InfluxDB's range some of them
# fall outside it.
receive_times = st.sampled_from([RECEIVE_NS, RECEIVE_NS, MAX_NS - 2, -MAX_NS - 2, 2**63 - 1])


@SETTINGS
@given(
    body=bodies(batch_text()),
    max_payload=st.sampled_from([8192, 8192, 300, 1]),
    receive_ns=receive_times,
)
def test_batch_results_are_identical(body: bytes, max_payload: int, receive_ns: int) -> None:
    same(
        batch_outcome(RUST, body, max_payload, receive_ns),
        batch_outcome(TWIN, body, max_payload, receive_ns),
    )


@SETTINGS
@given(
    body=bodies(message_text()),
    identity=st.tuples(
        st.sampled_from(["acme", "Bad", "\ud800"]),
        st.sampled_from(["dev-1", "d\\1", "", "\udc00x", "a b"]),
        st.sampled_from(["telemetry", "heartbeat", "x", "\ud800"]),
        st.sampled_from(["tok", "t\n"]),
    ),
    receive_ns=receive_times,
)
def test_single_results_are_identical(
    body: bytes, identity: tuple[str, str, str, str], receive_ns: int
) -> None:
    same(
        single_outcome(RUST, body, identity, receive_ns),
        single_outcome(TWIN, body, identity, receive_ns),
    )


# -- Shelly ------------------------------------------------------------------------------------


def reading_value() -> st.SearchStrategy[str]:
    return weighted(
        (6, st.floats(-1e4, 1e4).map(repr)),
        (2, number_text()),
        (1, st.sampled_from(["null", "true", '"12"', "[1]", "{}"])),
    )


@st.composite
def switch_text(draw: st.DrawFn) -> str:
    pairs = [
        (json.dumps(name), draw(reading_value()))
        for name in ("apower", "voltage", "current")
        if not draw(one_in(4 if name == "apower" else 3))
    ]
    return json_object(pairs, draw)


SHELLY_SRCS = ["shelly-1", "shelly-2", " shelly-1 ", "\tshelly-2\n", "a b,c=d", "湿度"]
SHELLY_BAD_TIMESTAMPS = [
    "0",
    "-1",
    "-0",
    "1.5e9",
    '"1714566645"',
    str(NOW + 86401),
    "9" * 40,
    "null",
]


@st.composite
def shelly_message(draw: st.DrawFn) -> str:
    """A Shelly message: mostly valid readings on a few channels of a few devices."""
    channel = weighted((6, st.integers(0, 3)), (1, st.integers(4, 5)))
    channels = draw(st.lists(channel, min_size=0 if draw(one_in(10)) else 1, max_size=4))
    params = [
        (json.dumps(f"switch:{n}"), draw(weighted((8, switch_text()), (1, any_value))))
        for n in channels
    ]
    params_text = draw(weighted((8, st.just(json_object(params, draw))), (1, any_value)))
    src = weighted(
        (6, st.sampled_from(SHELLY_SRCS).map(json.dumps)),
        (1, id_text(IDS)),
    )
    minute = NOW - NOW % 60
    timestamp = weighted(
        (6, st.integers(minute - 60, minute + 119).map(str)),
        (1, st.sampled_from([str(NOW + 86400), "1"])),
        (1, st.sampled_from(SHELLY_BAD_TIMESTAMPS)),
    )
    pairs = []
    for name, value in (("src", src), ("timestamp", timestamp), ("params", st.just(params_text))):
        if not draw(one_in(20)):
            pairs.append((json.dumps(name), draw(value)))
    return json_object(draw(st.permutations(pairs)), draw)


@st.composite
def shelly_text(draw: st.DrawFn) -> str:
    elements = draw(
        st.lists(weighted((6, shelly_message()), (1, any_value)), min_size=1, max_size=8)
    )
    return '{"messages":[' + ",".join(elements) + "]}"


@SETTINGS
@given(body=bodies(shelly_text()), max_messages=st.sampled_from([1000, 3]))
def test_shelly_results_are_identical(body: bytes, max_messages: int) -> None:
    same(shelly_outcome(RUST, body, max_messages), shelly_outcome(TWIN, body, max_messages))


# -- TenantBuffers -----------------------------------------------------------------------------

tenant_names = st.sampled_from(["a", "b", "c"])
# A mark relative to the last one given: None is no mark, -1 and 0 probe the order rule.
mark_steps = st.one_of(st.none(), st.sampled_from([-1, 0, 1, 1, 1, 2]))
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append_lines"),
            tenant_names,
            st.integers(1, 6),
            st.integers(1, 30),
            mark_steps,
        ),
        st.tuples(st.just("append"), st.lists(tenant_names, min_size=1, max_size=6), mark_steps),
        st.tuples(st.just("drain"), tenant_names, st.integers(1, 8)),
        st.tuples(st.just("settle"), tenant_names, st.integers(0, 4)),
        st.tuples(st.just("put_back"), tenant_names),
    ),
    max_size=50,
)


def buffer_batch(core: Any, tenants: list[str]) -> Any:
    """A parsed batch with one message per entry of `tenants`, of varying sizes."""
    messages = [
        {
            "tenant_id": tenant,
            "device_id": f"d{i}",
            "msg_type": "telemetry",
            "provision_token": "k",
            "site_id": "s",
            "ts": 1_714_566_645 + i,
            "metrics": {"v" * (1 + i * 7): i},
        }
        for i, tenant in enumerate(tenants)
    ]
    return core.parse_batch(json.dumps({"messages": messages}).encode(), RECEIVE_NS)


def run_buffers(core: Any, ops: list[tuple[Any, ...]]) -> list[Any]:
    """Every observable of the buffers after each operation, delivered marks included."""
    buffers = core.TenantBuffers(batch_size=5, flush_bytes=60, max_bytes=400, tenant_max_bytes=180)
    last_mark = 0
    log: list[Any] = []
    for op in ops:
        step = op[-1] if op[0] in ("append", "append_lines") else None
        mark = 0 if step is None else max(0, last_mark + step)
        try:
            if op[0] == "append_lines":
                _, tenant, count, width, _ = op
                lines = b"".join(b"%s %d\n" % (b"x" * width, i) for i in range(count))
                result: Any = buffers.append_lines(tenant, lines, count, mark)
            elif op[0] == "append":
                batch = buffer_batch(core, op[1])
                result = (buffers.append(batch, mark), batch.reasons())
            elif op[0] == "drain":
                result = buffers.drain(op[1], op[2])
            elif op[0] == "settle":
                result = buffers.settle(op[1], op[2])
            else:
                result = buffers.put_back(op[1])
            last_mark = max(last_mark, mark)
        except ValueError as exc:
            result = error_of(exc)
        log.append((result, buffers.depth(), buffers.ready(), buffers.tenants()))
        log.append((buffers.total_bytes, buffers.tenant_bytes()))
        log.append((buffers.take_delivered(), buffers.delivered_through))
    return log


@SETTINGS
@given(ops=operations)
def test_buffer_operations_are_identical(ops: list[tuple[Any, ...]]) -> None:
    same(run_buffers(RUST, ops), run_buffers(TWIN, ops))


@SETTINGS
@given(ops=operations)
def test_every_mark_is_delivered_once_all_is_written(ops: list[tuple[Any, ...]]) -> None:
    """After any history, writing everything out delivers every mark given, exactly once."""
    buffers = RUST.TenantBuffers(batch_size=5, flush_bytes=60, max_bytes=400, tenant_max_bytes=180)
    given_marks: set[int] = set()
    delivered: list[int] = []
    run_ops_marks(buffers, ops, given_marks, delivered)
    for tenant in ["a", "b", "c"]:
        with contextlib.suppress(ValueError):
            buffers.put_back(tenant)
        while (body := buffers.drain(tenant)) is not None:
            buffers.settle(tenant, body[1])
    delivered += buffers.take_delivered()
    assert sorted(delivered) == sorted(given_marks)
    assert len(delivered) == len(set(delivered))
    assert buffers.delivered_through == max(given_marks, default=0)
    assert buffers.total_bytes == 0


def run_ops_marks(
    buffers: Any, ops: list[tuple[Any, ...]], given_marks: set[int], delivered: list[int]
) -> None:
    """Apply `ops`, recording the marks accepted and those delivered along the way."""
    last_mark = 0
    for op in ops:
        step = op[-1] if op[0] in ("append", "append_lines") else None
        mark = 0 if step is None else max(0, last_mark + step)
        try:
            if op[0] == "append_lines":
                _, tenant, count, width, _ = op
                lines = b"".join(b"%s %d\n" % (b"x" * width, i) for i in range(count))
                buffers.append_lines(tenant, lines, count, mark)
            elif op[0] == "append":
                buffers.append(buffer_batch(RUST, op[1]), mark)
            elif op[0] == "drain":
                buffers.drain(op[1], op[2])
            elif op[0] == "settle":
                buffers.settle(op[1], op[2])
            else:
                buffers.put_back(op[1])
        except ValueError:
            continue
        if mark:
            given_marks.add(mark)
            last_mark = mark
        delivered += buffers.take_delivered()


# -- round trip --------------------------------------------------------------------------------

valid_id = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"], exclude_characters="\\"),
    min_size=1,
    max_size=32,
)
metric_name = valid_id.filter(lambda n: n not in ("seq", "time", "device_id", "site_id"))
metric_value = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False),
    st.integers(-(2**60), 2**60),
)
TS_RE = re.compile(r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?([+-])(\d+):(\d+)")


def rfc3339_ns(ts: str) -> int:
    """An independent reading of the timestamps `valid_message` writes."""
    m = TS_RE.fullmatch(ts)
    assert m is not None
    y, mo, d, h, mi, s, frac, sign, oh, om = m.groups()
    seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    offset = (int(oh) * 3600 + int(om) * 60) * (1 if sign == "+" else -1)
    return (seconds - offset) * 10**9 + int((frac or "0").ljust(9, "0"))


@st.composite
def valid_message(draw: st.DrawFn) -> dict[str, Any]:
    when = draw(
        st.datetimes(
            min_value=datetime.datetime(1678, 1, 1), max_value=datetime.datetime(2261, 12, 31)
        )
    )
    frac = draw(st.sampled_from(["", ".5", ".123456789", ".000001"]))
    offset = draw(st.sampled_from(["+00:00", "-05:30", "+13:45"]))
    return {
        "tenant_id": draw(st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)),
        "device_id": draw(valid_id),
        "site_id": draw(valid_id),
        "provision_token": draw(valid_id),
        "msg_type": draw(st.sampled_from(["telemetry", "heartbeat"])),
        "ts": when.strftime("%Y-%m-%dT%H:%M:%S") + frac + offset,
        "seq": draw(st.integers(0, 2**63 - 1)),
        "metrics": draw(st.dictionaries(metric_name, metric_value, max_size=10)),
    }


@SETTINGS
@given(msgs=st.lists(valid_message(), min_size=1, max_size=5), ensure_ascii=st.booleans())
def test_encoded_lines_read_back_as_the_values_sent(
    msgs: list[dict[str, Any]], ensure_ascii: bool
) -> None:
    body = json.dumps({"messages": msgs}, ensure_ascii=ensure_ascii).encode()
    for core in (RUST, TWIN):
        batch = core.parse_batch(body, RECEIVE_NS)
        assert batch.reasons() == [None] * len(msgs)
        lines = b"".join(lines for _, lines, _ in batch.tenant_lines())
        by_tenant = [m for t, *_ in batch.tenant_lines() for m in msgs if m["tenant_id"] == t]
        for msg, parsed in zip(by_tenant, read_lines(lines), strict=True):
            fields = {k: v if isinstance(v, bool) else float(v) for k, v in msg["metrics"].items()}
            assert parsed == {
                "measurement": msg["msg_type"],
                "tags": {"device_id": msg["device_id"], "site_id": msg["site_id"]},
                "fields": {**fields, "seq": msg["seq"]},
                "time": rfc3339_ns(msg["ts"]),
            }
            for name, value in fields.items():
                assert math.copysign(1, parsed["fields"][name]) == math.copysign(1, value)


# -- field types -------------------------------------------------------------------------------

FIELD_NAMES = ["temp", "on", "a b", "x,y=z", "湿度", "seq"]
field_value = st.one_of(st.booleans(), st.sampled_from([0, -1, 21.5, 1e300, 2**70]))
field_message = st.fixed_dictionaries(
    {
        "tenant_id": st.sampled_from(["acme", "beta"]),
        "device_id": st.sampled_from(["d1", "d 2"]),
        "site_id": st.just("s"),
        "provision_token": st.just("k"),
        "msg_type": st.sampled_from(["telemetry", "heartbeat", "event"]),
        # `seq` as a metric name makes the item INVALID_METRICS before any type check.
        "metrics": st.dictionaries(st.sampled_from(FIELD_NAMES), field_value, max_size=4),
    }
)
field_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("batch"),
            st.lists(field_message, min_size=1, max_size=6),
            st.sampled_from([None, "UNAUTHORIZED"]),
        ),
        st.tuples(
            st.just("learn"),
            st.sampled_from(["acme", "beta"]),
            st.sampled_from(["telemetry", "heartbeat", "power"]),
            st.sampled_from(FIELD_NAMES),
            st.sampled_from(["float", "integer", "unsigned", "string", "boolean", "bool"]),
        ),
    ),
    max_size=12,
)


def run_field_types(core: Any, max_per_tenant: int, ops: list[tuple[Any, ...]]) -> list[Any]:
    """Everything observable about FieldTypes through a sequence of batches and learns."""
    types = core.FieldTypes(max_per_tenant)
    log: list[Any] = []
    for op in ops:
        if op[0] == "learn":
            try:
                log.append(types.learn(*op[1:]))
            except ValueError as exc:
                log.append(error_of(exc))
            continue
        _, messages, reason = op
        batch = core.parse_batch(json.dumps({"messages": messages}).encode(), RECEIVE_NS)
        # Half of each group rejected first: only what is still accepted is checked.
        verdicts = [((n + 1) // 2 if reason else n, reason) for *_, n in batch.groups()]
        batch.resolve(verdicts)
        types.admit(batch)
        buffers = core.TenantBuffers()
        buffers.append(batch)
        log.append((batch.reasons(), batch.details(), batch.response_json()))
        log.append(batch.tenant_lines())
    names = [(t, m, f) for t in ("acme", "beta") for m in MSG_TYPES_ALL for f in FIELD_NAMES]
    log.append([types.get(*name) for name in names])
    log.append((len(types), types.untracked, types.max_per_tenant))
    return log


MSG_TYPES_ALL = ["telemetry", "heartbeat", "power"]


@SETTINGS
@given(ops=field_ops, max_per_tenant=st.sampled_from([10_000, 3, 0]))
def test_field_types_are_identical(ops: list[tuple[Any, ...]], max_per_tenant: int) -> None:
    same(run_field_types(RUST, max_per_tenant, ops), run_field_types(TWIN, max_per_tenant, ops))
