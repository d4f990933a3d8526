"""Pure-Python twin of `tidegate._core`: same API, byte-identical results.

It is the oracle of the differential tests, the baseline of the benches and the fallback selected
with `TIDEGATE_CORE=python`. The behaviour contract is docs/core-rules.md; `_core.pyi` documents
the API.

JSON is read with the stdlib scanner: integers keep their text (`_Int`), so a seq, a Shelly
timestamp or a huge metric is judged on what the client sent; floats go through `float()`, which
rounds correctly like Rust's `str::parse::<f64>`. The top-level object and the `messages` array
are walked here, element by element, to know each message's raw span for PAYLOAD_TOO_LARGE.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import threading
from _json import scanstring  # json.decoder's own C scanner; typeshed omits the alias
from collections import deque
from collections.abc import Callable, Sequence
from json.scanner import make_scanner
from typing import Final, cast

# Admission lives in its own module; re-exported here as part of the twin's API.
from tidegate._twin_admission import Admission as Admission
from tidegate._twin_admission import Progress
from tidegate._twin_details import BUFFER_FULL_DETAIL, quoted
from tidegate._twin_lineproto import MAX_LP_FIELDS as MAX_LP_FIELDS
from tidegate._twin_lineproto import MAX_LP_LINES as MAX_LP_LINES
from tidegate._twin_lineproto import MAX_LP_TAGS as MAX_LP_TAGS
from tidegate._twin_lineproto import (
    NO_DEVICE,
    UNKNOWN_DEVICE,
    Refused,
    line_count,
    numbered_lines,
    precision_ns,
    read_line,
    timestamp_ns,
)

INVALID_MSG_TYPE: Final = "INVALID_MSG_TYPE"
INVALID_SCHEMA: Final = "INVALID_SCHEMA"
INVALID_TIMESTAMP: Final = "INVALID_TIMESTAMP"
INVALID_METRICS: Final = "INVALID_METRICS"
PAYLOAD_TOO_LARGE: Final = "PAYLOAD_TOO_LARGE"
UNAUTHORIZED: Final = "UNAUTHORIZED"
SITE_MISMATCH: Final = "SITE_MISMATCH"
RATE_LIMITED: Final = "RATE_LIMITED"
BUFFER_FULL: Final = "BUFFER_FULL"
UNAVAILABLE: Final = "UNAVAILABLE"

MAX_BATCH_MESSAGES: Final = 100
MAX_SHELLY_MESSAGES: Final = 1000
MAX_ID_BYTES: Final = 128
MAX_TENANT_CHARS: Final = 64
TENANT_PATTERN: Final = "^[a-z0-9_-]{1,64}$"
MAX_METRICS: Final = 256
DEFAULT_MAX_PAYLOAD_BYTES: Final = 8192
DEFAULT_MAX_FIELDS_PER_TENANT: Final = 10000
MSG_TYPES: Final[tuple[str, ...]] = ("telemetry", "heartbeat")

# Declaration order is `reason_counts()` order.
REASONS: Final[tuple[str, ...]] = (
    INVALID_MSG_TYPE,
    INVALID_SCHEMA,
    INVALID_TIMESTAMP,
    INVALID_METRICS,
    PAYLOAD_TOO_LARGE,
    UNAUTHORIZED,
    SITE_MISMATCH,
    RATE_LIMITED,
    BUFFER_FULL,
    UNAVAILABLE,
)

SHELLY_REASONS: Final[tuple[str, ...]] = (
    "INVALID_MESSAGE",
    "INVALID_SRC",
    "INVALID_TIMESTAMP",
    "INVALID_PARAMS",
    "INVALID_READING",
)

_NOT_JSON: Final = "body is not valid JSON"
_NO_MESSAGES: Final = 'body must be a JSON object with a "messages" list'
_NOT_OBJECT: Final = "body must be a JSON object"
_EMPTY: Final = "batch is empty"
_DETAILS: Final = {
    INVALID_MSG_TYPE: "msg_type must be telemetry or heartbeat",
    INVALID_SCHEMA: "the message does not match the schema (ids, site_id, seq)",
    INVALID_TIMESTAMP: "ts must be an RFC 3339 timestamp within InfluxDB's range",
    INVALID_METRICS: "metrics must be an object of at most 256 numeric or boolean values",
}

# serde_json's recursive parse refuses the 128th level; the core enforces the same limit.
_MAX_DEPTH: Final = 127
_MAX_SEQ: Final = 2**63 - 1
_MIN_TS_NS: Final = -9223372036854775806
_MAX_TS_NS: Final = 9223372036854775806
_RESERVED_METRICS: Final = frozenset(("seq", "time", "device_id", "site_id"))
_SHELLY_CHANNELS: Final = tuple((n, f"switch:{n}") for n in range(4))
_WHITESPACE: Final = " \t\n\r"

_TENANT_RE: Final = re.compile(r"[a-z0-9_-]{1,64}")
# Control characters, backslash, lone surrogate: never part of an id or a metric name.
_BAD_NAME_CHAR_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ud800-\udfff]")
_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")
_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET_RE: Final = re.compile(r"[\[\]{}]")
_TS_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_LP_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_EPOCH_ORDINAL: Final = datetime.date(1970, 1, 1).toordinal()


class BodyError(ValueError):
    """The whole request body is unusable; nothing in it was processed."""

    detail: str

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class PanicException(BaseException):
    """What a bug in the compiled core raises; the twin never does."""


class _Int(str):
    """A JSON integer token, kept as the client wrote it."""

    __slots__ = ()


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_scan_once: Final[Callable[[str, int], tuple[object, int]]] = make_scanner(
    cast(
        "make_scanner",
        json.JSONDecoder(parse_int=_Int, parse_float=float, parse_constant=_reject_constant),
    )
)

# -- JSON ------------------------------------------------------------------------------------


def _skip_ws(s: str, i: int) -> int:
    while s[i : i + 1] in (" ", "\t", "\n", "\r"):
        i += 1
    return i


def _scan_value(s: str, i: int, depth: int) -> tuple[object, int]:
    """The JSON value at `s[i]` and its end; `depth` containers are already open around it."""
    try:
        value, end = _scan_once(s, i)
    except (StopIteration, ValueError, RecursionError):
        raise BodyError(_NOT_JSON) from None
    if type(value) is dict or type(value) is list:
        budget = _MAX_DEPTH - depth
        # Fewer brackets in the text than the budget: it cannot nest too deep.
        if s.count("{", i, end) + s.count("[", i, end) > budget and _depth(s[i:end]) > budget:
            raise BodyError(_NOT_JSON)
    return value, end


def _depth(text: str) -> int:
    """How many arrays/objects are open at once at the deepest point of valid JSON `text`.

    Measured on the text, not the parsed value: a duplicate key's dropped value counts too."""
    deepest = level = 0
    for bracket in _BRACKET_RE.findall(_STRING_RE.sub("", text)):
        level += 1 if bracket in "[{" else -1
        deepest = max(deepest, level)
    return deepest


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(_NOT_JSON) from None


