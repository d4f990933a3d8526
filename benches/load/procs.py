"""CPU accounting of the processes under load: seconds of CPU per 100k accepted messages."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


# A process, or one of its threads: (pid, thread id).
Source = int | tuple[int, int]


def cpu_seconds(source: Source) -> float:
    """User + system CPU seconds a process has used so far (its own threads, not children), or
    one of its threads."""
    pid, thread = (source, None) if isinstance(source, int) else source
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """CPU seconds of named processes (or threads) between `start()` and `stop()`."""

    def __init__(self, pids: Mapping[str, Source]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        """Take the starting readings."""
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """CPU seconds each process used since `start()`."""
        self.used = {
            name: round(cpu_seconds(pid) - self._start[name], 2) for name, pid in self.pids.items()
        }
        return self.used

    def per_100k(self, messages: int) -> dict[str, float]:
        """CPU seconds per 100,000 messages, per process."""
        if messages <= 0:
            return {}
        return {name: round(used * 100_000 / messages, 3) for name, used in self.used.items()}
