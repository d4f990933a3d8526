"""Typed stub of the compiled hot path, `tidegate._core`.

`tidegate._twin` implements the same API in pure Python; both give byte-identical results.

Flow of one ingest request (no per-message Python object on the accepted path):

    batch = parse_batch(body, receive_ns, max_payload_bytes)     # parse + validate + encode
    verdicts = decide(batch.groups())                             # Python: auth, site, rate limit
    batch.resolve(verdicts)
    ready = buffers.append(batch)                                 # BUFFER_FULL per item
    latest.record(batch)                                          # telemetry_latest
    accepted, rejected, body = batch.response_json()

Rules (all of them: docs/core-rules.md):
- A body nested 128 or more arrays/objects deep anywhere is not valid JSON; 127 is.
- Lone surrogate escapes (`"\\ud800"`) are valid JSON, but a string holding one is never a valid
  id, msg_type or timestamp, and an object key holding one matches no known key (inside
  `metrics` it is an invalid metric name).
- Duplicate keys: the last one wins, everywhere. Tenants are listed in the order their buffer was
  created; a buffer emptied by `drain` is removed.
"""

from collections.abc import Sequence
from typing import Final, Self, final

__all__ = [
    "BUFFER_FULL",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "INVALID_METRICS",
    "INVALID_MSG_TYPE",
    "INVALID_SCHEMA",
    "INVALID_TIMESTAMP",
    "MAX_BATCH_MESSAGES",
    "MAX_ID_BYTES",
    "MAX_METRICS",
    "MAX_SHELLY_MESSAGES",
    "MAX_TENANT_CHARS",
    "MSG_TYPES",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "REASONS",
    "SITE_MISMATCH",
    "TENANT_PATTERN",
    "UNAUTHORIZED",
    "Batch",
    "BodyError",
    "Latest",
    "ShellyBatch",
    "TenantBuffers",
    "parse_batch",
    "parse_shelly",
    "parse_single",
    "reason_detail",
    "valid_id",
    "valid_tenant",
]

# Per-item reason codes. Stable: clients and dashboards match on them.
INVALID_MSG_TYPE: Final = "INVALID_MSG_TYPE"
INVALID_SCHEMA: Final = "INVALID_SCHEMA"
INVALID_TIMESTAMP: Final = "INVALID_TIMESTAMP"
INVALID_METRICS: Final = "INVALID_METRICS"
PAYLOAD_TOO_LARGE: Final = "PAYLOAD_TOO_LARGE"
UNAUTHORIZED: Final = "UNAUTHORIZED"
SITE_MISMATCH: Final = "SITE_MISMATCH"
RATE_LIMITED: Final = "RATE_LIMITED"
BUFFER_FULL: Final = "BUFFER_FULL"
# All of them, in declaration order (the order of `Batch.reason_counts()`).
REASONS: Final[tuple[str, ...]]

# The limits the core enforces (docs/core-rules.md); the shell imports them, never retypes them.
MAX_BATCH_MESSAGES: Final = 100
MAX_SHELLY_MESSAGES: Final = 1000
MAX_ID_BYTES: Final = 128
MAX_TENANT_CHARS: Final = 64
# `valid_tenant` as a regular expression, for OpenAPI's `pattern`.
TENANT_PATTERN: Final = "^[a-z0-9_-]{1,64}$"
MAX_METRICS: Final = 256
DEFAULT_MAX_PAYLOAD_BYTES: Final = 8192
MSG_TYPES: Final[tuple[str, ...]]

def valid_tenant(s: str) -> bool:
    """Whether `s` is a tenant id: 1 to 64 of `a-z`, `0-9`, `_`, `-`."""

def valid_id(s: str) -> bool:
    """Whether `s` is a valid device id, site id or provision token: 1 to 128 bytes of UTF-8,
    no control character, no backslash, no lone surrogate."""

def reason_detail(reason: str) -> str:
    """The sentence explaining a validation reason code (INVALID_*) to a client. Raises
    ValueError for any other string."""

class BodyError(ValueError):
    """The whole request body is unusable; nothing in it was processed."""

    detail: str

@final
class Batch:
    """Parsed, validated and line-protocol-encoded messages of one request, held in Rust."""

    def __len__(self) -> int:
        """Number of messages in the request."""

    def groups(self) -> list[tuple[str, str, str, str, int]]:
        """Distinct `(tenant_id, device_id, site_id, provision_token, count)` of the items that
        passed validation, in order of first appearance; `count` is how many items share it."""

    def resolve(self, verdicts: Sequence[tuple[int, str | None]]) -> None:
        """Apply one `(allowed, reason)` per group of `groups()`: the group's first `allowed`
        items (request order) stay accepted, the rest are rejected with `reason`, which must be
        one of the reason codes (it may be None only when `allowed >= count`).
        Raises ValueError on a wrong verdict count, an unknown reason, or a second call."""

    def reasons(self) -> list[str | None]:
        """Per item, its reason code or None when accepted (small batches, tests)."""

    def reason_counts(self) -> list[tuple[str, int]]:
        """Rejected items per reason code, codes in a fixed order, zero counts omitted."""

    def tenant_lines(self) -> list[tuple[str, bytes, int]]:
        """Accepted items' line protocol per tenant as `(tenant, lines, line_count)`, tenants in
        order of first appearance, each line ending in a newline: what a write-ahead log or a
        JetStream publish takes."""

    def refusals(self, reason: str) -> list[tuple[str, str, int]]:
        """Per device with items rejected for `reason` (a reason code, else ValueError):
        `(tenant, device, count)`, devices in order of first appearance."""

    def response_json(self) -> tuple[int, int, bytes]:
        """`(accepted, rejected, body)`: body is the batch endpoint's JSON response
        `{"accepted":N,"rejected":M,"results":[{"index","status","reason"?,"device_id"?}]}`."""

