"""The twin's line-protocol reader: one line's text → its canonical form, or why it is refused.

An independent reading of the rules in docs/core-rules.md ("Line protocol"), with regular
expressions where the core walks bytes; `tidegate._twin.parse_lines` builds the Batch from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Final

MAX_LP_TAGS: Final = 64
MAX_LP_FIELDS: Final = 256
MAX_LP_LINES: Final = 100_000

_PRECISIONS: Final = {
    "": 1,
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "u": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_RESERVED: Final = frozenset({"time", "_field", "_measurement"})
_MIN_NS: Final = -9223372036854775806
_MAX_NS: Final = 9223372036854775806
_I64: Final = 2**63
_U64: Final = 2**64

# A name runs to the first delimiter no backslash escapes; `\\.` takes any character along.
_MEASUREMENT_RE: Final = re.compile(r"(?:[^\\, ]|\\.)*")
_KEY_RE: Final = re.compile(r"(?:[^\\,= ]|\\.)*")
_STRING_RE: Final = re.compile(r'"((?:[^\\"]|\\.)*)"')
_PLAIN_RE: Final = re.compile(r"[^, ]*")
_SPACES_RE: Final = re.compile(r" *")
_INT_RE: Final = re.compile(r"-?[0-9]+")
_UINT_RE: Final = re.compile(r"[0-9]+")
_FLOAT_RE: Final = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE: Final = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE: Final = frozenset({"f", "F", "false", "False", "FALSE"})
_NAME_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": "\\,", " ": "\\ "})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})

# (reason, detail) of each refusal but the line length's, which names the limit.
MEASUREMENT: Final = ("INVALID_SCHEMA", "invalid measurement")
TAG_SET: Final = ("INVALID_SCHEMA", "invalid tag set")
TOO_MANY_TAGS: Final = ("INVALID_SCHEMA", f"more than {MAX_LP_TAGS} tags")
MISSING_FIELDS: Final = ("INVALID_SCHEMA", "missing fields")
FIELD_SET: Final = ("INVALID_METRICS", "invalid field set")
FIELD_VALUE: Final = ("INVALID_METRICS", "invalid field value")
TOO_MANY_FIELDS: Final = ("INVALID_METRICS", f"more than {MAX_LP_FIELDS} fields")
TIMESTAMP: Final = ("INVALID_TIMESTAMP", "invalid timestamp")
NO_DEVICE: Final = ("INVALID_SCHEMA", "a tenant key writes lines with a device_id tag")
UNKNOWN_DEVICE: Final = ("UNAUTHORIZED", "device_id is not an active device of the tenant")


class Refused(Exception):
    """A line breaks a rule: `(reason, detail)`."""

    def __init__(self, why: tuple[str, str]) -> None:
        super().__init__(why)
        self.why = why


def precision_ns(name: str) -> int | None:
    """Nanoseconds per unit of a `precision`, or None for an unknown one."""
    return _PRECISIONS.get(name)


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """`(1-based number, content)` of the lines that are neither blank nor comments."""
    out = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if line and line[0] != "#":
            out.append((number, line))
    return out


def line_count(body: bytes) -> int:
    """Lines of a body as the line limit counts them."""
    return body.count(b"\n") + (not body.endswith(b"\n"))


class Line:
    """One line read: names unescaped, values typed, timestamp in the body's precision."""

    def __init__(self) -> None:
        self.measurement = ""
        self.tags: dict[str, str] = {}
        self.fields: list[tuple[str, object]] = []
        self.timestamp: int | None = None

    def canonical(self, device: str, site: str, ts_ns: int) -> bytes:
        """The line as the core writes it, with the writer's identity tags."""
        tags = {k: v for k, v in self.tags.items() if k not in ("device_id", "site_id")}
        tags["device_id"], tags["site_id"] = device, site
        tag_text = "".join(
            f",{k.translate(_NAME_ESCAPES)}={tags[k].translate(_NAME_ESCAPES)}"
            for k in sorted(tags)
        )
        field_text = ",".join(
            f"{k.translate(_NAME_ESCAPES)}={_value_text(v)}" for k, v in self.fields
        )
        head = self.measurement.translate(_MEASUREMENT_ESCAPES)
        return f"{head}{tag_text} {field_text} {ts_ns}\n".encode()


