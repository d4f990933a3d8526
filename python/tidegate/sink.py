"""The sink: writes the core's per-tenant line-protocol buffers to InfluxDB or to LP files.

A write that may succeed later (connection error, timeout, 401/403/408/429, 5xx) goes back into
the core's buffer, where its bytes already count against the cap, and its tenant is retried after
an exponential backoff with full jitter or the server's Retry-After; a database that stays down
turns into BUFFER_FULL/503 at the edge, not into loss. A body the database refuses (400/422,
404, a one-line 413) is not retried: it is appended to a dead-letter LP file with the error.
Each tenant has at most one body in flight (its lines stay in order), and a failing tenant waits
on a timer, not on a write slot, so it never stalls the others.

Every line ends in exactly one counter: `writes_ok`, `writes_err` (refused, dead-lettered),
`writes_uncertain` (dead-lettered from a partial write that did not say how many lines it
refused), `spilled` (still unwritten at the stop deadline, kept in a spill file) or `lost` (the
spill file could not be written; logged as an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import fcntl
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, TypedDict
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from tidegate.config import INFLUX_APIS, Config
from tidegate.logs import log

FlushHook = Callable[[str, int, float, bool], None]
"""`(tenant, lines, seconds, ok)`, called once per write attempt (metrics.py records it)."""

HIGH_WATER = 0.8
"""Share of the buffer cap above which the gateway reports itself not ready."""

# Statuses after which the same body may succeed later. A bad token must not lose data, so
# 401/403 wait for someone to fix it; every other 4xx is the body's fault and is dead-lettered.
_RETRYABLE_4XX = frozenset({401, 403, 408, 429})
_DROPPED = re.compile(r"dropped=(\d+)")
_ERROR_CHARS = 300
_DEAD_LETTER_ERROR_CHARS = 4000
# Part of the stop deadline kept for writing spill files after the last flush attempt.
_SPILL_RESERVE = 0.2
_SPILL_RESERVE_MAX_S = 2.0

Pending = deque[tuple[bytes, int]]
"""The pieces of one drained body still to write, in order, with their line counts."""


class Buffers(Protocol):
    """What the sink uses of the core's `TenantBuffers`."""

    def ready(self) -> list[str]: ...
    def tenants(self) -> list[str]: ...
    def drain(self, tenant: str, max_lines: int = 5000) -> tuple[bytes, int] | None: ...
    def settle(self, tenant: str, line_count: int) -> None: ...
    def put_back(self, tenant: str) -> None: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...


class TenantFailure(TypedDict):
    """A tenant whose last write failed: consecutive failures, lines waiting, when next."""

    attempts: int
    lines: int
    error: str
    retry_in_s: float


class SinkStats(TypedDict):
    """`Sink.stats()`. Line counters: every line ends in exactly one of writes_ok, writes_err,
    writes_uncertain, spilled, lost; dead_lettered counts the lines kept in dead-letter files
    (refused ones and the good lines sent with them)."""

    target: str
    writes_ok: int
    writes_err: int
    writes_uncertain: int
    flushes: int  # bodies written
    retries: int  # failed attempts that will be retried
    dead_lettered: int
    spilled: int
    lost: int
    retry_queue_depth: int  # lines put back, waiting for their tenant's retry
    retry_tenants: int
    in_flight_tenants: int
    failing: bool
    last_error: str | None
    tenants_failing: dict[str, TenantFailure]


@dataclass(slots=True)
class _Counts:
    writes_ok: int = 0
    writes_err: int = 0
    writes_uncertain: int = 0
    flushes: int = 0
    retries: int = 0
    dead_lettered: int = 0
    spilled: int = 0
    lost: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class _Failure:
    """A write that may succeed later; what is left of the body stays pending."""

    error: str
    retry_after: float | None = None


@dataclass(slots=True)
class _Failing:
    """A tenant whose last write failed and is waiting for its retry."""

    attempts: int = 0
    lines: int = 0
    error: str = ""
    retry_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


