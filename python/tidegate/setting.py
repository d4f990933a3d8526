"""How a setting is declared, once: `setting()` puts its environment variable, parser and doc on
the dataclass field that holds its default. `tidegate.config` reads, checks and documents every
setting from these declarations; the parsers are here so both settings and CLI flags use them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_DECLARED = "tidegate.setting"
_SECTION = "tidegate.section"


@dataclass(frozen=True, slots=True)
class Declared:
    """One setting: where it is read from, how, and what it means."""

    var: str
    parse: Callable[[str], Any]
    doc: str
    # Its value may carry a credential: never echoed in an error message.
    secret: bool
    # A default that follows other settings (by variable name, already read).
    derive: Callable[[Mapping[str, Any]], Any] | None
    attr: str
    default: Any


def setting(
    var: str,
    default: T,
    parse: Callable[[str], T],
    doc: str,
    *,
    secret: bool = False,
    derive: Callable[[Mapping[str, Any]], T] | None = None,
) -> T:
    """A dataclass field read from `var` (unset or empty: `default`, or `derive(values read)`)."""
    meta = {_DECLARED: (var, parse, doc, secret, derive)}
    return field(default=default, metadata=meta)


def section(cls: Callable[[], T]) -> T:
    """A dataclass field holding another dataclass of settings, read with the outer one."""
    return field(default_factory=cls, metadata={_SECTION: cls})


def declared(cls: type, *, sections: bool = True) -> Iterator[Declared]:
    """Every setting of dataclass `cls` (and of its sections), in declaration order."""
    for f in dataclasses.fields(cls):
        if _SECTION in f.metadata:
            if sections:
                yield from declared(f.metadata[_SECTION])
        elif _DECLARED in f.metadata:
            var, parse, doc, secret, derive = f.metadata[_DECLARED]
            yield Declared(var, parse, doc, secret, derive, f.name, f.default)


def build(cls: Callable[..., T], values: Mapping[str, Any]) -> T:
    """An instance of dataclass `cls` (and its sections) from values keyed by variable name."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _SECTION in f.metadata:
            kwargs[f.name] = build(f.metadata[_SECTION], values)
        elif _DECLARED in f.metadata:
            kwargs[f.name] = values[f.metadata[_DECLARED][0]]
    return cls(**kwargs)


def shown(default: object) -> str:
    """A default as one would write the variable."""
    if default is None or default == ():
        return "(unset)"
    if isinstance(default, bool):
        return str(int(default))
    return str(default)


class Refusal(ValueError):
    """A parser's complaint worded to follow the variable's name ("X must be one of ...")."""


def _converted(raw: str, convert: Callable[[str], T], what: str) -> T:
    """`convert(raw)`, its ValueError worded as "'raw' is not `what`"."""
    try:
        return convert(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not {what}") from None


def positive_int(raw: str) -> int:
    """Parse a whole number > 0 (also used by the CLI's arguments)."""
    value = _converted(raw, int, "an integer")
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive integer")
    return value


def positive_float(raw: str) -> float:
    """Parse a finite number > 0 (also used by the CLI's arguments)."""
    value = _converted(raw, float, "a number")
    if not 0 < value < float("inf"):
        raise ValueError(f"{raw!r} must be a positive number")
    return value


def non_negative_float(raw: str) -> float:
    """Parse a finite number >= 0."""
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def choice(choices: tuple[str, ...], *, named: bool = False) -> Callable[[str], str]:
    """A parser accepting exactly one of `choices`; `named`: its refusal follows the variable's
    name ("X must be one of a, b, not 'c'")."""
    allowed = ", ".join(choices)

    def parse(raw: str) -> str:
        if raw in choices:
            return raw
        if named:
            raise Refusal(f"must be one of {allowed}, not {raw!r}")
        raise ValueError(f"must be one of {allowed}")

    return parse


def parse_port(raw: str) -> int:
    """Parse a TCP port 0..65535 (also used by the CLI's --port)."""
    value = _converted(raw, int, "an integer")
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0..65535")
    return value


def parse_bool(raw: str) -> bool:
    """Parse 1/0, true/false, yes/no, on/off (any case)."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def text(raw: str) -> str:
    """Any string."""
    return raw


def prefixed(*prefixes: str, strip: str = "") -> Callable[[str], str]:
    """A parser of URLs that must start with one of `prefixes` (trailing `strip` removed)."""

    def parse(raw: str) -> str:
        if not raw.startswith(prefixes):
            raise ValueError(f"must start with {' or '.join(prefixes)}")
        return raw.rstrip(strip) if strip else raw

    return parse


def readable_file(raw: str) -> Path:
    """Parse the path of a file this process can read (a certificate, a key)."""
    path = Path(raw)
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    return path


def parse_log_level(raw: str) -> str:
    """Parse a log level name, case-insensitive (also used by the CLI's --log-level)."""
    lowered = raw.lower()
    if lowered not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return lowered
