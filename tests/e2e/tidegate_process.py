"""The `tidegate` command as a process, in an environment free of the outer one's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"
# Variables of the outer environment that would change what the command under test does.
_OWN_PREFIXES = ("TIDEGATE_", "INFLUX", "DATABASE_", "INGEST_", "NATS_")


def own_environment() -> dict[str, str]:
    """The outer environment without tidegate's variables, with this package importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PYTHON_DIR), env.get("PYTHONPATH")]))
    return env


def tidegate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `tidegate *args` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
