"""Typed stub of the compiled hot path, `tidegate._core`.

`tidegate._twin` implements the same API in pure Python; both give byte-identical results.

Flow of one ingest request (no per-message Python object on the accepted path):

    batch = parse_batch(body, receive_ns, max_payload_bytes)     # parse + validate + encode
    keys = admission.admit(batch, now)                            # auth, site, rate limit
    if keys:                                                      # uncached devices only:
        admission.install(keys, await registry_rows(keys), now)   #   ONE registry query
        admission.admit(batch, now)                               #   (skip install if it failed)
    learn(await registry_claim(field_types.unknown(batch)))      # new fields: shared claim
    field_types.admit(batch)                                      # field type conflicts
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
from os import PathLike
from typing import Final, Self, final

__all__ = [
    "BUFFER_FULL",
    "DEFAULT_MAX_FIELDS_PER_TENANT",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "INVALID_METRICS",
    "INVALID_MSG_TYPE",
    "INVALID_SCHEMA",
    "INVALID_TIMESTAMP",
    "MAX_BATCH_MESSAGES",
    "MAX_ID_BYTES",
    "MAX_LP_FIELDS",
    "MAX_LP_LINES",
    "MAX_LP_TAGS",
    "MAX_METRICS",
    "MAX_SHELLY_MESSAGES",
    "MAX_TENANT_CHARS",
    "MSG_TYPES",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "REASONS",
    "SHELLY_REASONS",
    "SITE_MISMATCH",
    "TENANT_PATTERN",
    "UNAUTHORIZED",
    "UNAVAILABLE",
    "Admission",
    "Batch",
    "BodyError",
    "FieldTypes",
    "FileAppender",
    "Latest",
    "PanicException",
    "ShellyBatch",
    "TenantBuffers",
    "Wal",
    "WalFull",
    "WalUnavailable",
    "append_file",
    "line_devices",
    "parse_batch",
    "parse_lines",
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
UNAVAILABLE: Final = "UNAVAILABLE"
# All of them, in declaration order (the order of `Batch.reason_counts()`).
REASONS: Final[tuple[str, ...]]
# Shelly's per-message error codes (`ShellyBatch.errors`): INVALID_MESSAGE, INVALID_SRC,
# INVALID_TIMESTAMP, INVALID_PARAMS, INVALID_READING.
SHELLY_REASONS: Final[tuple[str, ...]]

# The limits the core enforces (docs/core-rules.md); the shell imports them, never retypes them.
MAX_BATCH_MESSAGES: Final = 100
MAX_SHELLY_MESSAGES: Final = 1000
MAX_ID_BYTES: Final = 128
MAX_TENANT_CHARS: Final = 64
# `valid_tenant` as a regular expression, for OpenAPI's `pattern`.
TENANT_PATTERN: Final = "^[a-z0-9_-]{1,64}$"
MAX_METRICS: Final = 256
# Line protocol (`parse_lines`): tags and fields a line may send, lines a body may hold.
MAX_LP_TAGS: Final = 64
MAX_LP_FIELDS: Final = 256
MAX_LP_LINES: Final = 100000
DEFAULT_MAX_PAYLOAD_BYTES: Final = 8192
# Default of `FieldTypes(max_per_tenant)`.
DEFAULT_MAX_FIELDS_PER_TENANT: Final = 10000
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

class PanicException(BaseException):
    """A bug in the compiled core (a Rust panic), raised by the call that hit it. A
    BaseException: `except Exception` does not catch it. The twin never raises it."""

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

    def withdraw(self, tenants: Sequence[str], reason: str, detail: str) -> int:
        """For lines handed elsewhere instead of appended (NATS mode publishes `tenant_lines()`):
        every accepted item of one of `tenants` becomes rejected with `reason` (UNAVAILABLE when
        their publish failed) and `detail`; returns how many. Once per batch, and the batch
        cannot be appended afterwards. Raises ValueError for an unknown reason or a second
        call."""

    def line_numbers(self) -> list[int]:
        """Per item, its 1-based line number in a line-protocol body (empty for JSON bodies)."""

    def details(self) -> list[tuple[int, str]]:
        """`(index, detail)` of the rejected items, in request order: every item the core
        rejects has one (the first rule of its reason it breaks, admission's verdict, a full
        buffer, a field type conflict, `withdraw`'s), client text quoted at most 64 characters
        long with control characters escaped, never a token. Items rejected by `resolve`
        (verdicts given from outside) have none."""

    def rejections(self) -> list[tuple[str, str, str | None, str]]:
        """`(reason, tenant, device, detail)` of each rejected item, in request order, for logs;
        `tenant` is "" and `device` None when the message named no valid one, `detail` "" for an
        item without one."""

    def tenant_counts(self) -> list[tuple[str, int, int]]:
        """Per tenant of the valid items, in order of first appearance: `(tenant, accepted,
        refused)`; refused counts the items rejected after validation (an item that failed it
        has no tenant)."""

    def refusals(self, reason: str) -> list[tuple[str, str, int]]:
        """Per device with items rejected for `reason` (a reason code, else ValueError):
        `(tenant, device, count)`, devices in order of first appearance."""

    def response_json(self) -> tuple[int, int, bytes]:
        """`(accepted, rejected, body)`: body is the batch endpoint's JSON response
        `{"accepted":N,"rejected":M,"results":[{"index","status","reason"?,"detail"?,
        "device_id"?}]}`; `detail` only for the items of `details()`."""

    @property
    def retry_after(self) -> float:
        """After `Admission.admit` resolved the batch: seconds until the next token of its
        slowest RATE_LIMITED device; 0.0 when none was rate limited."""

@final
class Admission:
    """The auth cache, token buckets and lookup budgets of one gateway process.

    Found devices (active or revoked) are cached for `ttl_s` in a table of at most
    `max_entries`; unknown ones for `negative_ttl_s` in their OWN table of at most
    `max_negative_entries`, so they can never evict found ones. A full table drops its expired
    entries, else its oldest tenth. Each device's token bucket (`rps`/`burst` of its record, else
    the defaults; one token per message) lives in its entry and survives refreshes. Each tenant
    may look up at most `lookups_per_s` uncached devices per second (burst the same); beyond that
    a device is UNAUTHORIZED without a lookup, and a lookup that finds the device is given back.
    `now` is monotonic seconds, passed in."""

    def __new__(
        cls,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100000,
        max_negative_entries: int = 10000,
        default_rps: float = 10.0,
        default_burst: int = 100,
        lookups_per_s: int = 100,
    ) -> Self:
        """Raises ValueError naming a bad setting."""

    def admit(self, batch: Batch, now: float) -> list[tuple[str, str]]:
        """Decide every group of the batch from the cache and resolve it, returning []: wrong
        token, revoked, unknown or other tenant's device UNAUTHORIZED, wrong site SITE_MISMATCH,
        beyond the bucket RATE_LIMITED. Or, on the batch's first call only, when devices are not
        cached and their tenant's budget allows, return their `(tenant, device)` keys (the other
        groups are decided already) and resolve nothing: install what the registry has for them,
        then admit again. The second call decides the groups left and never asks again: a key
        asked for and still not installed (the lookup failed) is UNAVAILABLE.
        Raises ValueError on a batch already resolved or appended. Runs without the GIL."""

    def install(
        self,
        keys: Sequence[tuple[str, str]],
        records: Sequence[tuple[str, str, str, bytes, float | None, int | None, str]],
        now: float,
    ) -> None:
        """Cache registry rows `(tenant, device, site, token_sha256, rps, burst, status)` (a
        status other than "active" is UNAUTHORIZED) and every key without a row as unknown.
        Raises ValueError (nothing installed) for a hash that is not 32 bytes or a non-positive
        rps."""

    def invalidate(self, tenant: str, device: str) -> None:
        """Forget one device (revoked, rotated): its next request looks it up."""

    def invalidate_all(self) -> None:
        """Forget every device."""

    def set_share(self, share: float) -> None:
        """Enforce `share` (0 < share <= 1) of every device's rps and of its burst (at least
        one message) from now on: each of N processes sharing a device's traffic takes 1/N.
        Raises ValueError outside (0, 1]."""

    def limits(self, tenant: str, device: str) -> tuple[float, int]:
        """`(rps, burst)` that applies to a device: its cached record's, else the defaults."""

    def stats(self) -> dict[str, int]:
        """`hits`, `misses` (keys asked for), `budget_refusals`, `unavailable` (groups),
        `entries`, `negative_entries`, `buckets`, `budgets` (tenants with a lookup budget)."""

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

