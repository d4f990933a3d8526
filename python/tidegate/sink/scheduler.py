"""When each tenant's buffer is written: on a size threshold, every flush interval, and at
stop; a failed write waits on a timer (retry.py's policy), never on a write slot.

A write that may succeed later (connection error, timeout, 401/403/404/408/429, 5xx) goes back
into the core's buffer, where its bytes already count against the cap, and its tenant is retried
after an exponential backoff with full jitter or the server's Retry-After; a database that stays
down turns into BUFFER_FULL/503 at the edge, not into loss. A body the database refuses (400/422,
a one-line 413) is not retried: influx.py appends it to a dead-letter LP file with the error.
Each tenant has at most one body in flight (its lines stay in order), and a failing tenant waits
on a timer, not on a write slot, so it never stalls the others. Every drain, settle and
put_back on the core's buffers is in this module (the routes only append).

Every line ends in exactly one counter: `writes_ok`, `writes_err` (refused, dead-lettered),
`writes_uncertain` (dead-lettered from a partial write that did not say how many lines it
refused), `spilled` (still unwritten at the stop deadline, kept in a spill file), `logged` (still
unwritten at the stop deadline with TIDEGATE_DURABILITY=wal: left in the write-ahead log, which
the next start replays) or `lost` (the spill file could not be written; logged as an error).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol, TypedDict

import httpx

from tidegate._core import append_file
from tidegate.config import Config
from tidegate.logs import log
from tidegate.sink.files import FileTarget, hour_file
from tidegate.sink.influx import FieldLearner, InfluxTarget, without_userinfo
from tidegate.sink.retry import Retries, RetryPolicy, send
from tidegate.sink.target import Counts, Failure, FlushHook, Pending, Target, describe

HIGH_WATER = 0.8
"""Share of the buffer cap above which the gateway reports itself not ready."""

# Part of the stop deadline kept for writing spill files after the last flush attempt.
_SPILL_RESERVE = 0.2
_SPILL_RESERVE_MAX_S = 2.0


class Buffers(Protocol):
    """What the sink uses of the core's `TenantBuffers`."""

    def ready(self) -> list[str]: ...
    def tenants(self) -> list[str]: ...
    def drain(self, tenant: str, max_lines: int = 5000) -> tuple[bytes, int] | None: ...
    def settle(self, tenant: str, line_count: int) -> None: ...
    def put_back(self, tenant: str) -> None: ...
    def depth(self) -> dict[str, tuple[int, int]]: ...
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
    writes_uncertain, spilled, logged, lost; dead_lettered counts the lines kept in dead-letter
    files (refused ones and the good lines sent with them)."""

    target: str
    writes_ok: int
    writes_err: int
    writes_uncertain: int
    flushes: int  # bodies written
    retries: int  # failed attempts that will be retried
    dead_lettered: int
    spilled: int
    logged: int
    lost: int
    retry_queue_depth: int  # lines put back, waiting for their tenant's retry
    retry_tenants: int
    in_flight_tenants: int
    failing: bool
    last_error: str | None
    tenants_failing: dict[str, TenantFailure]


@dataclass(slots=True)
class _Failing(Retries):
    """A tenant whose last write failed and is waiting for its retry."""

    timer: asyncio.TimerHandle | None = None


class Sink:
    """Flushes the per-tenant buffers: on `notify` (a size threshold was reached), every
    `influx_flush_interval_ms`, and at `stop`. Use from the event loop's thread."""

    def __init__(
        self,
        cfg: Config,
        buffers: Buffers,
        *,
        on_flush: FlushHook | None = None,
        spill: bool = True,
        field_types: FieldLearner | None = None,
    ) -> None:
        """`spill=False` (the lines are kept elsewhere): what is unwritten at stop stays in
        the buffers, unsettled, counted as `logged`: the gateway's write-ahead log replays it at
        the next start; a NATS worker's messages go back to JetStream unacked (a spilled line
        would have counted as delivered and been acked)."""
        self._cfg = cfg
        self._spill_at_stop = spill
        self._field_types = field_types
        self._buffers = buffers
        self._on_flush = on_flush
        self._counts = Counts()
        self._policy = RetryPolicy(cfg, self._counts)
        self._target: Target | None = None
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
            f"influxdb {cfg.influx_api} {without_userinfo(cfg.influxdb_url)}"
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
            influx = InfluxTarget(cfg, self._client, self._counts, self._observe, self._field_types)
            await influx.load_field_types()
            self._target = influx
        else:
            self._target = FileTarget(cfg.data_dir / "lp", self._counts, self._observe)
        self._running = True
        self._ticker = asyncio.create_task(self._tick(), name="tidegate-sink-tick")
        log("sink_started", target=self.target)

    def notify(self, tenants: list[str]) -> None:
        """Flush these tenants now (they reached a size threshold); returns at once."""
        if self._running:
            for tenant in tenants:
                self._schedule(tenant)

    async def stop(self, *, spill: bool = True) -> None:
        """Write everything buffered within `shutdown_deadline_s`; what is still unwritten
        near the deadline goes to `data_dir/spill/telemetry_{tenant}/<UTC hour>.lp` (sent by
        `tidegate replay`), or stays in the write-ahead log (`spill=False`). Spilling happens
        even if this coroutine is cancelled."""
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
            if self._spill_at_stop:
                self._spill()
            else:
                self._leave_in_log()
            if self._client is not None:
                await self._client.aclose()
            if self._target is not None:
                self._target.close()
            log("sink_stopped", stats=self.stats())

    def tenant_failing(self, tenant: str) -> bool:
        """Whether this tenant's last write failed (it is waiting for its retry)."""
        return tenant in self._failing

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
            "logged": c.logged,
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
            log("sink_hook_failed", level="error", error=describe(exc))

    async def _tick(self) -> None:
        interval = self._cfg.influx_flush_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                for tenant in self._buffers.tenants():
                    self._schedule(tenant)
            except Exception as exc:  # the loop must outlive a bad tick
                log("sink_tick_failed", level="error", error=describe(exc))

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
        (until empty when closing); on a retryable failure (its retry timer armed), end."""
        assert self._target is not None, "Sink.start() was not awaited"
        body_lines = self._target.body_lines
        try:
            while (drained := self._buffers.drain(tenant, body_lines)) is not None:
                if await self._write(tenant, *drained) is not None:
                    return
                self._recovered(tenant)
                if not (self._closing or tenant in self._again or tenant in self._buffers.ready()):
                    return
                self._again.discard(tenant)
            self._again.discard(tenant)  # drained to empty: nothing left that was asked for
        except Exception as exc:  # a bug must not end flushing: the next tick retries
            log("sink_flush_crashed", level="error", tenant=tenant, error=describe(exc))
        finally:
            del self._active[tenant]

    async def _write(self, tenant: str, body: bytes, lines: int) -> Failure | None:
        """Write one drained body; settle what is done with, put the rest back. Returns the
        failure that ended the attempts (None when written)."""
        pending: Pending = deque([(body, lines)])
        try:
            return await send(
                functools.partial(self._deliver, tenant),
                pending,
                functools.partial(self._failed, tenant),
            )
        finally:
            # Also on cancellation (stop's deadline): the body must be back before the spill.
            # What left `pending` (written or dead-lettered) is always its oldest lines.
            rest_lines = sum(n for _, n in pending)
            if rest_lines < lines:
                self._buffers.settle(tenant, lines - rest_lines)
            if pending:
                self._buffers.put_back(tenant)

    async def _deliver(self, tenant: str, pending: Pending) -> Failure | None:
        assert self._target is not None, "Sink.start() was not awaited"
        async with self._slots:
            return await self._target.deliver(tenant, pending)

    def _failed(self, tenant: str, failure: Failure, lines: int) -> float | None:
        """Record the failure; when closing, the delay to sleep before trying again, else
        None with the tenant's retry timer armed."""
        failing = self._failing.setdefault(tenant, _Failing())
        delay = self._policy.failed(tenant, failing, failure, lines)
        log(
            "sink_write_failed",
            level="warning",
            tenant=tenant,
            lines=lines,
            attempt=failing.attempts,
            retry_in_s=round(delay, 3),
            error=failure.error,
        )
        if self._closing:
            return delay
        failing.timer = asyncio.get_running_loop().call_later(delay, self._retry_due, tenant)
        return None

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

    def _leave_in_log(self) -> None:
        left = sum(lines for lines, _ in self._buffers.depth().values())
        self._counts.logged += left
        if left:
            log("sink_left_in_wal", level="warning", lines=left)

    def _spill(self) -> None:
        # Synchronous on purpose: nothing can cancel it half way, and the loop is shutting down.
        root = self._cfg.data_dir / "spill"
        for tenant in self._buffers.tenants():
            while (
                drained := self._buffers.drain(tenant, self._cfg.influx_max_body_lines)
            ) is not None:
                body, lines = drained
                path = hour_file(root, tenant)
                try:
                    append_file(path, body)
                except OSError as exc:
                    self._counts.lost += lines
                    log(
                        "sink_spill_failed",
                        level="error",
                        tenant=tenant,
                        lines=lines,
                        error=describe(exc),
                    )
                else:
                    self._counts.spilled += lines
                    log("sink_spilled", level="warning", tenant=tenant, lines=lines, path=str(path))
                finally:
                    self._buffers.settle(tenant, lines)