def _parse_document(body: bytes) -> object:
    """The whole body as one JSON value (the single-message form)."""
    s = _decode(body)
    value, end = _scan_value(s, _skip_ws(s, 0), 0)
    if _skip_ws(s, end) != len(s):
        raise BodyError(_NOT_JSON)
    return value


def _parse_messages(body: bytes, max_messages: int) -> tuple[list[object], list[int]]:
    """The `messages` list of a batch body and each element's raw length in bytes."""
    s = _decode(body)
    i = _skip_ws(s, 0)
    if s[i : i + 1] != "{":
        _parse_document(body)
        raise BodyError(_NO_MESSAGES)
    messages: object = None
    sizes: list[int] = []
    i = _skip_ws(s, i + 1)
    if s[i : i + 1] == "}":
        i += 1
    else:
        while True:
            if s[i : i + 1] != '"':
                raise BodyError(_NOT_JSON)
            try:
                key, i = scanstring(s, i + 1, True)
            except ValueError:
                raise BodyError(_NOT_JSON) from None
            i = _skip_ws(s, i)
            if s[i : i + 1] != ":":
                raise BodyError(_NOT_JSON)
            i = _skip_ws(s, i + 1)
            if key == "messages":
                if s[i : i + 1] == "[":
                    messages, sizes, i = _scan_messages(s, i, len(s) == len(body))
                else:
                    messages, i = _scan_value(s, i, 1)
            else:
                _, i = _scan_value(s, i, 1)
            i = _skip_ws(s, i)
            c = s[i : i + 1]
            if c == ",":
                i = _skip_ws(s, i + 1)
            elif c == "}":
                i += 1
                break
            else:
                raise BodyError(_NOT_JSON)
    if _skip_ws(s, i) != len(s):
        raise BodyError(_NOT_JSON)
    if type(messages) is not list:
        raise BodyError(_NO_MESSAGES)
    if not messages:
        raise BodyError(_EMPTY)
    if len(messages) > max_messages:
        raise BodyError(f"batch has {len(messages)} messages; at most {max_messages} are allowed")
    return messages, sizes


def _scan_messages(s: str, i: int, ascii_body: bool) -> tuple[list[object], list[int], int]:
    """The array at `s[i]` (value of the top-level `messages`), element sizes, and its end."""
    values: list[object] = []
    sizes: list[int] = []
    i = _skip_ws(s, i + 1)
    if s[i : i + 1] == "]":
        return values, sizes, i + 1
    while True:
        value, end = _scan_value(s, i, 2)
        values.append(value)
        sizes.append(end - i if ascii_body else len(s[i:end].encode()))
        i = _skip_ws(s, end)
        c = s[i : i + 1]
        if c == ",":
            i = _skip_ws(s, i + 1)
        elif c == "]":
            return values, sizes, i + 1
        else:
            raise BodyError(_NOT_JSON)


# -- validation and encoding -----------------------------------------------------------------


def _valid_name(s: str) -> bool:
    """1..=128 bytes of UTF-8 without control characters, backslashes or lone surrogates."""
    if not s or _BAD_NAME_CHAR_RE.search(s):
        return False
    return len(s) <= MAX_ID_BYTES if s.isascii() else len(s.encode()) <= MAX_ID_BYTES


def _valid_id(value: object) -> bool:
    return type(value) is str and _valid_name(value)


def valid_tenant(s: str) -> bool:
    """Whether `s` is a tenant id: 1 to 64 of `a-z`, `0-9`, `_`, `-`."""
    return _TENANT_RE.fullmatch(s) is not None


def valid_id(s: str) -> bool:
    """Whether `s` is a valid device id, site id or provision token."""
    return _valid_name(s)


def reason_detail(reason: str) -> str:
    """The sentence explaining a validation reason code to a client; ValueError otherwise."""
    if reason not in REASONS:
        raise ValueError(f'unknown reason code "{reason}"')
    detail = _DETAILS.get(reason)
    if detail is None:
        raise ValueError(f'"{reason}" is not a validation reason code')
    return detail


def _unicode(value: object) -> str | None:
    """`value` when it is a string of valid Unicode (no lone surrogate)."""
    if type(value) is str and (value.isascii() or not _SURROGATE_RE.search(value)):
        return value
    return None


def _seq(value: object) -> int | None:
    """The seq, or None when it is not an integer token in 0..=2**63-1."""
    if value is None:
        return 0
    if type(value) is not _Int:
        return None
    if value[0] == "-":
        return 0 if value == "-0" else None
    if len(value) > 19:
        return None
    n = int(value)
    return n if n <= _MAX_SEQ else None


