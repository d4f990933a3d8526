"""The README's quick start and docs/api.md's examples, run with bash as a user pastes them.

Only the build step differs: the blocks say `make run`, which would build into a venv of its
own; here `.venv/bin/tidegate` is a launcher of the package under test and `make run` becomes
`.venv/bin/tidegate serve` (what `make run` runs once built). Everything else runs as written,
in a fresh directory (so a fresh `./tidegate-data`) with free ports through the variables the
blocks read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from services import free_port

# The checkout: the nearest directory above with pyproject.toml (whichever tier holds this file).
ROOT = next(d for d in Path(__file__).resolve().parents if (d / "pyproject.toml").is_file())
# Variables of the outer environment that would change what the gateway under test does.
_OWN_PREFIXES = ("TIDEGATE_", "INFLUX", "DATABASE_", "INGEST_", "NATS_")
_BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
# How the user stops the gateway the quick start left running (README says so).
_STOP = "kill %1\nwait\n"
_RUN = "make run"
_SERVE = ".venv/bin/tidegate serve"


def bash_blocks(markdown: str) -> list[str]:
    """The ```bash blocks of a Markdown text, in order."""
    return _BASH_BLOCK.findall(markdown)


def quick_start() -> list[str]:
    """The bash blocks of the README's quick start, the build step replaced by the built
    gateway: the block that starts it and provisions and sends, then the ones that look."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    first, *rest = bash_blocks(section)
    assert first.count(_RUN) == 1, first
    return [first.replace(_RUN, _SERVE), *rest]


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A directory as a fresh clone has it after `make run` built: `.venv/bin/tidegate`."""
    launcher = tmp_path / ".venv" / "bin" / "tidegate"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m tidegate "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def pasted(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` with bash in `cwd` on free ports; whatever it started ends with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), env.get("PYTHONPATH")]))
    env["TIDEGATE_PORT"] = str(free_port())
    env["TIDEGATE_OPS_PORT"] = str(free_port())
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        # The gateway is in the script's session: a failed or hung run must not leave it behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_quick_start_runs_as_pasted_and_prints_an_accepted_batch(user_dir: Path) -> None:
    done = pasted("\n".join([*quick_start(), _STOP]), user_dir)
    assert (done.returncode, done.stderr) == (0, ""), done
    printed = done.stdout.splitlines()
    assert printed[:3] == [
        '{"status":"ready"}',
        '{"accepted":1,"rejected":0,"results":[{"index":0,"status":"accepted","device_id":"d1"}]}',
        "accepted 1 rejected {}",
    ]
    assert printed[3].startswith('tidegate_messages_total{outcome="accepted"'), printed
    assert (user_dir / "tidegate-data" / "registry.sqlite3").is_file()


def test_every_api_example_runs_as_pasted_after_the_quick_start(user_dir: Path) -> None:
    examples = bash_blocks((ROOT / "docs" / "api.md").read_text())
    done = pasted("\n".join([*quick_start(), *examples, _STOP]), user_dir)
    assert (done.returncode, done.stderr) == (0, ""), done
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    # Each example's first answer, in the page's order.
    batch = next(a for a in answers if a.get("rejected") == 3)
    assert [r.get("reason") for r in batch["results"]] == [
        None,
        "INVALID_METRICS",
        "SITE_MISMATCH",
        "UNAUTHORIZED",
    ]
    assert {"status": "accepted"} in answers
    assert {
        "detail": "a valid X-Provision-Token header is required for this device",
        "reason": "UNAUTHORIZED",
    } in answers
    latest = next(a for a in answers if a.get("resource_type") == "telemetry_latest")
    assert latest["total_succeeded"] == 1
    admin = next(a for a in answers if "results" in a and a.get("total_requested") == 3)
    assert [r["status_code"] for r in admin["results"]] == [201, 200, 404]
    shelly = next(a for a in answers if "inserted" in a)
    assert (shelly["inserted"], shelly["errors"]) == (1, 0)
    queue = next(a for a in answers if a.get("period") == "24h")
    assert queue["total_logs"] == 1
    assert "tidegate_messages_total" in done.stdout