def _value_text(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.translate(_STRING_ESCAPES) + '"'
    assert isinstance(v, tuple)
    n, suffix = v
    return f"{n}{suffix}"


def _unescape(raw: str, escapable: str, valid: Callable[[str], bool]) -> str | None:
    out = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 1 == len(raw) or raw[i + 1] not in escapable:
                return None
            c = raw[i + 1]
            i += 1
        out.append(c)
        i += 1
    name = "".join(out)
    return name if valid(name) else None


def read_line(line: str, valid: Callable[[str], bool]) -> Line:
    """Reads one line's content; raises Refused for the first rule it breaks."""
    p = Line()
    m = _MEASUREMENT_RE.match(line)
    assert m is not None
    at = m.end()
    if at < len(line) and line[at] not in ", ":
        raise Refused(MEASUREMENT)
    measurement = _unescape(m[0], ", ", valid)
    if measurement is None:
        raise Refused(MEASUREMENT)
    p.measurement = measurement
    if line.startswith(",", at):
        at = _read_tags(line, at + 1, p, valid)
    at = _SPACES_RE.match(line, at).end()  # type: ignore[union-attr]
    if at == len(line):
        raise Refused(MISSING_FIELDS)
    at = _read_fields(line, at, p, valid)
    if at < len(line):
        rest = line[_SPACES_RE.match(line, at).end() :]  # type: ignore[union-attr]
        if not _INT_RE.fullmatch(rest) or not -_I64 <= int(rest) < _I64:
            raise Refused(TIMESTAMP)
        p.timestamp = int(rest)
    return p


def _read_tags(line: str, at: int, p: Line, valid: Callable[[str], bool]) -> int:
    while True:
        k = _KEY_RE.match(line, at)
        assert k is not None
        if not line.startswith("=", k.end()):
            raise Refused(TAG_SET)
        key = _unescape(k[0], ",= ", valid)
        v = _KEY_RE.match(line, k.end() + 1)
        assert v is not None
        at = v.end()
        if key is None or (at < len(line) and line[at] not in ", "):
            raise Refused(TAG_SET)
        value = _unescape(v[0], ",= ", valid)
        if value is None or key in _RESERVED or key in p.tags:
            raise Refused(TAG_SET)
        if len(p.tags) == MAX_LP_TAGS:
            raise Refused(TOO_MANY_TAGS)
        p.tags[key] = value
        if not line.startswith(",", at):
            return at
        at += 1


def _read_fields(line: str, at: int, p: Line, valid: Callable[[str], bool]) -> int:
    names: set[str] = set()
    while True:
        k = _KEY_RE.match(line, at)
        assert k is not None
        if not line.startswith("=", k.end()):
            raise Refused(FIELD_SET)
        key = _unescape(k[0], ",= ", valid)
        if (
            key is None
            or key in _RESERVED
            or key in ("device_id", "site_id")
            or key in p.tags
            or key in names
        ):
            raise Refused(FIELD_SET)
        value: object
        s = _STRING_RE.match(line, k.end() + 1)
        if line.startswith('"', k.end() + 1):
            if s is None or (s.end() < len(line) and line[s.end()] not in ", "):
                raise Refused(FIELD_SET)
            value = re.sub(r'\\(["\\])', r"\1", s[1])
            at = s.end()
        else:
            plain = _PLAIN_RE.match(line, k.end() + 1)
            assert plain is not None
            parsed = _plain_value(plain[0])
            if parsed is None:
                raise Refused(FIELD_VALUE)
            value = parsed
            at = plain.end()
        if len(p.fields) == MAX_LP_FIELDS:
            raise Refused(TOO_MANY_FIELDS)
        p.fields.append((key, value))
        names.add(key)
        if not line.startswith(",", at):
            return at
        at += 1


def _plain_value(text: str) -> object | None:
    """A boolean, `(n, "i")`, `(n, "u")` or a finite float; None when it is none of them."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text.endswith("i"):
        if _INT_RE.fullmatch(text[:-1]) and -_I64 <= int(text[:-1]) < _I64:
            return (int(text[:-1]), "i")
        return None
    if text.endswith("u"):
        if _UINT_RE.fullmatch(text[:-1]) and int(text[:-1]) < _U64:
            return (int(text[:-1]), "u")
        return None
    if not _FLOAT_RE.fullmatch(text):
        return None
    x = float(text)
    return x if math.isfinite(x) else None


def timestamp_ns(own: int | None, ns_per_unit: int, untimed_ns: int) -> int:
    """The line's timestamp in ns (its own, else `untimed_ns`), within InfluxDB's range."""
    ns = untimed_ns if own is None else own * ns_per_unit
    if not _MIN_NS <= ns <= _MAX_NS:
        raise Refused(TIMESTAMP)
    return ns