class _Target(Protocol):
    async def deliver(self, tenant: str, pending: Pending) -> _Failure | None: ...


def database(tenant: str) -> str:
    """The InfluxDB database (v1, v3) or bucket (v2) of a tenant."""
    return f"telemetry_{tenant}"


def _hour_file(root: Path, tenant: str) -> Path:
    return root / database(tenant) / f"{datetime.now(UTC):%Y-%m-%dT%H}.lp"


def _append(path: Path, data: bytes) -> None:
    """Append `data` under an exclusive lock to the file that is at `path` now.

    replay() renames a file away and then takes its lock once before reading it, so an append
    lands either in what replay reads or in a new file at `path`, never after the read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # Unbuffered: a failed write raises here, not later from close().
        with path.open("ab", buffering=0) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            opened = os.fstat(f.fileno())
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if (opened.st_dev, opened.st_ino) != (current.st_dev, current.st_ino):
                continue
            view = memoryview(data)
            try:
                while view:
                    view = view[f.write(view) :]
            except OSError:
                # Cut a half-written body (disk full) off, or its retry would glue a broken
                # line onto the first line of the next body.
                with contextlib.suppress(OSError):
                    os.ftruncate(f.fileno(), opened.st_size)
                raise
            return


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _clip(text: str, limit: int = _ERROR_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _describe(exc: BaseException) -> str:
    return _clip(f"{type(exc).__name__}: {exc}")


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None when absent/bad."""
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff(cfg: Config, attempt: int, retry_after: float | None) -> float:
    """Delay before retry number `attempt` (1-based): the server's Retry-After capped at
    `influx_retry_max_s`, else full jitter over `influx_retry_base_s * 2**(attempt-1)`."""
    if retry_after is not None:
        return min(retry_after, cfg.influx_retry_max_s)
    # Exponent capped: past 2**32 the ceiling is retry_max anyway, and floats would overflow.
    ceiling = cfg.influx_retry_base_s * 2.0 ** min(attempt - 1, 32)
    return random.uniform(0.0, min(ceiling, cfg.influx_retry_max_s))


def rejected_lines(status: int, text: str, lines: int) -> int | None:
    """How many of a refused body's `lines` the database did not write; None if it won't say.

    InfluxDB 1.x: 400 `partial write: ... dropped=N`, and for unparsable lines one `unable to
    parse` each (with `dropped=0`); 2.x: 422 with `dropped=N`; 3.x: 400 `partial write of line
    protocol occurred` with one `data` entry per refused line. Any other refusal wrote nothing.
    (1.x names only the type-conflict drops when a body also has unparsable lines; the core
    never encodes those, so that undercount needs a hand-made body.)
    """
    if status != 422 and "partial write" not in text:
        return lines
    with contextlib.suppress(ValueError):
        doc = orjson.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            return min(lines, len(doc["data"]))
    dropped = _DROPPED.findall(text)
    unparsed = text.count("unable to parse")
    if not dropped and not unparsed:
        return None
    return min(lines, (int(dropped[-1]) if dropped else 0) + unparsed)


def split_body(body: bytes, lines: int) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
    """Halve a body of `lines` (>= 2) newline-terminated lines at a line boundary."""
    half = lines // 2
    cut = -1
    for _ in range(half):
        cut = body.index(b"\n", cut + 1)
    return (body[: cut + 1], half), (body[cut + 1 :], lines - half)


class _FileTarget:
    """Embedded sink: each body appended to `<root>/telemetry_{tenant}/<UTC hour>.lp`."""

    def __init__(self, root: Path, counts: _Counts, observe: FlushHook) -> None:
        self._root = root
        self._counts = counts
        self._observe = observe

    async def deliver(self, tenant: str, pending: Pending) -> _Failure | None:
        """Append the pending pieces; an OSError (disk full, ...) is retried later."""
        while pending:
            body, lines = pending[0]
            started = time.perf_counter()
            try:
                await asyncio.to_thread(_append, _hour_file(self._root, tenant), body)
            except OSError as exc:
                self._observe(tenant, lines, time.perf_counter() - started, False)
                return _Failure(_describe(exc))
            self._observe(tenant, lines, time.perf_counter() - started, True)
            self._counts.writes_ok += lines
            self._counts.flushes += 1
            pending.popleft()
        return None


