"""Accepting lines into the buffers, durably or not (TIDEGATE_DURABILITY).

`memory`: a request's lines go straight into the core's buffers; a 202 means "in memory".
`wal`: they go through the core's write-ahead log (`_core.Wal`, under `data_dir/wal`): room is
taken in the buffers, the records are written and (TIDEGATE_WAL_SYNC=always) fsynced together
with every other request waiting at that moment, and only then are the lines buffered and the
202 sent. With `always` the route only queues the records (microseconds, GIL released) and
awaits a future: the core's writer thread does the write and fsync and signals completed groups
on a socket the event loop watches, so the loop never waits on disk and no thread waits per
request. With `interval` (the default) a 202 waits for no fsync, only for the write into the
page cache: the route does that write itself (`Wal.append`, GIL released), which costs less than
the hop to the writer thread and back. Opening
the log replays what a crash left undelivered before the gateway serves; if the directory
cannot be used at start, appends get 503 and the open is retried every second.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from tidegate import logs
from tidegate._core import Wal, WalFull, WalUnavailable
from tidegate.config import Config

if TYPE_CHECKING:
    from tidegate._core import Batch, TenantBuffers

_REOPEN_EVERY_S = 1.0
# Segments are an eighth of the cap (at most 16 MiB), so retiring delivered ones frees room
# in steps well below the cap.
_MAX_SEGMENT_BYTES = 16 << 20


class Refused(Exception):
    """The log could not take the request: answer 503 with `detail` (and `reason`)."""

    def __init__(self, detail: str, reason: str | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class Accept:
    """Where the routes put accepted lines: the buffers, through the log when configured."""

    def __init__(self, cfg: Config, buffers: TenantBuffers, *, logged: bool = True) -> None:
        """`logged=False`: never the log, whatever TIDEGATE_DURABILITY says (the NATS worker,
        whose lines JetStream keeps until they are written)."""
        self.buffers = buffers
        self.durable = logged and cfg.durability == "wal"
        # Sync "interval": a 202 waits only for the write, done at once in this thread (GIL
        # released); the writer thread, its wakeup and a future per request cost more.
        self._inline = cfg.wal_sync == "interval"
        self._cfg = cfg
        self._wal: Wal | None = None
        self._open_error: str | None = None
        self._replay: dict[str, int] = {}
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        self._reopen: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the log and replay it into the buffers (wal mode); retry in the background
        when the directory cannot be used."""
        if not self.durable:
            return
        if not await self._open():
            self._reopen = asyncio.create_task(self._keep_opening(), name="tidegate-wal-open")

    async def _open(self) -> bool:
        cfg = self._cfg
        try:
            wal = await asyncio.to_thread(
                Wal,
                self.buffers,
                wal_dir(cfg),
                sync=cfg.wal_sync,
                sync_interval_ms=cfg.wal_sync_interval_ms,
                max_bytes=cfg.wal_max_bytes,
                segment_bytes=min(_MAX_SEGMENT_BYTES, max(1, cfg.wal_max_bytes // 8)),
            )
        except WalUnavailable as exc:
            if self._open_error != exc.detail:
                logs.log("wal_unavailable", level="error", error=exc.detail)
            self._open_error = exc.detail
            return False
        counts, problems = wal.replay()
        for problem in problems:
            logs.log("wal_replay_problem", level="warning", problem=problem)
        logs.log("wal_opened", directory=str(wal_dir(cfg)), sync=cfg.wal_sync, replay=counts)
        self._replay = counts
        self._open_error = None
        self._wal = wal
        asyncio.get_running_loop().add_reader(wal.wakeup_fd(), self._completed)
        return True

    def _completed(self) -> None:
        """The writer finished groups: resolve the futures of their appends."""
        assert self._wal is not None, "only called while the log is open"
        for ticket, ready, error in self._wal.completed():
            future = self._waiting.pop(ticket, None)
            if future is None or future.done():
                continue  # its request was cancelled (client gone): the lines are stored
            if error is None:
                future.set_result(ready)
            else:
                future.set_exception(_refused(error))

    async def _keep_opening(self) -> None:
        while not await self._open():
            await asyncio.sleep(_REOPEN_EVERY_S)

    async def append(self, batch: Batch, mark: int = 0) -> list[str]:
        """Buffer the batch's accepted lines (logged first in wal mode); the tenants now at a
        flush threshold. Raises Refused when the log cannot take them: nothing is stored.
        `mark` (memory mode: the log has its own) is the delivery mark of the lines."""
        if not self.durable:
            return self.buffers.append(batch, mark)
        wal = self._usable()
        try:
            if self._inline:
                return wal.append(batch)
            ticket = wal.submit(batch)
        except (WalFull, WalUnavailable) as exc:
            raise _refused(exc) from None
        return await self._outcome(ticket) if ticket else []

    async def append_lines(self, tenant: str, lines: bytes, line_count: int, mark: int = 0) -> bool:
        """`append` for one tenant's encoded lines, all or nothing; False when they do not
        fit the buffers."""
        if not self.durable:
            return self.buffers.append_lines(tenant, lines, line_count, mark)
        wal = self._usable()
        try:
            if self._inline:
                return wal.append_lines(tenant, lines, line_count) is not None
            ticket = wal.submit_lines(tenant, lines, line_count)
        except (WalFull, WalUnavailable) as exc:
            raise _refused(exc) from None
        if ticket is None:
            return False
        await self._outcome(ticket)
        return True

    def _outcome(self, ticket: int) -> asyncio.Future[list[str]]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = future
        return future

    def _usable(self) -> Wal:
        if self._wal is None:
            raise Refused(f"write-ahead log unavailable: {self._open_error}", None)
        return self._wal

    def not_ready_reason(self) -> str | None:
        """Why the log cannot take appends now (not open, or a failed fsync), or None."""
        if not self.durable:
            return None
        if self._wal is None:
            return f"write-ahead log unavailable: {self._open_error}"
        failed = self._wal.failed
        return None if failed is None else f"write-ahead log failed (restart needed): {failed}"

    def stats(self) -> dict[str, object] | None:
        """The log's counters, replay counts and state (None in memory mode)."""
        if not self.durable:
            return None
        out: dict[str, object] = {"sync": self._cfg.wal_sync, "max_bytes": self._cfg.wal_max_bytes}
        if self._wal is not None:
            counters = self._wal.stats()
            out.update(counters)
            fsyncs = counters["fsyncs"]
            out["records_per_fsync"] = (
                round(counters["synced_records"] / fsyncs, 2) if fsyncs else 0.0
            )
        out.update({f"replayed_{k}": v for k, v in self._replay.items() if k in _REPLAYED})
        out.update({k: v for k, v in self._replay.items() if k in _FOUND})
        out["failed"] = self.not_ready_reason()
        return out

    async def close(self) -> None:
        """Stop retrying the open; close the log (last fsync and checkpoint, which deletes the
        delivered segments)."""
        if self._reopen is not None:
            self._reopen.cancel()
        wal = self._wal
        if wal is not None:
            asyncio.get_running_loop().remove_reader(wal.wakeup_fd())
            try:
                await asyncio.to_thread(wal.close)
            except OSError as exc:
                logs.log("wal_close_failed", level="error", error=str(exc))
            self._completed()


def _refused(exc: WalFull | WalUnavailable) -> Refused:
    """At the cap: BUFFER_FULL (space frees as the sink delivers); else no reason code."""
    return Refused(exc.detail, "BUFFER_FULL" if isinstance(exc, WalFull) else None)


_REPLAYED = frozenset({"records", "lines", "segments"})
_FOUND = frozenset({"skipped_delivered", "corrupt_records", "truncated_bytes", "quarantined_files"})


def wal_dir(cfg: Config) -> Path:
    """The log's directory: stable (not derived from the config), so a config change never
    orphans it."""
    return cfg.data_dir / "wal"