@final
class FileAppender:
    """`append_file` on a thread of its own, which never takes the GIL (an executor thread
    takes it from the event loop at every step): `submit` queues a body with whoever waits for
    it, the descriptor `wakeup_fd()` turns readable when appends are done, and `completed()`
    hands them back (as `Wal`'s). Compiled core only."""

    def __new__(cls) -> Self:
        """Start the thread. OSError when it (or its wakeup socket) cannot be had."""

    def wakeup_fd(self) -> int:
        """The descriptor to watch (`loop.add_reader`): readable while `completed()` has
        results. ValueError once closed."""

    def submit(self, waiter: object, path: str | PathLike[str], data: bytes) -> None:
        """Queue `append_file(path, data)`; `waiter` comes back with its outcome. Appends run in
        the order submitted. ValueError once closed."""

    def completed(self) -> list[tuple[object, OSError | None]]:
        """Each waiter whose append ran since the last call, in submission order, with None or
        the OSError it raised. Clears the descriptor's readiness first: an append finished
        after this call makes it readable again."""

    def close(self) -> None:
        """Stop the thread once the append in hand is done; appends not started are dropped
        with their waiters. Closing twice is harmless."""

def append_file(path: str | PathLike[str], data: bytes) -> None:
    """Append `data` under an exclusive `flock` to the line-protocol file at `path` now,
    creating it and its directories. replay renames a file away and then takes its lock once
    before reading it, so an append lands either in what replay reads or in a new file at
    `path`, never after the read; a failed write (disk full) is cut off again, so a retry
    cannot glue a broken line onto the next body. OSError (the errno's subclass) when it
    cannot. Runs without the GIL. Compiled core only."""

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
    """Per-tenant line-protocol buffers under a global byte cap `max_bytes` and a per-tenant
    cap `tenant_max_bytes` (default: `max_bytes`, no isolation). Thread-safe.

    Bytes count against both caps from append until `settle`: a drained body is in flight
    (one per tenant), and `put_back` of a failed body always fits, so a retry never drops data.

    Delivery marks: a nonzero `mark` tags the lines of an append (marks are given in
    increasing order; the same mark may tag several appends while it is still open, e.g. one
    per tenant). A mark is delivered when every line appended under it has been settled, in
    every tenant; a mark under which nothing was stored (all BUFFER_FULL, or `append_lines`
    returned False) is delivered at once."""

    def __new__(
        cls,
        batch_size: int = 500,
        flush_bytes: int = 1048576,
        max_bytes: int = 67108864,
        tenant_max_bytes: int | None = None,
    ) -> Self: ...
    def append(self, batch: Batch, mark: int = 0) -> list[str]:
        """Append the batch's accepted lines under `mark` (0: none); an item that does not fit
        under `max_bytes` or its tenant's `tenant_max_bytes` is rejected with BUFFER_FULL and
        nothing of it is stored. Returns the tenants whose buffer now holds at least
        `batch_size` lines or `flush_bytes` bytes. A batch appends once. Raises ValueError for
        a mark below the last one given, or equal to it once delivered."""

    def append_lines(self, tenant: str, lines: bytes, line_count: int, mark: int = 0) -> bool:
        """Append already-encoded newline-terminated lines for one tenant under `mark`, all or
        nothing; False when they do not fit under either cap."""

    def ready(self) -> list[str]:
        """Tenants at or over a flush threshold, or with a put-back body waiting."""

    def tenants(self) -> list[str]:
        """Tenants with anything buffered or put back."""

    def drain(self, tenant: str, max_lines: int = 5000) -> tuple[bytes, int] | None:
        """Take the tenant's oldest data as one write body, now in flight: a put-back body as it
        was, else up to `max_lines` buffered lines. Raises ValueError while the tenant already
        has a body in flight."""

    def settle(self, tenant: str, line_count: int) -> None:
        """The oldest `line_count` lines of the tenant's body in flight are finished with
        (written, or dead-lettered): they leave the caps, and marks whose every line is now
        settled are delivered. The body leaves flight when all its lines are settled."""

    def put_back(self, tenant: str) -> None:
        """Return the unsettled rest of the tenant's body in flight (its write failed), marks
        and all; it is the tenant's next `drain`."""

    def depth(self) -> dict[str, tuple[int, int]]:
        """Per tenant, `(lines, bytes)` buffered or put back (not in flight)."""

    def tenant_bytes(self) -> dict[str, int]:
        """Per tenant, the bytes counted against `tenant_max_bytes` (buffered, put back, in
        flight), tenants by name."""

    def take_delivered(self) -> list[int]:
        """Marks delivered since the previous call, ascending."""

    @property
    def delivered_through(self) -> int:
        """The largest N such that every mark up to N is delivered (0 when none)."""

    @property
    def total_bytes(self) -> int:
        """All bytes counted against the cap: buffered, put back and in flight."""

    @property
    def max_bytes(self) -> int: ...
    @property
    def tenant_max_bytes(self) -> int: ...