class _InfluxTarget:
    """Writes to InfluxDB through the v1, v2 or v3 write API, with the failure policy."""

    def __init__(
        self, cfg: Config, client: httpx.AsyncClient, counts: _Counts, observe: FlushHook
    ) -> None:
        if cfg.influxdb_url is None or cfg.influx_api not in INFLUX_APIS:
            raise ValueError("an InfluxDB target needs influxdb_url and influx_api v1, v2 or v3")
        self._cfg = cfg
        self._client = client
        self._counts = counts
        self._observe = observe
        self._api = cfg.influx_api
        url = cfg.influxdb_url.rstrip("/")
        if cfg.influxdb_token:
            # httpx would turn a URL's user:password into Basic auth over the token header.
            url = _without_userinfo(url)
        self._query_url = f"{url}/query"
        self._auth: dict[str, str] = {}
        if cfg.influx_api == "v1":
            self._write_url = f"{url}/write"
            scheme = "Token"
        elif cfg.influx_api == "v2":
            self._write_url = f"{url}/api/v2/write"
            scheme = "Token"
        else:
            self._write_url = f"{url}/api/v3/write_lp"
            scheme = "Bearer"
        if cfg.influxdb_token:
            self._auth["Authorization"] = f"{scheme} {cfg.influxdb_token}"
        self._headers = {**self._auth, "Content-Type": "text/plain; charset=utf-8"}
        self._dead_letter_root = cfg.data_dir / "deadletter"

    def _params(self, tenant: str) -> dict[str, str]:
        db = database(tenant)
        if self._api == "v1":
            return {"db": db, "precision": "ns"}
        if self._api == "v2":
            return {"org": self._cfg.influxdb_org or "", "bucket": db, "precision": "ns"}
        return {"db": db, "precision": "nanosecond"}

    async def deliver(self, tenant: str, pending: Pending) -> _Failure | None:
        """Write the pending pieces in order. Written and dead-lettered pieces leave `pending`;
        on a retryable failure the rest stays there and the failure is returned."""
        created = False
        while pending:
            body, lines = pending[0]
            started = time.perf_counter()
            try:
                resp = await self._client.post(
                    self._write_url,
                    params=self._params(tenant),
                    content=body,
                    headers=self._headers,
                )
            except httpx.TransportError as exc:
                self._observe(tenant, lines, time.perf_counter() - started, False)
                return _Failure(_describe(exc))
            status = resp.status_code
            self._observe(tenant, lines, time.perf_counter() - started, resp.is_success)
            if resp.is_success:
                self._counts.writes_ok += lines
                self._counts.flushes += 1
                pending.popleft()
                continue
            text = resp.text
            if status == 413 and lines > 1:
                pending.popleft()
                pending.extendleft(reversed(split_body(body, lines)))
                continue
            if (
                status == 404
                and self._api == "v1"
                and self._cfg.influx_create_db
                and not created
                and "database not found" in text
            ):
                failure = await self._create_database(tenant)
                if failure is not None:
                    return failure
                created = True
                continue
            if status in _RETRYABLE_4XX or not 400 <= status < 500:
                return _Failure(f"HTTP {status}: {_clip(text)}", _retry_after(resp))
            try:
                await self._dead_letter(tenant, body, lines, status, text)
            except OSError as exc:
                # Keeping the body beats losing it: the retry re-sends it, and InfluxDB keeps one
                # point per series and timestamp, so its good lines are not doubled.
                return _Failure(f"dead-letter file: {_describe(exc)}")
            pending.popleft()
        return None

    async def _create_database(self, tenant: str) -> _Failure | None:
        db = database(tenant)
        try:
            resp = await self._client.post(
                self._query_url, data={"q": f'CREATE DATABASE "{db}"'}, headers=self._auth
            )
        except httpx.TransportError as exc:
            return _Failure(f"CREATE DATABASE {db}: {_describe(exc)}")
        # 1.x answers 200 with {"results":[{"error":...}]} when the statement itself fails.
        if not resp.is_success or '"error"' in resp.text:
            return _Failure(
                f"CREATE DATABASE {db}: HTTP {resp.status_code}: {_clip(resp.text)}",
                _retry_after(resp),
            )
        log("sink_database_created", database=db)
        return None

    async def _dead_letter(
        self, tenant: str, body: bytes, lines: int, status: int, text: str
    ) -> None:
        rejected = rejected_lines(status, text, lines)
        told = "an unknown number" if rejected is None else str(rejected)
        note = (
            f"# {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} HTTP {status}: {told} of {lines} lines "
            f"refused: {_clip(text, _DEAD_LETTER_ERROR_CHARS)}\n"
        )
        path = self._dead_letter_root / f"{database(tenant)}.lp"
        await asyncio.to_thread(_append, path, note.encode() + body)
        counts = self._counts
        counts.dead_lettered += lines
        if rejected is None:
            counts.writes_uncertain += lines
        else:
            counts.writes_err += rejected
            counts.writes_ok += lines - rejected
        counts.last_error = f"{tenant}: HTTP {status}: {_clip(text)}"
        log(
            "sink_dead_lettered",
            level="error",
            tenant=tenant,
            status=status,
            lines=lines,
            rejected=rejected,
            path=str(path),
            error=_clip(text),
        )


