"""Line-protocol files: the embedded sink's target, stop spills and dead letters all append
to them under a lock that replay honours."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from tidegate.sink.target import Counts, Failure, FlushHook, Pending, database, describe


def hour_file(root: Path, tenant: str) -> Path:
    """`root/telemetry_{tenant}/<UTC hour>.lp`: the file a tenant's lines go to now."""
    return _hour_file(root, tenant, int(time.time()) // 3600)


# A saturated sink appends hundreds of times a second, to the same few files for an hour.
@functools.lru_cache(maxsize=1024)
def _hour_file(root: Path, tenant: str, hour: int) -> Path:
    return root / database(tenant) / f"{datetime.fromtimestamp(hour * 3600, UTC):%Y-%m-%dT%H}.lp"


def append(path: Path, data: bytes) -> None:
    """Append `data` under an exclusive lock to the file that is at `path` now.

    replay renames a file away and then takes its lock once (`wait_for_appends`) before
    reading it, so an append lands either in what replay reads or in a new file at `path`,
    never after the read."""
    # os-level calls, not a file object: this runs hundreds of times a second on a worker
    # thread, and each Python step there takes the interpreter from the event loop.
    name = os.fspath(path)
    while True:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # a new tenant, or its directory was removed
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            opened = os.fstat(fd)
            try:
                current = os.stat(name)
            except FileNotFoundError:
                continue
            if (opened.st_dev, opened.st_ino) != (current.st_dev, current.st_ino):
                continue
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                # Cut a half-written body (disk full) off, or its retry would glue a broken
                # line onto the first line of the next body.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, opened.st_size)
                raise
            return
        finally:
            os.close(fd)


def wait_for_appends(path: Path) -> None:
    """Return once no `append` that opened `path` before it was renamed is still writing."""
    with path.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)


class FileTarget:
    """Embedded sink: each body appended to `<root>/telemetry_{tenant}/<UTC hour>.lp`."""

    # A file takes a body of any size. One delivery costs the event loop a turn (and a thread
    # hop), and a loop saturated by large requests turns slowly: a drain of InfluxDB's body
    # size (5,000 lines) per turn fell behind 5,000-line requests; one of everything buffered
    # (the buffers' caps bound it) does not.
    body_lines = 1 << 30

    def __init__(self, root: Path, counts: Counts, observe: FlushHook) -> None:
        self._root = root
        self._counts = counts
        self._observe = observe

    async def deliver(self, tenant: str, pending: Pending) -> Failure | None:
        """Append the pending pieces; an OSError (disk full, ...) is retried later."""
        loop = asyncio.get_running_loop()
        while pending:
            body, lines = pending[0]
            started = time.perf_counter()
            try:
                # The executor, not to_thread: append needs no context variables.
                await loop.run_in_executor(None, append, hour_file(self._root, tenant), body)
            except OSError as exc:
                self._observe(tenant, lines, time.perf_counter() - started, False)
                return Failure(describe(exc))
            self._observe(tenant, lines, time.perf_counter() - started, True)
            self._counts.writes_ok += lines
            self._counts.flushes += 1
            pending.popleft()
        return None