def _timestamp_ns(value: object) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 timestamp, None when invalid or out of range."""
    if type(value) is not str:
        return None
    m = _TS_RE.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    try:
        ordinal = datetime.date(int(year), int(month), int(day)).toordinal()
    except ValueError:
        return None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        return None
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = int(off_h) * 3600 + int(off_m) * 60
        if sign == "-":
            offset = -offset
    seconds = (
        (ordinal - _EPOCH_ORDINAL) * 86400
        + int(hour) * 3600
        + int(minute) * 60
        + int(second)
        - offset
    )
    ns = seconds * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    return ns if _MIN_TS_NS <= ns <= _MAX_TS_NS else None


def _number(value: object) -> float | None:
    """A finite JSON number as f64 (a bool is not a number); None otherwise."""
    t = type(value)
    if t is float:
        f = value
    elif t is _Int:
        f = float(value)  # type: ignore[arg-type]
    else:
        return None
    assert isinstance(f, float)
    return f if math.isfinite(f) else None


def _fields(metrics: object) -> str | None:
    """The metrics as line-protocol fields sorted by name, each followed by `,`."""
    if metrics is None:
        return ""
    if type(metrics) is not dict or len(metrics) > MAX_METRICS:
        return None
    parts = []
    for name in sorted(metrics):
        if not _valid_name(name) or name in _RESERVED_METRICS:
            return None
        value = metrics[name]
        if value is True:
            text = "true"
        elif value is False:
            text = "false"
        else:
            f = _number(value)
            if f is None:
                return None
            text = repr(f)
        parts.append(f"{name.translate(_LP_ESCAPES)}={text},")
    return "".join(parts)


def _escape(value: str) -> str:
    return value.translate(_LP_ESCAPES)


class _Item:
    """One validated message: its reason, and for a valid one its group key and line."""

    __slots__ = ("detail", "device_id", "key", "latest", "line", "reason", "tenant")

    def __init__(self, reason: str | None, device_id: str | None) -> None:
        self.reason = reason
        self.detail: str | None = None
        self.device_id = device_id
        self.tenant = ""
        self.key: tuple[str, str, str, str] | None = None
        self.line = b""
        # A valid item's (msg_type, ts_ns, seq, metrics) for `Latest`.
        self.latest: tuple[str, int, int, object] | None = None


def _validate(
    msg: object,
    size: int,
    identity: tuple[object, object, object, object] | None,
    untimed_ns: int,
    max_payload_bytes: int,
) -> _Item:
    """Apply the per-item rules in order; `identity` (tenant, device, type, token) overrides
    the message's own keys (single-message form); `untimed_ns` is the timestamp if it has no
    `ts`. A rejected item gets the detail of the first rule of its reason it breaks."""
    if type(msg) is not dict:
        if size > max_payload_bytes:
            return _rejected(
                _Item(None, None), PAYLOAD_TOO_LARGE, _too_large(size, max_payload_bytes)
            )
        return _rejected(
            _Item(None, None), INVALID_SCHEMA, f"message must be a JSON object, got {_kind(msg)}"
        )
    if identity is None:
        given = [
            _field(msg, key) for key in ("tenant_id", "device_id", "msg_type", "provision_token")
        ]
    else:
        given = [(True, value) for value in identity]
    (_, tenant), (_, device), (_, msg_type), (_, token) = given
    item = _Item(None, _unicode(device))
    # Named in `rejections()` when the item is rejected.
    if type(tenant) is str and _TENANT_RE.fullmatch(tenant) is not None:
        item.tenant = tenant
    if size > max_payload_bytes:
        return _rejected(item, PAYLOAD_TOO_LARGE, _too_large(size, max_payload_bytes))
    site = msg.get("site_id")
    seq = _seq(msg.get("seq"))
    if (
        type(tenant) is not str
        or _TENANT_RE.fullmatch(tenant) is None
        or not _valid_id(device)
        or not _valid_id(site)
        or not _valid_id(token)
        or type(msg_type) is not str
        or seq is None
    ):
        return _rejected(item, INVALID_SCHEMA, _schema_detail(msg, given))
    if msg_type not in MSG_TYPES:
        return _rejected(item, INVALID_MSG_TYPE, _msg_type_detail(msg_type))
    ts = msg.get("ts")
    if ts is not None:
        ns = _timestamp_ns(ts)
    elif _MIN_TS_NS <= untimed_ns <= _MAX_TS_NS:
        ns = untimed_ns
    else:
        ns = None
    if ns is None:
        return _rejected(item, INVALID_TIMESTAMP, _ts_detail(ts))
    fields = _fields(msg.get("metrics"))
    if fields is None:
        return _rejected(item, INVALID_METRICS, _metrics_detail(msg.get("metrics")))
    assert isinstance(device, str) and isinstance(site, str) and isinstance(token, str)
    item.tenant = tenant
    item.key = (tenant, device, site, token)
    item.latest = (msg_type, ns, seq, msg.get("metrics"))
    item.line = (
        f"{msg_type},device_id={_escape(device)},site_id={_escape(site)} {fields}seq={seq}i {ns}\n"
    ).encode()
    return item


# -- details of rejected messages --------------------------------------------------------------

_ID_RULE: Final = "1 to 128 bytes of UTF-8 without control characters or backslashes"
_SEQ_RULE: Final = "seq must be a whole number from 0 to 9223372036854775807"


def _rejected(item: _Item, reason: str, detail: str) -> _Item:
    item.reason = reason
    item.detail = detail
    return item


def _too_large(size: int, max_payload_bytes: int) -> str:
    return f"message is {size} bytes; the limit is {max_payload_bytes} bytes"


def _field(msg: dict[str, object], key: str) -> tuple[bool, object]:
    """`(present, value)` of a message key."""
    return key in msg, msg.get(key)


def _kind(value: object) -> str:
    """A JSON value's kind, as a detail names it (`_Int` is a str: tested first)."""
    if type(value) is _Int or type(value) is float:
        return "a number"
    if type(value) is str:
        return "a string"
    if type(value) is bool:
        return "a boolean"
    if value is None:
        return "null"
    return "an array" if type(value) is list else "an object"


def _lone(name: str) -> str:
    return f"{name} is not valid Unicode (it holds a lone surrogate)"


def _text_problem(name: str, present: bool, value: object) -> str | None:
    """Why a string field is not usable text, or None."""
    if not present:
        return f"{name} is missing"
    if type(value) is not str:
        return f"{name} must be a string, got {_kind(value)}"
    if _unicode(value) is None:
        return _lone(name)
    return None


def _schema_detail(msg: dict[str, object], fields: list[tuple[bool, object]]) -> str:
    """The first INVALID_SCHEMA rule broken: tenant_id, device_id, site_id, provision_token,
    msg_type (a string), seq."""
    tenant, device, msg_type, token = fields
    ids = (
        ("tenant_id", tenant, _TENANT_RE.fullmatch, "a tenant id: 1 to 64 of a-z, 0-9, _ and -"),
        ("device_id", device, valid_id, f"a valid id: {_ID_RULE}"),
        ("site_id", _field(msg, "site_id"), valid_id, f"a valid id: {_ID_RULE}"),
    )
    for name, (present, value), valid, what in ids:
        problem = _text_problem(name, present, value)
        if problem is not None:
            return problem
        assert isinstance(value, str)
        if not valid(value):
            return f"{name} {quoted(value)} is not {what}"
    problem = _text_problem("provision_token", *token)
    if problem is not None:
        return problem
    if not valid_id(cast("str", token[1])):
        return f"provision_token is not a valid token: {_ID_RULE}"
    present, value = msg_type
    if not present or type(value) is not str:
        return cast("str", _text_problem("msg_type", present, value))
    seq = msg.get("seq")
    if type(seq) is _Int or type(seq) is float:
        return _SEQ_RULE
    return f"{_SEQ_RULE}, got {_kind(seq)}"


def _msg_type_detail(msg_type: str) -> str:
    if _unicode(msg_type) is None:
        return _lone("msg_type")
    return f"msg_type {quoted(msg_type)} is not one of: {', '.join(MSG_TYPES)}"


def _ts_detail(ts: object) -> str:
    if ts is None:
        return "message has no ts, and its receive time is outside InfluxDB's range"
    if type(ts) is not str:
        return f"ts must be an RFC 3339 string, got {_kind(ts)}"
    if _unicode(ts) is None:
        return _lone("ts")
    return (
        f"ts {quoted(ts)} is not an RFC 3339 timestamp within InfluxDB's range (years 1677 to 2262)"
    )


def _metrics_detail(metrics: object) -> str:
    """The first metrics rule broken: an object, names valid Unicode, at most MAX_METRICS
    names, then each name and value in name order."""
    if type(metrics) is not dict:
        return f"metrics must be an object, got {_kind(metrics)}"
    if any(_unicode(name) is None for name in metrics):
        return _lone("a metric name")
    if len(metrics) > MAX_METRICS:
        return f"metrics holds {len(metrics)} names; at most {MAX_METRICS} are allowed"
    for name in sorted(metrics):
        if not _valid_name(name):
            return f"metric name {quoted(name)} is not a valid name: {_ID_RULE}"
        if name in _RESERVED_METRICS:
            return f"metric name {quoted(name)} is reserved"
        value = metrics[name]
        if type(value) is bool:
            continue
        if type(value) is _Int or type(value) is float:
            if _number(value) is None:
                return f"metric {quoted(name)} is not a finite number"
            continue
        return f"metric {quoted(name)} is {_kind(value)}; metrics must be numbers or booleans"
    raise AssertionError("metrics break no rule")