class WalFull(Exception):
    """The write-ahead log is at its byte cap; nothing of the append was stored."""

    detail: str

class WalUnavailable(OSError):
    """The write-ahead log could not write (disk full, directory gone, failed fsync); nothing
    of the append was stored."""

    detail: str

@final
class Wal:
    """The write-ahead log of a TenantBuffers' appends: segment files in `directory`.

    An append takes room in the buffers first (items that do not fit get BUFFER_FULL and are
    not logged), writes one record per tenant with the request's new mark and, once the
    covering fdatasync is done (`sync="always"`; `"interval"`: once written, fsynced every
    `sync_interval_ms` by a background thread), buffers the lines. One writer
    thread writes every append queued while the previous write ran in one write and one
    fdatasync (group commit). `submit`/`submit_lines` only queue (GIL released); an event loop
    collects the outcomes with `completed` when `wakeup_fd` is readable. With
    `sync="interval"`, `append`/`append_lines` write in the calling thread instead (GIL
    released) and return at once: a 202 then waits for nothing but that write.

    Opening replays every record above the checkpoint into `buffers` with its mark. A segment
    is deleted once `buffers.delivered_through` covers it (checked every second and by
    `checkpoint()`). A failed fdatasync is never retried: every later append raises
    WalUnavailable and `failed` says why, until restart."""

    def __new__(
        cls,
        buffers: TenantBuffers,
        directory: str | PathLike[str],
        sync: str = "always",
        sync_interval_ms: int = 100,
        max_bytes: int = 1073741824,
        segment_bytes: int = 16777216,
    ) -> Self:
        """Open (create) the log and replay it. Raises WalUnavailable when the directory cannot
        be created or read, ValueError for a bad `sync`. Runs without the GIL."""

    def submit(self, batch: Batch) -> int:
        """Queue the batch's accepted lines to be logged, then buffered: a ticket whose outcome
        `completed` reports (0: nothing to log, done). Raises WalFull at the log's cap,
        WalUnavailable when it cannot write: then nothing of the batch is stored (its items
        keep their per-item results)."""

    def submit_lines(self, tenant: str, lines: bytes, line_count: int) -> int | None:
        """`submit` for one tenant's encoded lines, all or nothing: a ticket, or None when they
        do not fit the buffers (nothing logged)."""

    def append(self, batch: Batch) -> list[str]:
        """`sync="interval"` only (else ValueError): log and buffer the batch's accepted lines
        at once; the tenants now at a flush threshold. Raises like `submit`: then nothing of
        the batch is stored."""

    def append_lines(self, tenant: str, lines: bytes, line_count: int) -> list[str] | None:
        """`append` for one tenant's encoded lines, all or nothing: the tenants now at a flush
        threshold, or None when they do not fit the buffers (nothing logged)."""

    def completed(self) -> list[tuple[int, list[str], WalFull | WalUnavailable | None]]:
        """Outcomes of submitted appends since the last call: `(ticket, tenants now at a flush
        threshold, error)`; the lines are buffered when error is None, else nothing is."""

    def wakeup_fd(self) -> int:
        """A descriptor that becomes readable when `completed` has outcomes."""

    def checkpoint(self) -> None:
        """Write the delivered-through checkpoint and delete delivered segments now."""

    def stats(self) -> dict[str, int]:
        """`bytes`, `segments`, `fsyncs`, `synced_records` (records covered by an fsync),
        `appended_records`, `groups` (writes), `checkpoints`, `deleted_segments`,
        `recycled_segments` (kept as later segments), `compacted_records`."""

    def replay(self) -> tuple[dict[str, int], list[str]]:
        """What opening found: `segments`, `records`, `lines`, `skipped_delivered`,
        `corrupt_records`, `truncated_bytes`, `quarantined_files`; and one line per problem."""

    @property
    def failed(self) -> str | None:
        """Why the log refuses appends until restart (a failed fsync), or None."""

    def close(self) -> None:
        """Refuse further appends; a last fsync and checkpoint. Idempotent."""