@final
class Latest:
    """Per `(tenant, device)`, its last accepted message. A snapshot is `(msg_type, ts_ns, seq,
    metrics_json, received_ns)`: `ts_ns` the point's timestamp (the message's `ts`, or its
    receive time), `seq` 0 when the message had none, `metrics_json` a JSON object of the
    metrics as line protocol stored them (numbers as floats), `received_ns` the request's
    `receive_ns`. Thread-safe."""

    def __new__(cls) -> Self: ...
    def __len__(self) -> int:
        """Number of devices held."""

    def record(self, batch: Batch) -> None:
        """Keep each device's last accepted item of a resolved (and appended) batch."""

    def get(
        self, tenant: str, devices: Sequence[str]
    ) -> list[tuple[str, int, int, str, int] | None]:
        """The snapshot of each of `devices` of `tenant`, None for those without one."""

    def take_dirty(self) -> list[tuple[str, str, str, int, int, str, int]]:
        """`(tenant, device, *snapshot)` of every device recorded since the last call, sorted
        by key; marks them clean."""

    def mark_dirty(self, keys: Sequence[tuple[str, str]]) -> None:
        """Mark `(tenant, device)` keys dirty again (their rows were not stored); unknown keys
        are ignored."""

def parse_batch(body: bytes, receive_ns: int, max_payload_bytes: int = 8192) -> Batch:
    """Parse a `{"messages": [...]}` body of 1 to 100 messages. `receive_ns` is the timestamp
    of messages without `ts`, plus their index in the batch, so that no two of them are the same
    InfluxDB point (outside InfluxDB's range: INVALID_TIMESTAMP). Raises BodyError for a body
    that is not a JSON object with a `messages` list, or with 0 or more than 100 messages. Runs
    without the GIL."""

def parse_single(
    body: bytes,
    tenant_id: str,
    device_id: str,
    msg_type: str,
    provision_token: str,
    receive_ns: int,
    max_payload_bytes: int = 8192,
) -> Batch:
    """Parse the single-message form `{ts?, site_id, seq?, metrics?}`, identity from the URL and
    header; a one-item Batch, `receive_ns` its timestamp when it has no `ts`. Raises BodyError
    when the body is not a JSON object."""

@final
class TenantBuffers:
    """Per-tenant line-protocol buffers under one global byte cap. Thread-safe.

    Bytes count against `max_bytes` from append until `settle`: a drained body is in flight,
    and `put_back` of a failed body always fits, so a retry never drops data."""

    def __new__(
        cls, batch_size: int = 500, flush_bytes: int = 1048576, max_bytes: int = 67108864
    ) -> Self: ...
    def append(self, batch: Batch) -> list[str]:
        """Append the batch's accepted lines; an item that does not fit under `max_bytes` is
        rejected with BUFFER_FULL and nothing of it is stored. Returns the tenants whose buffer
        now holds at least `batch_size` lines or `flush_bytes` bytes. A batch appends once."""

    def append_lines(self, tenant: str, lines: bytes, line_count: int) -> bool:
        """Append already-encoded newline-terminated lines for one tenant, all or nothing;
        False when they do not fit under `max_bytes`."""

    def ready(self) -> list[str]:
        """Tenants at or over a flush threshold, or with a put-back body waiting."""

    def tenants(self) -> list[str]:
        """Tenants with anything buffered or put back."""

    def drain(self, tenant: str, max_lines: int = 5000) -> tuple[bytes, int] | None:
        """Take the tenant's oldest data as one write body: a put-back body as it was, else up to
        `max_lines` buffered lines. The bytes stay counted until `settle` or `put_back`."""

    def settle(self, nbytes: int) -> None:
        """A drained body of `nbytes` is finished with (written, or dead-lettered)."""

    def put_back(self, tenant: str, body: bytes, line_count: int) -> None:
        """Return a drained body whose write failed; it is the tenant's next `drain`."""

    def depth(self) -> dict[str, tuple[int, int]]:
        """Per tenant, `(lines, bytes)` buffered or put back (not in flight)."""

    @property
    def total_bytes(self) -> int:
        """All bytes counted against the cap: buffered, put back and in flight."""

    @property
    def max_bytes(self) -> int: ...

@final
class ShellyBatch:
    """Readings extracted from a Shelly `{"messages":[{src,timestamp,params}]}` body, columnar,
    deduplicated on the idempotency key (first occurrence kept). Each column attribute builds a
    new list per access: read them all at once with `columns()`."""

    total_messages: int
    devices: int
    duplicates_in_batch: int
    errors: list[tuple[int, str]]
    device_id: list[str]
    channel: list[int]
    power: list[float]
    voltage: list[float | None]
    current: list[float | None]
    timestamp: list[int]
    idempotency_key: list[str]

    def __len__(self) -> int:
        """Number of readings (rows)."""

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
        """`(device_id, channel, power, voltage, current, timestamp, idempotency_key)`, each
        column built once."""

    def encode(self, rows: Sequence[int]) -> tuple[bytes, int]:
        """Line protocol (measurement `power`) of the readings at `rows`, and its line count.
        Every row is encoded once, at parse time; this joins their lines. IndexError for a row
        outside `0..len(self)`."""

    def encoded_size(self, rows: Sequence[int]) -> int:
        """The length of `encode(rows)[0]`, without building it."""

def parse_shelly(body: bytes, now_s: int, max_messages: int = 1000) -> ShellyBatch:
    """Parse and validate a Shelly batch. Raises BodyError (HTTP 422) for a body that is not a
    JSON object with a non-empty `messages` list of at most `max_messages`. Runs without the GIL."""