# -- Batch -----------------------------------------------------------------------------------


class Batch:
    """Parsed, validated and line-protocol-encoded messages of one request."""

    def __init__(self, items: list[_Item], receive_ns: int) -> None:
        self._items = items
        self.receive_ns = receive_ns
        self._keys: dict[tuple[str, str, str, str], int] = {}
        self._members: list[list[_Item]] = []
        for item in items:
            if item.key is not None:
                group = self._keys.setdefault(item.key, len(self._keys))
                if group == len(self._members):
                    self._members.append([])
                self._members[group].append(item)
        # Tenants of the valid items in order of first appearance: `append` reports in it.
        self._tenants = list(dict.fromkeys(key[0] for key in self._keys))
        self._resolved = False
        self._appended = False
        self._admission = Progress()
        self._admitted = False
        self._line_numbers: list[int] = []
        # Written with a tenant key: admission checks its devices are active, not tokens.
        self.tenant_key = False

    def __len__(self) -> int:
        """Number of messages in the request."""
        return len(self._items)

    def groups(self) -> list[tuple[str, str, str, str, int]]:
        """Distinct (tenant, device, site, token, count) of the valid items, first appearance
        order."""
        return [(*key, len(m)) for key, m in zip(self._keys, self._members, strict=True)]

    def resolve(self, verdicts: Sequence[tuple[int, str | None]]) -> None:
        """Apply one `(allowed, reason)` per group: the first `allowed` items stay accepted.
        All or nothing; checks in the compiled core's order."""
        for _, reason in verdicts:
            if reason is not None and reason not in REASONS:
                raise ValueError(f'unknown reason code "{reason}"')
        if self._resolved:
            raise ValueError("verdicts were already applied to this batch")
        if self._appended:
            raise ValueError("this batch was already appended")
        if self._admitted:
            raise ValueError(_ALREADY_ADMITTED)
        if len(verdicts) != len(self._members):
            raise ValueError(f"expected {len(self._members)} verdicts, got {len(verdicts)}")
        for group, ((allowed, reason), members) in enumerate(
            zip(verdicts, self._members, strict=True)
        ):
            if allowed < 0:
                raise ValueError(f"verdict {group} allows a negative count")
            if reason is None and allowed < len(members):
                raise ValueError(f"verdict {group} rejects items but gives no reason")
        self._resolved = True
        for (allowed, reason), members in zip(verdicts, self._members, strict=True):
            for item in members[allowed:]:
                item.reason = reason

    def reasons(self) -> list[str | None]:
        """Per item, its reason code or None when accepted."""
        return [item.reason for item in self._items]

    def reason_counts(self) -> list[tuple[str, int]]:
        """Rejected items per reason code, codes in a fixed order, zero counts omitted."""
        counts = dict.fromkeys(REASONS, 0)
        for item in self._items:
            if item.reason is not None:
                counts[item.reason] += 1
        return [(code, n) for code, n in counts.items() if n]

    def tenant_lines(self) -> list[tuple[str, bytes, int]]:
        """Accepted items' line protocol per tenant, tenants in order of first appearance."""
        per_tenant: dict[str, list[bytes]] = {}
        for item in self._items:
            if item.reason is None:
                per_tenant.setdefault(item.tenant, []).append(item.line)
        return [(t, b"".join(lines), len(lines)) for t, lines in per_tenant.items()]

    def tenant_counts(self) -> list[tuple[str, int, int]]:
        """Per tenant of the valid items: `(tenant, accepted, refused after validation)`."""
        out: dict[str, list[int]] = {}
        for key, members in zip(self._keys, self._members, strict=True):
            counts = out.setdefault(key[0], [0, 0])
            for item in members:
                counts[item.reason is not None] += 1
        return [(tenant, accepted, refused) for tenant, (accepted, refused) in out.items()]

    def refusals(self, reason: str) -> list[tuple[str, str, int]]:
        """Per device with items rejected for `reason`: `(tenant, device, count)`."""
        if reason not in REASONS:
            raise ValueError(f'unknown reason code "{reason}"')
        out = []
        for key, members in zip(self._keys, self._members, strict=True):
            n = sum(1 for item in members if item.reason == reason)
            if n:
                out.append((key[0], key[1], n))
        return out

    def response_json(self) -> tuple[int, int, bytes]:
        """`(accepted, rejected, body)` of the batch endpoint's JSON response."""
        results = []
        accepted = 0
        for index, item in enumerate(self._items):
            if item.reason is None:
                accepted += 1
                head = f'{{"index":{index},"status":"accepted"'
            else:
                head = f'{{"index":{index},"status":"rejected","reason":"{item.reason}"'
                if item.detail is not None:
                    head += f',"detail":{json.dumps(item.detail, ensure_ascii=False)}'
            if item.device_id is None:
                results.append(head + "}")
            else:
                results.append(
                    f'{head},"device_id":{json.dumps(item.device_id, ensure_ascii=False)}}}'
                )
        rejected = len(self._items) - accepted
        body = f'{{"accepted":{accepted},"rejected":{rejected},"results":[{",".join(results)}]}}'
        return accepted, rejected, body.encode()

    def withdraw(self, tenants: Sequence[str], reason: str, detail: str) -> int:
        """Accepted items of `tenants` become `reason` with `detail` (their lines were not taken
        elsewhere); once, and the batch cannot be appended afterwards. Returns how many."""
        if reason not in REASONS:
            raise ValueError(f'unknown reason code "{reason}"')
        items, _tenants = self._take_for_append()
        wanted = set(tenants)
        withdrawn = [item for item in items if item.tenant in wanted]
        for item in withdrawn:
            item.reason = reason
            item.detail = detail
        return len(withdrawn)

    @property
    def retry_after(self) -> float:
        """Seconds until the next token of the slowest rate-limited device (0.0: none)."""
        return self._admission.retry_after

    def line_numbers(self) -> list[int]:
        """Per item, its 1-based line number in a line-protocol body (empty for JSON)."""
        return list(self._line_numbers)

    def details(self) -> list[tuple[int, str]]:
        """`(index, detail)` of the rejected items that have a detail, in item order."""
        return [(i, item.detail) for i, item in enumerate(self._items) if item.detail is not None]

    def rejections(self) -> list[tuple[str, str, str | None, str]]:
        """`(reason, tenant, device, detail)` of each rejected item, in item order; the tenant
        is empty and the device None when the message named no valid one."""
        return [
            (item.reason, item.tenant, item.device_id, item.detail or "")
            for item in self._items
            if item.reason is not None
        ]

    def _explain_groups(self, details: Sequence[str | None]) -> None:
        """Give each group's rejected items its detail (admission's), after `resolve`."""
        for detail, members in zip(details, self._members, strict=True):
            if detail is None:
                continue
            for item in members:
                if item.reason is not None:
                    item.detail = detail

    def _take_for_admit(self) -> list[_Item]:
        """The items still accepted, once and before append; later calls raise."""
        if self._appended:
            raise ValueError("this batch was already appended")
        if self._admitted:
            raise ValueError(_ALREADY_ADMITTED)
        self._admitted = True
        return [item for item in self._items if item.reason is None]

    def _take_for_append(self) -> tuple[list[_Item], list[str]]:
        """The items to buffer and the tenants of the valid items in order of first
        appearance, once; later calls raise."""
        if self._appended:
            raise ValueError("this batch was already appended")
        self._appended = True
        return [item for item in self._items if item.reason is None], self._tenants