@final
class FieldTypes:
    """Each tenant's InfluxDB field types per measurement (any: line protocol writes any), shared by
    all requests. Thread-safe.

    InfluxDB keeps one type per field and refuses a point that sends another; the core writes
    numbers as floats, booleans as booleans and `seq` as an integer. The first item `admit`
    accepts decides a field's type; `learn` (what InfluxDB reports) overrides it. At most
    `max_per_tenant` fields are remembered per tenant: beyond that, a new field is neither
    remembered nor checked (counted in `untracked`)."""

    def __new__(cls, max_per_tenant: int = 10000) -> Self: ...
    def admit(self, batch: Batch) -> None:
        """Reject with INVALID_METRICS, and a detail naming the field, each still-accepted item
        (request order) that sends a field with another type than the tenant's remembered one
        (or an earlier item's in this batch); remember the new fields of the others. After
        `resolve`, before `TenantBuffers.append`, once per batch: ValueError otherwise (and
        `resolve` after `admit` is one too)."""

    def unknown(self, batch: Batch) -> list[tuple[str, str, str, str]]:
        """The distinct fields of the batch's still-accepted items that their tenant has not
        remembered, `(tenant, measurement, field, type)` of their first item in request order;
        none for a tenant at `max_per_tenant`. Read only (callable before `admit`): what a
        process claims in the shared registry and `learn`s back before admitting. Runs without
        the GIL."""

    def learn(self, tenant: str, measurement: str, field: str, field_type: str) -> bool:
        """Set a field's type as InfluxDB reports it (`float`, `integer`, `unsigned`, `string`
        or `boolean`; ValueError for another). False when it is not remembered: the tenant is at
        `max_per_tenant`."""

    def get(self, tenant: str, measurement: str, field: str) -> str | None:
        """The remembered type of a field, or None."""

    def __len__(self) -> int:
        """Fields remembered, all tenants."""

    @property
    def untracked(self) -> int:
        """Fields of admitted items that were not remembered because of the cap (each time)."""

    @property
    def max_per_tenant(self) -> int: ...

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

