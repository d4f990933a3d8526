"""Line-protocol files: the embedded sink's target, stop spills and dead letters all append
to them (the core's `append_file`) under a lock that replay honours."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import time
from datetime import UTC, datetime
from pathlib import Path

from tidegate._core import FileAppender
from tidegate.sink.target import Counts, Failure, FlushHook, Pending, database, describe


def hour_file(root: Path, tenant: str) -> Path:
    """`root/telemetry_{tenant}/<UTC hour>.lp`: the file a tenant's lines go to now."""
    return _hour_file(root, tenant, int(time.time()) // 3600)


# A saturated sink appends hundreds of times a second, to the same few files for an hour.
@functools.lru_cache(maxsize=1024)
def _hour_file(root: Path, tenant: str, hour: int) -> Path:
    return root / database(tenant) / f"{datetime.fromtimestamp(hour * 3600, UTC):%Y-%m-%dT%H}.lp"


def wait_for_appends(path: Path) -> None:
    """Return once no append (`_core.append_file`) that opened `path` before it was renamed is
    still writing."""
    with path.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)


class FileTarget:
    """Embedded sink: each body appended to `<root>/telemetry_{tenant}/<UTC hour>.lp` by the
    core's FileAppender thread, which never takes the interpreter from the event loop (an
    executor thread takes it at every step: a saturated default run appends ~500 times a
    second). Built on the running loop; `close()` stops the thread."""

    # A file takes a body of any size. One delivery costs the event loop a turn (and a thread
    # hop), and a loop saturated by large requests turns slowly: a drain of InfluxDB's body
    # size (5,000 lines) per turn fell behind 5,000-line requests; one of everything buffered
    # (the buffers' caps bound it) does not.
    body_lines = 1 << 30

    def __init__(self, root: Path, counts: Counts, observe: FlushHook) -> None:
        self._root = root
        self._counts = counts
        self._observe = observe
        self._loop = asyncio.get_running_loop()
        self._appender: FileAppender | None = FileAppender()
        self._loop.add_reader(self._appender.wakeup_fd(), self._appended, self._appender)

    async def deliver(self, tenant: str, pending: Pending) -> Failure | None:
        """Append the pending pieces; an OSError (disk full, ...) is retried later."""
        appender = self._appender
        assert appender is not None, "FileTarget.close() was called"
        while pending:
            body, lines = pending[0]
            started = time.perf_counter()
            appended: asyncio.Future[None] = self._loop.create_future()
            appender.submit(appended, hour_file(self._root, tenant), body)
            try:
                await appended
            except OSError as exc:
                self._observe(tenant, lines, time.perf_counter() - started, False)
                return Failure(describe(exc))
            self._observe(tenant, lines, time.perf_counter() - started, True)
            self._counts.writes_ok += lines
            self._counts.flushes += 1
            pending.popleft()
        return None

    def close(self) -> None:
        """Stop the appender's thread (after the append in hand); the sink has stopped, so no
        delivery waits for it."""
        appender, self._appender = self._appender, None
        if appender is not None:
            self._loop.remove_reader(appender.wakeup_fd())
            appender.close()

    @staticmethod
    def _appended(appender: FileAppender) -> None:
        for waiter, error in appender.completed():
            if not isinstance(waiter, asyncio.Future) or waiter.done():
                continue  # its delivery was cancelled (stop's deadline): the body was put back
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
