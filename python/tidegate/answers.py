"""Every refusal tidegate answers, in one table: its HTTP status, its Retry-After rule, its detail.

A key is either one of the core's per-item reason codes (`REASONS`) or the name of one of the
shell's whole-request answers (a body too large, a draining gateway, a connection limit, a
database down). The validation codes' details are the core's sentences (`reason_detail`); the
shell writes the rest, whose details carry its settings: a template whose fields are named after
the `Config` setting (or the request's value) that fills them.

The HTTP routes, the connection limits, the tenant API, Shelly and the OpenAPI document read it;
so does the NATS worker, for the detail of a rejected record. Nothing here knows HTTP servers.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import orjson

from tidegate._core import (
    BUFFER_FULL,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    REASONS,
    SITE_MISMATCH,
    UNAUTHORIZED,
    UNAVAILABLE,
    reason_detail,
)


class Retry(Enum):
    """When the same request may succeed: what its Retry-After header says."""

    NONE = "no Retry-After: the same request fails again"
    FIXED = "Retry-After: 1 s"
    RATE_LIMIT = "Retry-After: until the slowest refused device's next token"
    FLUSH = "Retry-After: the sink's flush interval, INFLUX_FLUSH_INTERVAL_MS"


# A pool reconnects, a connection or request slot frees, a publish is retried, within a second.
FIXED_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Answer:
    """How one refusal is answered."""

    status: int
    retry: Retry
    detail: str
    """A `str.format` template; see `fields`."""
    reason: str | None = None
    """The reason code the body names (`{"detail", "reason"}`), if any."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers of their own (the tenant API's `WWW-Authenticate`)."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The names `detail` is filled with: settings by their `Config` name, else values of
        the request."""
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.detail) if f)

    def content(self, **fields: object) -> dict[str, object]:
        """The JSON body: the detail filled with `fields` (those it does not name are
        ignored), and the reason code."""
        return self.stating(self.detail.format(**fields))

    def stating(self, detail: str) -> dict[str, object]:
        """The JSON body with a detail of its own (an item's, as a field type conflict's)."""
        out: dict[str, object] = {"detail": detail}
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def body(self, **fields: object) -> bytes:
        """`content` encoded."""
        return orjson.dumps(self.content(**fields))

    def retry_after(self, flush_s: float | None = None, rate_limit_s: float = 0.0) -> str | None:
        """The Retry-After value (see `retry_after`); `flush_s` is needed by Retry.FLUSH only."""
        return retry_after((self.retry,), flush_s, rate_limit_s)


# The shell's whole-request answers. The connection limits' keys are also their metric labels
# (`tidegate_connection_limit_total{limit}`).
BODY_TOO_LARGE = "body_too_large"
GZIP_TOO_LARGE = "gzip_too_large"
GZIP_INVALID = "gzip_invalid"
CONTENT_LENGTH_INVALID = "content_length_invalid"
ENCODING_UNSUPPORTED = "encoding_unsupported"
BODY_INVALID = "body_invalid"
SHELLY_BODY_INVALID = "shelly_body_invalid"
NATS_UNAVAILABLE = "nats_unavailable"
WAL_FULL = "wal_full"
WAL_UNAVAILABLE = "wal_unavailable"
DRAINING = "draining"
DATABASE_UNAVAILABLE = "database_unavailable"
API_UNAUTHORIZED = "api_unauthorized"
SHELLY_UNAUTHORIZED = "shelly_unauthorized"
SHELLY_NOT_CONFIGURED = "shelly_not_configured"
INTERNAL_ERROR = "internal_error"
HEADER_BYTES = "max_header_bytes"
HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
MAX_CONNECTIONS = "max_connections"
MAX_REQUESTS = "max_requests"
LIMITS = (HEADER_BYTES, HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS, MAX_REQUESTS)

# The reason codes whose answer the shell decides (their details carry its settings); the
# others are the core's validation codes: 400 with the core's sentence.
_SHELL_DECIDED = {
    PAYLOAD_TOO_LARGE: Answer(
        413, Retry.NONE, "message exceeds {max_payload_bytes} bytes", PAYLOAD_TOO_LARGE
    ),
    UNAUTHORIZED: Answer(
        401, Retry.NONE, "a valid {credential} is required for this device", UNAUTHORIZED
    ),
    SITE_MISMATCH: Answer(
        403, Retry.NONE, "site_id differs from the device's registered site", SITE_MISMATCH
    ),
    RATE_LIMITED: Answer(
        429,
        Retry.RATE_LIMIT,
        "rate limit exceeded: device {device!r} may send {rps:g} messages/s with bursts of {burst}",
        RATE_LIMITED,
    ),
    BUFFER_FULL: Answer(503, Retry.FLUSH, "ingest buffers are full; retry later", BUFFER_FULL),
    UNAVAILABLE: Answer(
        503, Retry.FIXED, "the device registry is unavailable; retry later", UNAVAILABLE
    ),
}


def _reason_answer(code: str) -> Answer:
    if code in _SHELL_DECIDED:
        return _SHELL_DECIDED[code]
    # The core's sentence is literal text, not a template.
    literal = reason_detail(code).replace("{", "{{").replace("}", "}}")
    return Answer(400, Retry.NONE, literal, code)


ANSWERS: Mapping[str, Answer] = {
    **{code: _reason_answer(code) for code in REASONS},
    BODY_TOO_LARGE: Answer(413, Retry.NONE, "body exceeds the limit of {cap} bytes"),
    GZIP_TOO_LARGE: Answer(413, Retry.NONE, "decompressed body exceeds the limit of {cap} bytes"),
    GZIP_INVALID: Answer(400, Retry.NONE, "body is not valid gzip"),
    CONTENT_LENGTH_INVALID: Answer(400, Retry.NONE, "Content-Length is not a number"),
    ENCODING_UNSUPPORTED: Answer(415, Retry.NONE, "Content-Encoding must be gzip or identity"),
    # The core's BodyError; Shelly's seed contract answers it with 422.
    BODY_INVALID: Answer(400, Retry.NONE, "{error}"),
    SHELLY_BODY_INVALID: Answer(422, Retry.NONE, "{error}"),
    # NATS mode: JetStream did not acknowledge the publish (NATS down, no PubAck, stream full).
    # The edge retried within the request, so the client's retry is worth the same pause.
    NATS_UNAVAILABLE: Answer(503, Retry.FIXED, "ingest is unavailable; retry later", UNAVAILABLE),
    # The write-ahead log at its cap (space frees as the sink delivers), or unable to write.
    WAL_FULL: Answer(503, Retry.FLUSH, "{error}", BUFFER_FULL),
    WAL_UNAVAILABLE: Answer(503, Retry.FLUSH, "{error}"),
    DRAINING: Answer(503, Retry.FLUSH, "shutting down"),
    DATABASE_UNAVAILABLE: Answer(503, Retry.FIXED, "the database is unavailable; retry later"),
    API_UNAUTHORIZED: Answer(
        401,
        Retry.NONE,
        "a valid tenant API key is required: Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    ),
    SHELLY_UNAUTHORIZED: Answer(401, Retry.NONE, "a valid X-API-Key header is required"),
    SHELLY_NOT_CONFIGURED: Answer(500, Retry.NONE, "Server configuration error"),
    INTERNAL_ERROR: Answer(500, Retry.NONE, "internal server error"),
    HEADER_BYTES: Answer(
        431, Retry.NONE, "request head exceeds the limit of {max_header_bytes} bytes"
    ),
    HEADER_TIMEOUT: Answer(
        408, Retry.NONE, "request head not received within {header_timeout_s:g} s"
    ),
    BODY_TIMEOUT: Answer(408, Retry.NONE, "request body not received within {body_timeout_s:g} s"),
    MAX_CONNECTIONS: Answer(
        503, Retry.FIXED, "too many open connections (limit {max_connections}); retry later"
    ),
    MAX_REQUESTS: Answer(
        503, Retry.FIXED, "too many requests in progress (limit {max_requests}); retry later"
    ),
}

# The core's validation codes (400): an item's detail says which of their rules it breaks.
VALIDATION = frozenset(code for code in REASONS if code not in _SHELL_DECIDED)

# The reason codes that say "not now" rather than "never": the same message may be accepted
# later (the batch route answers 429/503 when nothing else was refused; clients re-send them).
RETRYABLE = frozenset(code for code in REASONS if ANSWERS[code].retry is not Retry.NONE)

# What a device presents on each entrance, named in UNAUTHORIZED's detail.
TOKEN_HEADER_CREDENTIAL = "X-Provision-Token header"
TOKEN_FIELD_CREDENTIAL = "provision_token"


class Refusal(Exception):
    """A whole request refused with the table's answer `key`: raised below a route, answered
    by it."""

    def __init__(self, key: str, **fields: object) -> None:
        self.key = key
        self.detail = detail(key, **fields)
        super().__init__(self.detail)


def retry_after(
    rules: Iterable[Retry], flush_s: float | None = None, rate_limit_s: float = 0.0
) -> str | None:
    """The Retry-After value of an answer under `rules`: the longest of their waits in whole
    seconds, rounded up so that a client never comes back too early, at least 1; None when no
    rule retries. `flush_s` (the sink's flush interval) is needed for Retry.FLUSH,
    `rate_limit_s` (the batch's `retry_after`) is the wait of Retry.RATE_LIMIT."""
    waits = [w for rule in rules if (w := _wait(rule, flush_s, rate_limit_s)) is not None]
    return _whole_seconds(max(waits)) if waits else None


def batch_answer(
    accepted: int, counts: Sequence[tuple[str, int]], flush_s: float, rate_limit_s: float
) -> tuple[int, str | None]:
    """The batch route's `(status, Retry-After)` for its `reason_counts()`. Status: 202 when
    anything was accepted; otherwise, when every rejection is worth retrying as is, the most
    severe of their statuses (503 before 429) so clients back off instead of dropping; else
    400. Retry-After: the longest wait of the retryable reasons, whatever the status.
    One loop, no allocation: 429s come at the rate clients are refused."""
    status = 0
    longest = -1.0
    for code, _ in counts:
        answer = ANSWERS[code]
        wait = _wait(answer.retry, flush_s, rate_limit_s)
        if wait is None:
            status = 400
            continue
        longest = max(longest, wait)
        if status != 400:
            status = max(status, answer.status)
    return 202 if accepted else status, None if longest < 0 else _whole_seconds(longest)


def _wait(rule: Retry, flush_s: float | None, rate_limit_s: float) -> float | None:
    if rule is Retry.NONE:
        return None
    if rule is Retry.FIXED:
        return FIXED_RETRY_S
    if rule is Retry.RATE_LIMIT:
        return rate_limit_s
    if flush_s is None:
        raise ValueError("Retry.FLUSH needs the flush interval")
    return flush_s


def _whole_seconds(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


def rate_limited_content(
    device: str, rps: float, burst: int, retry_after_s: float
) -> dict[str, object]:
    """The single route's RATE_LIMITED body: the detail, then the limit that refused, named
    (clients cannot tell which limit tripped otherwise), and the exact wait."""
    out = ANSWERS[RATE_LIMITED].content(device=device, rps=rps, burst=burst)
    out["limit"] = {"name": "device_messages_per_second", "rps": rps, "burst": burst}
    out["retry_after_s"] = round(retry_after_s, 3)
    return out


def detail(key: str, **fields: object) -> str:
    """The table's detail of `key`, filled with `fields` (those it does not name are
    ignored)."""
    return ANSWERS[key].detail.format(**fields)