def parse_batch(body: bytes, receive_ns: int, max_payload_bytes: int = 8192) -> Batch:
    """Parse a `{"messages": [...]}` body of 1 to 100 messages; BodyError for an unusable
    body. A message without `ts` gets `receive_ns` plus its index, so none overwrites another."""
    _count("max_payload_bytes", max_payload_bytes)
    messages, sizes = _parse_messages(body, MAX_BATCH_MESSAGES)
    return Batch(
        [
            _validate(msg, size, None, receive_ns + index, max_payload_bytes)
            for index, (msg, size) in enumerate(zip(messages, sizes, strict=True))
        ],
        receive_ns,
    )


def parse_single(
    body: bytes,
    tenant_id: str,
    device_id: str,
    msg_type: str,
    provision_token: str,
    receive_ns: int,
    max_payload_bytes: int = 8192,
) -> Batch:
    """Parse the single-message form, identity from the URL and header; a one-item Batch."""
    _count("max_payload_bytes", max_payload_bytes)
    msg = _parse_document(body)
    if type(msg) is not dict:
        raise BodyError(_NOT_OBJECT)
    size = len(body.strip(b" \t\n\r"))
    identity = (tenant_id, device_id, msg_type, provision_token)
    return Batch([_validate(msg, size, identity, receive_ns, max_payload_bytes)], receive_ns)


def parse_lines(
    body: bytes,
    tenant_id: str,
    receive_ns: int,
    precision: str = "ns",
    max_payload_bytes: int = 8192,
    device: tuple[str, str, str] | None = None,
    sites: dict[str, str] | None = None,
) -> Batch:
    """Parse a line-protocol body for `tenant_id`, written by a device (`device` = its id,
    site and token) or a tenant key (`sites` = its active devices' sites)."""
    _count("max_payload_bytes", max_payload_bytes)
    if (device is None) == (sites is None):
        raise ValueError("give exactly one of device and sites")
    if not valid_tenant(tenant_id):
        raise ValueError("tenant_id must be a valid tenant")
    if device is not None and not all(_valid_name(s) for s in device):
        raise ValueError("device must be valid ids (device_id, site_id, provision_token)")
    ns_per_unit = precision_ns(precision)
    if ns_per_unit is None:
        raise BodyError(f'precision "{precision}" is not one of ns, us, \u00b5s, u, ms, s, m, h')
    items = []
    numbers = []
    for index, (number, line) in enumerate(_lp_lines(body)):
        numbers.append(number)
        item = _Item(None, None if device is None else device[0])
        item.tenant = tenant_id
        try:
            if len(line.encode()) > max_payload_bytes:
                raise Refused((PAYLOAD_TOO_LARGE, f"line exceeds {max_payload_bytes} bytes"))
            read = read_line(line, _valid_name)
            ts = timestamp_ns(read.timestamp, ns_per_unit, receive_ns + index)
            if device is not None:
                dev, site, token = device
            else:
                assert sites is not None
                dev = read.tags.get("device_id", "")
                if not dev:
                    raise Refused(NO_DEVICE)
                if dev not in sites:
                    raise Refused(UNKNOWN_DEVICE)
                site, token = sites[dev], ""
        except Refused as refused:
            item.reason, item.detail = refused.why
        else:
            item.device_id = dev
            item.key = (tenant_id, dev, site, token)
            item.line = read.canonical(dev, site, ts)
        items.append(item)
    batch = Batch(items, receive_ns)
    batch._line_numbers = numbers
    batch.tenant_key = sites is not None
    return batch


def line_devices(body: bytes, max_payload_bytes: int = 8192) -> list[str]:
    """The distinct `device_id` tags of the lines a tenant key could write, first appearance
    order."""
    _count("max_payload_bytes", max_payload_bytes)
    devices: dict[str, None] = {}
    for _number, line in _lp_lines(body):
        if len(line.encode()) > max_payload_bytes:
            continue
        try:
            read = read_line(line, _valid_name)
        except Refused:
            continue
        if "device_id" in read.tags:
            devices.setdefault(read.tags["device_id"], None)
    return list(devices)