def parse_lines(
    body: bytes,
    tenant_id: str,
    receive_ns: int,
    precision: str = "ns",
    max_payload_bytes: int = 8192,
    device: tuple[str, str, str] | None = None,
    sites: dict[str, str] | None = None,
) -> Batch:
    """Parse an InfluxDB line-protocol body for `tenant_id` (docs/core-rules.md, "Line
    protocol"): one item per line that is neither blank nor a comment, numbered by
    `line_numbers()`, each refused line with a detail (`details()`). Accepted lines are
    re-encoded with `device_id`/`site_id` tags of the writer: `device` = `(device_id, site_id,
    provision_token)` of a device writing with its own credential, or `sites` = device_id →
    site_id of the tenant's active devices, for a tenant key (each line's `device_id` tag names
    its device; the batch's groups carry no token). Exactly one of the two, else ValueError
    (also for an invalid tenant or ids). `max_payload_bytes` bounds each line. A line without a
    timestamp gets `receive_ns` plus its item index. Raises BodyError for an unknown
    precision, a body that is not UTF-8 or holds more than MAX_LP_LINES lines. Runs without
    the GIL."""

def line_devices(body: bytes, max_payload_bytes: int = 8192) -> list[str]:
    """The distinct `device_id` tags of the lines a tenant key could write (every rule but the
    device's own passed), in order of first appearance: the devices to look up before
    `parse_lines(..., sites=...)`. BodyError like `parse_lines`."""

def parse_shelly(body: bytes, now_s: int, max_messages: int = 1000) -> ShellyBatch:
    """Parse and validate a Shelly batch. Raises BodyError (HTTP 422) for a body that is not a
    JSON object with a non-empty `messages` list of at most `max_messages`. Runs without the GIL."""