class Sink:
    """Flushes the per-tenant buffers: on `notify` (a size threshold was reached), every
    `influx_flush_interval_ms`, and at `stop`. Use from the event loop's thread."""

    def __init__(self, cfg: Config, buffers: Buffers, *, on_flush: FlushHook | None = None) -> None:
        self._cfg = cfg
        self._buffers = buffers
        self._on_flush = on_flush
        self._counts = _Counts()
        self._target: _Target | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(cfg.influx_max_concurrency)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._failing: dict[str, _Failing] = {}
        self._again: set[str] = set()  # asked to flush while busy or backing off
        self._ticker: asyncio.Task[None] | None = None
        self._running = False
        # Set by stop(): tenant tasks then write until empty, sleeping through their backoff.
        self._closing = False
        # For logs and /stats: without the URL's user:password, if it has one.
        self.target = (
            f"influxdb {cfg.influx_api} {_without_userinfo(cfg.influxdb_url)}"
            if cfg.influxdb_url
            else f"files {cfg.data_dir / 'lp'}"
        )

    async def start(self) -> None:
        """Open the keep-alive client (or the file sink) and start the periodic flush."""
        if self._running or self._closing:
            return
        cfg = self._cfg
        if cfg.influxdb_url:
            slots = cfg.influx_max_concurrency
            self._client = httpx.AsyncClient(
                timeout=cfg.influx_timeout_s,
                limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
            )
            self._target = _InfluxTarget(cfg, self._client, self._counts, self._observe)
        else:
            self._target = _FileTarget(cfg.data_dir / "lp", self._counts, self._observe)
        self._running = True
        self._ticker = asyncio.create_task(self._tick(), name="tidegate-sink-tick")
        log("sink_started", target=self.target)

    def notify(self, tenants: list[str]) -> None:
        """Flush these tenants now (they reached a size threshold); returns at once."""
        if self._running:
            for tenant in tenants:
                self._schedule(tenant)

    async def stop(self) -> None:
        """Write everything buffered within `shutdown_deadline_s`; what is still unwritten
        near the deadline goes to `data_dir/spill/telemetry_{tenant}/<UTC hour>.lp` (sent by
        `tidegate replay`). Spilling happens even if this coroutine is cancelled."""
        if not self._running:
            return
        self._running = False
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        for failing in self._failing.values():
            if failing.timer is not None:
                failing.timer.cancel()
                failing.timer = None
        deadline = self._cfg.shutdown_deadline_s
        budget = deadline - min(deadline * _SPILL_RESERVE, _SPILL_RESERVE_MAX_S)
        try:
            for tenant in self._buffers.tenants():
                self._schedule(tenant)
            if self._active:
                await asyncio.wait(list(self._active.values()), timeout=budget)
        finally:
            tasks = list(self._active.values())
            for task in tasks:
                task.cancel()
            # Each cancelled task puts its body back before it ends, so the spill sees it.
            await asyncio.gather(*tasks, return_exceptions=True)
            self._spill()
            if self._client is not None:
                await self._client.aclose()
            log("sink_stopped", stats=self.stats())

    @property
    def failing(self) -> bool:
        """True while some tenant's last write failed and waits for its retry."""
        return bool(self._failing)

    @property
    def above_high_water(self) -> bool:
        """True when the buffers hold at least 80% of their byte cap."""
        return self._buffers.total_bytes >= HIGH_WATER * self._buffers.max_bytes

    def stats(self) -> SinkStats:
        """Counters (in lines unless named otherwise), retry queue and per-tenant failures."""
        c = self._counts
        now = time.monotonic()
        return {
            "target": self.target,
            "writes_ok": c.writes_ok,
            "writes_err": c.writes_err,
            "writes_uncertain": c.writes_uncertain,
            "flushes": c.flushes,
            "retries": c.retries,
            "dead_lettered": c.dead_lettered,
            "spilled": c.spilled,
            "lost": c.lost,
            "retry_queue_depth": sum(f.lines for f in self._failing.values()),
            "retry_tenants": len(self._failing),
            "in_flight_tenants": len(self._active),
            "failing": self.failing,
            "last_error": c.last_error,
            "tenants_failing": {
                tenant: {
                    "attempts": f.attempts,
                    "lines": f.lines,
                    "error": f.error,
                    "retry_in_s": round(max(0.0, f.retry_at - now), 3),
                }
                for tenant, f in sorted(self._failing.items())
            },
        }

    def _observe(self, tenant: str, lines: int, seconds: float, ok: bool) -> None:
        if self._on_flush is None:
            return
        try:
            self._on_flush(tenant, lines, seconds, ok)
        except Exception as exc:  # a metrics bug must not fail a write
            log("sink_hook_failed", level="error", error=_describe(exc))

    async def _tick(self) -> None:
        interval = self._cfg.influx_flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                for tenant in self._buffers.tenants():
                    self._schedule(tenant)
            except Exception as exc:  # the loop must outlive a bad tick
                log("sink_tick_failed", level="error", error=_describe(exc))

    def _schedule(self, tenant: str) -> None:
        failing = self._failing.get(tenant)
        if tenant in self._active or (failing is not None and failing.timer is not None):
            # Busy or backing off: the flush asked for now follows the current (or retried)
            # body instead of being dropped.
            self._again.add(tenant)
            return
        self._active[tenant] = asyncio.create_task(
            self._flush(tenant), name=f"tidegate-sink-{tenant}"
        )

    async def _flush(self, tenant: str) -> None:
        """Write the tenant's bodies while a flush is asked for or it stays over a threshold
        (until empty when closing); on a retryable failure, arm its retry timer and end."""
        try:
            while (
                drained := self._buffers.drain(tenant, self._cfg.influx_max_body_lines)
            ) is not None:
                failure, left = await self._write(tenant, *drained)
                if failure is None:
                    self._recovered(tenant)
                    if self._closing or tenant in self._again or tenant in self._buffers.ready():
                        self._again.discard(tenant)
                        continue
                    return
                delay = self._failed(tenant, failure, left)
                if not self._closing:
                    failing = self._failing[tenant]
                    failing.timer = asyncio.get_running_loop().call_later(
                        delay, self._retry_due, tenant
                    )
                    return
                await asyncio.sleep(delay)
            self._again.discard(tenant)  # drained to empty: nothing left that was asked for
        except Exception as exc:  # a bug must not end flushing: the next tick retries
            log("sink_flush_crashed", level="error", tenant=tenant, error=_describe(exc))
        finally:
            del self._active[tenant]

    async def _write(self, tenant: str, body: bytes, lines: int) -> tuple[_Failure | None, int]:
        """Write one drained body; settle what is done with, put the rest back. Returns the
        failure (None when done) and the number of lines put back."""
        assert self._target is not None, "Sink.start() was not awaited"
        pending: Pending = deque([(body, lines)])
        try:
            async with self._slots:
                failure = await self._target.deliver(tenant, pending)
        finally:
            # Also on cancellation (stop's deadline): the body must be back before the spill.
            # What left `pending` (written or dead-lettered) is always its oldest lines.
            rest_lines = sum(n for _, n in pending)
            if rest_lines < lines:
                self._buffers.settle(tenant, lines - rest_lines)
            if pending:
                self._buffers.put_back(tenant)
        return failure, rest_lines

    def _failed(self, tenant: str, failure: _Failure, lines: int) -> float:
        failing = self._failing.setdefault(tenant, _Failing())
        failing.attempts += 1
        failing.lines = lines
        failing.error = failure.error
        delay = backoff(self._cfg, failing.attempts, failure.retry_after)
        failing.retry_at = time.monotonic() + delay
        self._counts.retries += 1
        self._counts.last_error = f"{tenant}: {failure.error}"
        log(
            "sink_write_failed",
            level="warning",
            tenant=tenant,
            lines=lines,
            attempt=failing.attempts,
            retry_in_s=round(delay, 3),
            error=failure.error,
        )
        return delay

    def _recovered(self, tenant: str) -> None:
        failing = self._failing.pop(tenant, None)
        if failing is not None:
            if failing.timer is not None:
                failing.timer.cancel()
            log("sink_recovered", tenant=tenant, attempts=failing.attempts)

    def _retry_due(self, tenant: str) -> None:
        failing = self._failing.get(tenant)
        if failing is not None:
            failing.timer = None
        if self._running:
            self._schedule(tenant)

    def _spill(self) -> None:
        # Synchronous on purpose: nothing can cancel it half way, and the loop is shutting down.
        root = self._cfg.data_dir / "spill"
        for tenant in self._buffers.tenants():
            while (
                drained := self._buffers.drain(tenant, self._cfg.influx_max_body_lines)
            ) is not None:
                body, lines = drained
                path = _hour_file(root, tenant)
                try:
                    _append(path, body)
                except OSError as exc:
                    self._counts.lost += lines
                    log(
                        "sink_spill_failed",
                        level="error",
                        tenant=tenant,
                        lines=lines,
                        error=_describe(exc),
                    )
                else:
                    self._counts.spilled += lines
                    log("sink_spilled", level="warning", tenant=tenant, lines=lines, path=str(path))
                finally:
                    self._buffers.settle(tenant, lines)


