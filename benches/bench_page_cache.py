"""What a log record's write costs the kernel, by what the file under it holds: CPU time per
30 KB write (a 100-message request's records) into a 64 MiB segment, an fdatasync every 300
writes, the layouts taking turns round by round.

    pytest benches/bench_page_cache.py --benchmark-enable    # the figures (printed at the end)
    pytest benches/bench_page_cache.py                        # as a test: one short round

`appended, preallocated` is a segment the writer had to create itself (blocks allocated past the
end with `fallocate(KEEP_SIZE)`); `rewritten, cached` writes in place over the file's own earlier
bytes, first written in 1 MiB pieces, while their pages are still in the page cache: a spare
segment written whole with zeros, and every later life of its file; `rewritten, first appended`
does the same over a file first written in 30 KB appends (a recycled segment whose first life
was not a spare's).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEGMENT = 64 << 20
WRITE = 30_000
ROUNDS = 5
FALLOC_FL_KEEP_SIZE = 1

_libc = ctypes.CDLL(None, use_errno=True)


def appended(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)


def appended_preallocated(path: Path) -> int:
    fd = appended(path)
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(SEGMENT)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
    return fd


def rewritten(path: Path, keep_cached: bool, piece: int = 1 << 20) -> int:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    block = os.urandom(piece)
    for _ in range(SEGMENT // piece):
        os.write(fd, block)
    os.fsync(fd)
    if not keep_cached:
        os.posix_fadvise(fd, 0, SEGMENT, os.POSIX_FADV_DONTNEED)
    return fd


# Per layout: how its file is made, and whether records go in place from the start.
LAYOUTS: dict[str, tuple[Callable[[Path], int], bool]] = {
    "appended, preallocated": (appended_preallocated, False),
    "appended": (appended, False),
    "rewritten, cached": (lambda path: rewritten(path, keep_cached=True), True),
    "rewritten, first appended": (lambda path: rewritten(path, True, WRITE), True),
    "rewritten, not cached": (lambda path: rewritten(path, keep_cached=False), True),
}


def us_per_write(layout: tuple[Callable[[Path], int], bool], path: Path, writes: int) -> float:
    """CPU µs of one 30 KB write into a fresh file of the layout."""
    open_file, in_place = layout
    path.unlink(missing_ok=True)
    fd = open_file(path)
    data = os.urandom(WRITE)
    used = 0.0
    try:
        for i in range(writes):
            started = time.thread_time()
            if in_place:
                os.pwrite(fd, data, i * WRITE)
            else:
                os.write(fd, data)
            used += time.thread_time() - started
            if i % 300 == 299:
                os.fdatasync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return used / writes * 1e6


def test_what_a_write_costs_by_the_file_under_it(
    benchmark: Any, throughput: dict[str, Any], tmp_path: Path
) -> None:
    rounds, writes = (ROUNDS, SEGMENT // WRITE) if benchmark.enabled else (1, 300)

    def compare() -> dict[str, float]:
        us: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(rounds):
            for name, layout in LAYOUTS.items():
                us[name].append(us_per_write(layout, tmp_path / "segment", writes))
        return {name: round(statistics.median(values), 1) for name, values in us.items()}

    result = benchmark.pedantic(compare, rounds=1, iterations=1)
    assert all(value > 0 for value in result.values())
    if benchmark.enabled:
        benchmark.extra_info.update(result)
        throughput["page_cache"] = result
