"""CPU accounting of the processes under load: seconds of CPU per 100k accepted messages."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (its own threads, not children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """CPU seconds of named processes between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
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