async def replay(cfg: Config, url: str, api: str, *, max_attempts: int = 10) -> dict[str, int]:
    """Send the embedded sink's files (`data_dir/lp`) and the stop spill files
    (`data_dir/spill`) to the InfluxDB at `url` with write API `api`; returns counts.

    Files go in order (lp/ then spill/; per tenant, oldest hour first), each in chunks of at most
    `influx_max_body_lines` lines under the sink's retry and dead-letter policy. A file is first
    renamed to `*.lp.sending` (a running gateway's next append starts a new file) and becomes
    `*.lp.done` only after all its chunks are written. Delivery is at-least-once: after a crash,
    or when one chunk failed `max_attempts` times (replay then stops, `files_failed` = 1), the
    next replay re-sends that one file from its start; InfluxDB keeps one point per series and
    timestamp, so re-sent lines replace themselves.
    """
    rcfg = dataclasses.replace(cfg, influxdb_url=url.rstrip("/"), influx_api=api)
    counts = _Counts()
    files = failed = lines = 0
    async with httpx.AsyncClient(timeout=cfg.influx_timeout_s) as client:
        target = _InfluxTarget(rcfg, client, counts, lambda *_: None)
        for path in _replay_files(cfg.data_dir):
            sent = await _replay_file(rcfg, target, counts, path, max_attempts)
            if sent is None:
                failed += 1
                break
            files += 1
            lines += sent
    result = {"files": files, "files_failed": failed, "lines": lines}
    result.update((k, v) for k, v in dataclasses.asdict(counts).items() if isinstance(v, int))
    log("replay_finished", counts=result)
    return result