def _lp_lines(body: bytes) -> list[tuple[int, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body is not valid UTF-8") from None
    count = line_count(body)
    if count > MAX_LP_LINES:
        raise BodyError(f"body has {count} lines; at most {MAX_LP_LINES} are allowed")
    return numbered_lines(text)


# -- Latest ----------------------------------------------------------------------------------

LatestRow = tuple[str, int, int, str, int]


class Latest:
    """Per device, its last accepted message (`telemetry_latest`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (tenant, device) -> [msg_type, ts_ns, seq, metrics, received_ns, dirty]
        self._held: dict[tuple[str, str], list[object]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def record(self, batch: Batch) -> None:
        """Keep each device's last accepted item of an appended batch."""
        with self._lock:
            for item in batch._items:
                if item.reason is None and item.key is not None and item.latest is not None:
                    self._held[item.key[:2]] = [*item.latest, batch.receive_ns, True]

    def get(self, tenant: str, devices: Sequence[str]) -> list[LatestRow | None]:
        """Per device, `(msg_type, ts_ns, seq, metrics_json, received_ns)` or None."""
        with self._lock:
            found = [self._held.get((tenant, d)) for d in devices]
        return [None if e is None else _latest_row(e) for e in found]

    def take_dirty(self) -> list[tuple[str, str, str, int, int, str, int]]:
        """Devices changed since the last call, sorted by key; marks them clean."""
        with self._lock:
            dirty = sorted((k, e) for k, e in self._held.items() if e[5])
            for _, e in dirty:
                e[5] = False
        return [(*k, *_latest_row(e)) for k, e in dirty]

    def mark_dirty(self, keys: Sequence[tuple[str, str]]) -> None:
        """Mark `(tenant, device)` keys dirty again; unknown keys are ignored."""
        with self._lock:
            for key in keys:
                entry = self._held.get(key)
                if entry is not None:
                    entry[5] = True


def _latest_row(entry: list[object]) -> LatestRow:
    msg_type, ts_ns, seq, metrics, received_ns = entry[:5]
    pairs = []
    if isinstance(metrics, dict):
        for name in sorted(metrics):
            value = metrics[name]
            text = "true" if value is True else "false" if value is False else repr(_number(value))
            pairs.append(f"{json.dumps(name, ensure_ascii=False)}:{text}")
    assert isinstance(msg_type, str) and isinstance(ts_ns, int) and isinstance(seq, int)
    assert isinstance(received_ns, int)
    return msg_type, ts_ns, seq, "{" + ",".join(pairs) + "}", received_ns


# -- FieldTypes ------------------------------------------------------------------------------

_ALREADY_ADMITTED: Final = "field types were already checked for this batch"
_FIELD_TYPES: Final = ("float", "integer", "unsigned", "string", "boolean")
# A line's parts are split at spaces no backslash escapes (ids and names hold no backslash).
_LP_SPACE_RE: Final = re.compile(r"(?<!\\) ")
_LP_FIELD_RE: Final = re.compile(r'((?:[^\\=]|\\.)+)=("(?:[^\\"]|\\.)*"|[^,]*),?')
_LP_UNESCAPE_RE: Final = re.compile(r"\\(.)")
_LP_HEAD_END_RE: Final = re.compile(r"(?<!\\) ")
_LP_MEASUREMENT_END_RE: Final = re.compile(r"(?<!\\),")


def _line_fields(line: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The measurement of an encoded line and its fields' `(name, InfluxDB type)`."""
    text = line.decode()
    head_end = _LP_HEAD_END_RE.search(text)
    assert head_end is not None
    fields = text[head_end.end() : text.rindex(" ")]
    out = []
    for m in _LP_FIELD_RE.finditer(fields):
        value = m[2]
        if value in ("true", "false"):
            kind = "boolean"
        elif value.startswith('"'):
            kind = "string"
        elif value.endswith("i"):
            kind = "integer"
        elif value.endswith("u"):
            kind = "unsigned"
        else:
            kind = "float"
        out.append((_LP_UNESCAPE_RE.sub(r"\1", m[1]), kind))
    measurement_end = _LP_MEASUREMENT_END_RE.search(text)
    assert measurement_end is not None
    return _LP_UNESCAPE_RE.sub(r"\1", text[: measurement_end.start()]), out


class FieldTypes:
    """Each tenant's InfluxDB field types per measurement; rejects conflicting items."""

    def __init__(self, max_per_tenant: int = 10000) -> None:
        self._max = _count("max_per_tenant", max_per_tenant)
        self._tenants: dict[str, dict[tuple[str, str], str]] = {}
        self._untracked = 0
        self._lock = threading.Lock()

    def admit(self, batch: Batch) -> None:
        """INVALID_METRICS with a detail for each still-accepted item whose field types
        conflict with the remembered ones; remember the new fields of the others."""
        with self._lock:
            for item in batch._take_for_admit():
                known = self._tenants.setdefault(item.tenant, {})
                measurement, fields = _line_fields(item.line)
                for name, kind in fields:
                    had = known.get((measurement, name))
                    if had is not None and had != kind:
                        item.reason = INVALID_METRICS
                        item.detail = (
                            f'field type conflict: "{name}" of {measurement} is {had}, '
                            f"this message sends {kind}"
                        )
                        break
                else:
                    for name, kind in fields:
                        if (measurement, name) in known:
                            continue
                        if len(known) >= self._max:
                            self._untracked += 1
                            continue
                        known[(measurement, name)] = kind

    def unknown(self, batch: Batch) -> list[tuple[str, str, str, str]]:
        """The distinct fields of the still-accepted items their tenant does not know yet,
        `(tenant, measurement, field, type)` of their first item; none for a tenant at its cap."""
        out: dict[tuple[str, str, str], str] = {}
        with self._lock:
            for item in batch._items:
                known = self._tenants.get(item.tenant, {})
                if item.reason is not None or len(known) >= self._max:
                    continue
                measurement, fields = _line_fields(item.line)
                for name, kind in fields:
                    if (measurement, name) not in known:
                        out.setdefault((item.tenant, measurement, name), kind)
        return [(*key, kind) for key, kind in out.items()]

    def learn(self, tenant: str, measurement: str, field: str, field_type: str) -> bool:
        """Set a field's type as InfluxDB reports it; False when it is not remembered."""
        if field_type not in _FIELD_TYPES:
            raise ValueError(f'unknown field type "{field_type}"')
        with self._lock:
            known = self._tenants.setdefault(tenant, {})
            if (measurement, field) not in known and len(known) >= self._max:
                return False
            known[(measurement, field)] = field_type
            return True

    def get(self, tenant: str, measurement: str, field: str) -> str | None:
        """The remembered type of a field, or None."""
        with self._lock:
            return self._tenants.get(tenant, {}).get((measurement, field))

    def __len__(self) -> int:
        """Fields remembered, all tenants."""
        with self._lock:
            return sum(map(len, self._tenants.values()))

    @property
    def untracked(self) -> int:
        """Fields of admitted items not remembered because of the cap."""
        return self._untracked

    @property
    def max_per_tenant(self) -> int:
        return self._max


# -- TenantBuffers ---------------------------------------------------------------------------


class _Body:
    """A drained body: its bytes, line count and marks (`[mark, lines]` runs, oldest first)."""

    __slots__ = ("data", "done", "lines", "marks")

    def __init__(self, data: bytes, lines: int, marks: deque[list[int]]) -> None:
        self.data = data
        self.done = 0  # bytes already settled (in flight only)
        self.lines = lines
        self.marks = marks


class _TenantBuffer:
    __slots__ = ("chunks", "lines", "marks", "nbytes", "put_back")

    def __init__(self) -> None:
        # Newline-terminated chunks of whole lines with their line counts, oldest first.
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.lines = 0
        self.nbytes = 0
        self.marks: deque[list[int]] = deque()
        self.put_back: _Body | None = None

    def depth(self) -> tuple[int, int]:
        if self.put_back is None:
            return self.lines, self.nbytes
        return self.lines + self.put_back.lines, self.nbytes + len(self.put_back.data)


def _push_mark(marks: deque[list[int]], mark: int, lines: int) -> None:
    if lines:
        if marks and marks[-1][0] == mark:
            marks[-1][1] += lines
        else:
            marks.append([mark, lines])


def _take_marks(marks: deque[list[int]], lines: int) -> deque[list[int]]:
    out: deque[list[int]] = deque()
    while lines:
        run = marks[0]
        n = min(run[1], lines)
        _push_mark(out, run[0], n)
        run[1] -= n
        lines -= n
        if not run[1]:
            marks.popleft()
    return out


class TenantBuffers:
    """Per-tenant line-protocol buffers under a global and a per-tenant byte cap, with
    delivery marks. Thread-safe."""

    def __init__(
        self,
        batch_size: int = 500,
        flush_bytes: int = 1048576,
        max_bytes: int = 67108864,
        tenant_max_bytes: int | None = None,
    ) -> None:
        self._batch_size = _count("batch_size", batch_size)
        self._flush_bytes = _count("flush_bytes", flush_bytes)
        self._max_bytes = _count("max_bytes", max_bytes)
        self._tenant_max_bytes = (
            self._max_bytes
            if tenant_max_bytes is None
            else _count("tenant_max_bytes", tenant_max_bytes)
        )
        self._total = 0
        self._used: dict[str, int] = {}
        self._tenants: dict[str, _TenantBuffer] = {}
        self._in_flight: dict[str, _Body] = {}
        self._last_mark = 0
        self._open: dict[int, int] = {}
        self._delivered: set[int] = set()
        self._lock = threading.Lock()

    def _due(self, buf: _TenantBuffer) -> bool:
        lines, nbytes = buf.depth()
        return lines >= self._batch_size or nbytes >= self._flush_bytes

    def _check_mark(self, mark: int) -> None:
        if mark == 0 or mark > self._last_mark:
            return
        if mark < self._last_mark:
            raise ValueError(f"mark {mark} is below the last mark given ({self._last_mark})")
        if mark not in self._open:
            raise ValueError(f"mark {mark} is already delivered")

    def _add_mark(self, mark: int, lines: int) -> None:
        if not mark:
            return
        self._last_mark = max(self._last_mark, mark)
        if lines:
            self._open[mark] = self._open.get(mark, 0) + lines
        elif mark not in self._open:
            self._delivered.add(mark)

    def _settle_mark(self, mark: int, lines: int) -> None:
        if mark:
            self._open[mark] -= lines
            if not self._open[mark]:
                del self._open[mark]
                self._delivered.add(mark)

    def _store(self, tenant: str, lines: bytes, count: int, mark: int) -> _TenantBuffer:
        buf = self._tenants.get(tenant)
        if buf is None:
            buf = self._tenants[tenant] = _TenantBuffer()
        buf.chunks.append((lines, count))
        buf.lines += count
        buf.nbytes += len(lines)
        _push_mark(buf.marks, mark, count)
        self._total += len(lines)
        self._used[tenant] = self._used.get(tenant, 0) + len(lines)
        return buf

    def _fits(self, tenant: str, size: int) -> bool:
        return (
            self._total + size <= self._max_bytes
            and self._used.get(tenant, 0) + size <= self._tenant_max_bytes
        )

    def append(self, batch: Batch, mark: int = 0) -> list[str]:
        """Append the batch's accepted lines under `mark`; an item that does not fit either cap
        gets BUFFER_FULL. Returns the tenants appended to that reached a flush threshold, in
        order of first appearance in the batch."""
        _count("mark", mark)
        with self._lock:
            self._check_mark(mark)
            items, tenants = batch._take_for_append()
            stored: dict[str, list[bytes]] = {}
            for item in items:
                if not self._fits(item.tenant, len(item.line)):
                    item.reason = BUFFER_FULL
                    item.detail = BUFFER_FULL_DETAIL
                    continue
                stored.setdefault(item.tenant, []).append(item.line)
                self._used[item.tenant] = self._used.get(item.tenant, 0) + len(item.line)
                self._total += len(item.line)
            self._add_mark(mark, sum(len(lines) for lines in stored.values()))
            due = set()
            # Buffers are created in the order of their first stored line.
            for tenant, parts in stored.items():
                data = b"".join(parts)
                # _store counts the bytes again: they were counted above, per item.
                self._total -= len(data)
                self._used[tenant] -= len(data)
                if self._due(self._store(tenant, data, len(parts), mark)):
                    due.add(tenant)
            return [t for t in tenants if t in due]

    def append_lines(self, tenant: str, lines: bytes, line_count: int, mark: int = 0) -> bool:
        """Append newline-terminated lines for one tenant under `mark`, all or nothing; False
        when they do not fit under either cap."""
        _count("line_count", line_count)
        _count("mark", mark)
        _check_lines(lines, line_count)
        with self._lock:
            self._check_mark(mark)
            if not self._fits(tenant, len(lines)):
                self._add_mark(mark, 0)
                return False
            self._add_mark(mark, line_count)
            self._store(tenant, lines, line_count, mark)
            return True

    def ready(self) -> list[str]:
        """Tenants at or over a flush threshold, or with a put-back body waiting."""
        with self._lock:
            return [
                t for t, buf in self._tenants.items() if buf.put_back is not None or self._due(buf)
            ]

    def tenants(self) -> list[str]:
        """Tenants with anything buffered or put back."""
        with self._lock:
            return list(self._tenants)

    def drain(self, tenant: str, max_lines: int = 5000) -> tuple[bytes, int] | None:
        """Take the tenant's oldest data as one write body, now in flight (one per tenant)."""
        if _count("max_lines", max_lines) < 1:
            raise ValueError("max_lines must be at least 1")
        with self._lock:
            if tenant in self._in_flight:
                raise ValueError(f'tenant "{tenant}" already has a body in flight')
            buf = self._tenants.get(tenant)
            if buf is None:
                return None
            if buf.put_back is not None:
                body, buf.put_back = buf.put_back, None
            else:
                data, count = _take_lines(buf.chunks, max_lines)
                buf.lines -= count
                buf.nbytes -= len(data)
                body = _Body(data, count, _take_marks(buf.marks, count))
            self._in_flight[tenant] = body
            if buf.put_back is None and not buf.lines:
                del self._tenants[tenant]
            return body.data, body.lines

    def settle(self, tenant: str, line_count: int) -> None:
        """The oldest `line_count` lines of the tenant's body in flight are finished with."""
        _count("line_count", line_count)
        with self._lock:
            body = self._in_flight.get(tenant)
            if body is None:
                raise ValueError(f'tenant "{tenant}" has no body in flight')
            if line_count > body.lines:
                raise ValueError(f"{line_count} lines are not in flight (only {body.lines} are)")
            cut = body.done
            for _ in range(line_count):
                cut = body.data.index(b"\n", cut) + 1
            nbytes = cut - body.done
            body.done = cut
            body.lines -= line_count
            settled = _take_marks(body.marks, line_count)
            if not body.lines:
                del self._in_flight[tenant]
            self._total -= nbytes
            self._used[tenant] -= nbytes
            if not self._used[tenant]:
                del self._used[tenant]
            for mark, lines in settled:
                self._settle_mark(mark, lines)

    def put_back(self, tenant: str) -> None:
        """Return the unsettled rest of the tenant's body in flight; it is its next drain."""
        with self._lock:
            body = self._in_flight.pop(tenant, None)
            if body is None:
                raise ValueError(f'tenant "{tenant}" has no body in flight')
            buf = self._tenants.get(tenant)
            if buf is None:
                buf = self._tenants[tenant] = _TenantBuffer()
            buf.put_back = _Body(body.data[body.done :], body.lines, body.marks)

    def depth(self) -> dict[str, tuple[int, int]]:
        """Per tenant, (lines, bytes) buffered or put back (not in flight)."""
        with self._lock:
            return {t: buf.depth() for t, buf in self._tenants.items()}

    def tenant_bytes(self) -> dict[str, int]:
        """Per tenant, bytes counted against tenant_max_bytes, tenants by name."""
        with self._lock:
            return dict(sorted(self._used.items()))

    def take_delivered(self) -> list[int]:
        """Marks delivered since the previous call, ascending."""
        with self._lock:
            out = sorted(self._delivered)
            self._delivered.clear()
            return out

    @property
    def delivered_through(self) -> int:
        """The largest N such that every mark up to N is delivered (0 when none)."""
        with self._lock:
            return min(self._open) - 1 if self._open else self._last_mark

    @property
    def total_bytes(self) -> int:
        """All bytes counted against the cap: buffered, put back and in flight."""
        return self._total

    @property
    def max_bytes(self) -> int:
        """The global byte cap."""
        return self._max_bytes

    @property
    def tenant_max_bytes(self) -> int:
        """The per-tenant byte cap."""
        return self._tenant_max_bytes


def _count(name: str, n: int) -> int:
    """`n`, a count or size argument; ValueError when it is negative."""
    if n < 0:
        raise ValueError(f"{name} must not be negative")
    return n


def _check_lines(lines: bytes, line_count: int) -> None:
    if (
        _count("line_count", line_count) < 1
        or lines.count(b"\n") != line_count
        or not lines.endswith(b"\n")
    ):
        raise ValueError("lines must be line_count newline-terminated lines, and line_count >= 1")


def _take_lines(chunks: deque[tuple[bytes, int]], max_lines: int) -> tuple[bytes, int]:
    """Pop up to `max_lines` whole lines off the front of `chunks`."""
    parts: list[bytes] = []
    count = 0
    while chunks and count < max_lines:
        chunk, n = chunks[0]
        if count + n <= max_lines:
            chunks.popleft()
            parts.append(chunk)
            count += n
            continue
        cut = -1
        for _ in range(max_lines - count):
            cut = chunk.find(b"\n", cut + 1)
        parts.append(chunk[: cut + 1])
        chunks[0] = (chunk[cut + 1 :], n - (max_lines - count))
        count = max_lines
    return b"".join(parts), count


# -- Shelly ----------------------------------------------------------------------------------


class ShellyBatch:
    """Readings of a Shelly batch, columnar, deduplicated on the idempotency key."""

    def __init__(self) -> None:
        self.total_messages = 0
        self.devices = 0
        self.duplicates_in_batch = 0
        self.errors: list[tuple[int, str]] = []
        self.device_id: list[str] = []
        self.channel: list[int] = []
        self.power: list[float] = []
        self.voltage: list[float | None] = []
        self.current: list[float | None] = []
        self.timestamp: list[int] = []
        self.idempotency_key: list[str] = []

    def __len__(self) -> int:
        """Number of readings (rows)."""
        return len(self.power)

    def columns(
        self,
    ) -> tuple[
        list[str],
        list[int],
        list[float],
        list[float | None],
        list[float | None],
        list[int],
        list[str],
    ]:
        """`(device_id, channel, power, voltage, current, timestamp, idempotency_key)`."""
        return (
            self.device_id,
            self.channel,
            self.power,
            self.voltage,
            self.current,
            self.timestamp,
            self.idempotency_key,
        )

    def encode(self, rows: Sequence[int]) -> tuple[bytes, int]:
        """Line protocol (measurement `power`) of the readings at `rows`, and its line count."""
        lines = [self._line(r) for r in rows]
        return "".join(lines).encode(), len(lines)

    def encoded_size(self, rows: Sequence[int]) -> int:
        """The length of `encode(rows)[0]`."""
        return len(self.encode(rows)[0])

    def _line(self, r: int) -> str:
        if not 0 <= r < len(self.power):
            raise IndexError(f"row {r} out of range")
        current, voltage = self.current[r], self.voltage[r]
        return (
            f"power,channel={self.channel[r]},device_id={_escape(self.device_id[r])} "
            f"apower={self.power[r]!r}"
            + ("" if current is None else f",current={current!r}")
            + ("" if voltage is None else f",voltage={voltage!r}")
            + f" {self.timestamp[r] * 1_000_000_000}\n"
        )


def _shelly_timestamp(value: object, now_s: int) -> int | None:
    if type(value) is not _Int or value[0] == "-" or len(value) > 20:
        return None
    ts = int(value)
    return ts if 0 < ts <= now_s + 86400 else None


def _optional_number(sw: dict[str, object], key: str) -> tuple[bool, float | None]:
    """(ok, value) of an optional reading: missing or null is (True, None)."""
    value = sw.get(key)
    if value is None:
        return True, None
    f = _number(value)
    return f is not None, f


def parse_shelly(body: bytes, now_s: int, max_messages: int = 1000) -> ShellyBatch:
    """Parse and validate a Shelly batch; BodyError for an unusable body."""
    _count("max_messages", max_messages)
    messages, _ = _parse_messages(body, max_messages)
    out = ShellyBatch()
    out.total_messages = len(messages)
    devices: set[str] = set()
    seen: set[str] = set()
    for index, msg in enumerate(messages):
        if type(msg) is not dict:
            out.errors.append((index, "INVALID_MESSAGE"))
            continue
        src = msg.get("src")
        if type(src) is not str or not _valid_name(src := src.strip(_WHITESPACE)):
            out.errors.append((index, "INVALID_SRC"))
            continue
        ts = _shelly_timestamp(msg.get("timestamp"), now_s)
        if ts is None:
            out.errors.append((index, "INVALID_TIMESTAMP"))
            continue
        params = msg.get("params")
        if type(params) is not dict:
            out.errors.append((index, "INVALID_PARAMS"))
            continue
        devices.add(src)
        for channel, name in _SHELLY_CHANNELS:
            sw = params.get(name)
            if type(sw) is not dict:
                continue
            apower = sw.get("apower")
            if apower is None:
                continue
            power = _number(apower)
            ok_v, voltage = _optional_number(sw, "voltage")
            ok_c, current = _optional_number(sw, "current")
            if power is None or not ok_v or not ok_c:
                out.errors.append((index, "INVALID_READING"))
                continue
            key = f"{src}_{channel}_{ts // 60}"
            if key in seen:
                out.duplicates_in_batch += 1
                continue
            seen.add(key)
            out.device_id.append(src)
            out.channel.append(channel)
            out.power.append(power)
            out.voltage.append(voltage)
            out.current.append(current)
            out.timestamp.append(ts)
            out.idempotency_key.append(key)
    out.devices = len(devices)
    return out
