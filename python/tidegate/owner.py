"""One process owns a data directory: an exclusive flock on `data_dir/tidegate.lock`.

A gateway's write-ahead log, its live segment, the LP files, spill and dead-letter files are
written by one process only: a second `serve` or `worker` on the same directory (a systemd
restart overlap, a mistyped unit) would replay the live log and delete segments the first is
still writing. The lock is taken before anything opens the directory's files and held until
the process exits (the kernel drops it then, even on SIGKILL, so a stale file never blocks a
restart). The file says who holds it, for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

LOCK_FILE = "tidegate.lock"


class Locked(Exception):
    """The directory is owned by another running process (the message names it)."""


def claim(data_dir: Path, command: str) -> int:
    """Take the directory's lock for this process (`command`: serve or worker); its file
    descriptor, to keep open for the process's life. Raises Locked when another process
    holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"
        os.close(fd)
        raise Locked(f"data directory {data_dir} is locked by {holder} ({path})") from None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    argv = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} `{command}`, started {started}, argv {argv!r}\n".encode(), 0)
    return fd