def _replay_files(data_dir: Path) -> list[Path]:
    def order(path: Path) -> tuple[str, int]:
        name = path.name.removesuffix(".sending").removesuffix(".lp")
        # An interrupted replay's file holds older lines than a new file of the same hour.
        return name, 0 if path.name.endswith(".sending") else 1

    out: list[Path] = []
    for root in (data_dir / "lp", data_dir / "spill"):
        if not root.is_dir():
            continue
        for tenant_dir in sorted(root.glob("telemetry_*")):
            names = (".lp", ".lp.sending")
            out.extend(
                sorted((p for p in tenant_dir.iterdir() if p.name.endswith(names)), key=order)
            )
    return out


async def _replay_file(
    cfg: Config, target: _InfluxTarget, counts: _Counts, path: Path, max_attempts: int
) -> int | None:
    """Send one file; its line count, or None when a chunk kept failing (file not done)."""
    tenant = path.parent.name.removeprefix("telemetry_")
    sending = path if path.name.endswith(".sending") else path.with_name(path.name + ".sending")
    if sending != path:
        path.rename(sending)
    await asyncio.to_thread(_wait_for_appends, sending)
    sent = 0
    with sending.open("rb") as f:
        while (
            chunk := await asyncio.to_thread(_read_chunk, f, cfg.influx_max_body_lines)
        ) is not None:
            pending: Pending = deque([chunk])
            attempt = 0
            while (failure := await target.deliver(tenant, pending)) is not None:
                attempt += 1
                counts.retries += 1
                counts.last_error = f"{tenant}: {failure.error}"
                if attempt >= max_attempts:
                    log("replay_gave_up", level="error", file=str(sending), error=failure.error)
                    return None
                delay = backoff(cfg, attempt, failure.retry_after)
                log(
                    "replay_retry",
                    level="warning",
                    file=str(sending),
                    retry_in_s=round(delay, 3),
                    error=failure.error,
                )
                await asyncio.sleep(delay)
            sent += chunk[1]
    sending.rename(_done_path(sending))
    return sent


def _wait_for_appends(path: Path) -> None:
    # An append that opened the file before the rename holds its lock until it has written.
    with path.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)


def _read_chunk(f: BinaryIO, max_lines: int) -> tuple[bytes, int] | None:
    """Up to `max_lines` data lines (blank and `#` comment lines skipped), newline-terminated."""
    parts: list[bytes] = []
    for line in f:
        if not line.strip() or line.startswith(b"#"):
            continue
        parts.append(line if line.endswith(b"\n") else line + b"\n")
        if len(parts) >= max_lines:
            break
    return (b"".join(parts), len(parts)) if parts else None


def _done_path(sending: Path) -> Path:
    name = sending.name.removesuffix(".sending")
    done = sending.with_name(name + ".done")
    n = 1
    # The same hour can be replayed twice (a gateway kept appending): keep both records.
    while done.exists():
        done = sending.with_name(f"{name.removesuffix('.lp')}.{n}.lp.done")
        n += 1
    return done
