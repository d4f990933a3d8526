"""The gateway as a real process: `python -m tidegate serve` on a free port, driven over HTTP."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from provisioning import poll, provision, revoke
from services import free_port

__all__ = [
    "GatewayProcess",
    "gateway",
    "poll",
    "provision",
    "registry_env",
    "revoke",
    "run_gateway",
]
# provision, revoke and poll serve every tier (tests/provisioning.py); re-exported for the
# end-to-end tests, which know them from here.

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# Variables of the outer environment that would change what the gateway under test does.
_OWN_PREFIXES = ("TIDEGATE_", "INFLUX", "DATABASE_", "INGEST_", "NATS_")


@dataclass
class GatewayProcess:
    """A running gateway: its URL, environment, data dir and a log file of its stderr."""

    proc: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    log_path: Path
    clients: list[httpx.Client] = field(default_factory=list)
    # How clients check the public listener's certificate (TLS: the CA file the test made).
    verify: ssl.SSLContext | bool = True

    @property
    def data_dir(self) -> Path:
        """TIDEGATE_DATA_DIR of this gateway."""
        return Path(self.env["TIDEGATE_DATA_DIR"])

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on the gateway's base URL, closed at teardown."""
        c = httpx.Client(base_url=self.url, timeout=30.0, verify=self.verify, **kwargs)
        self.clients.append(c)
        return c

    @property
    def ops_url(self) -> str:
        """The ops listener (stats, metrics)."""
        return f"http://{self.env['TIDEGATE_OPS_HOST']}:{self.env['TIDEGATE_OPS_PORT']}"

    def stats(self) -> dict[str, Any]:
        """GET /ingest/v1/stats on the ops listener."""
        r = httpx.get(f"{self.ops_url}/ingest/v1/stats", timeout=10.0)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def metrics(self) -> str:
        """GET /metrics on the ops listener."""
        r = httpx.get(f"{self.ops_url}/metrics", timeout=10.0)
        r.raise_for_status()
        return r.text

    def logs(self) -> str:
        """Everything the gateway wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig`, wait for the exit and return the exit status."""
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"gateway did not exit {STOP_TIMEOUT_S}s after signal {sig}:\n{self.logs()}"
            ) from None


def run_gateway(
    env: Mapping[str, str],
    workdir: Path,
    command: str = "serve",
    python: str | None = None,
    ca: Path | None = None,
    args: Sequence[str] = (),
) -> GatewayProcess:
    """Start `python -m tidegate serve` (or `worker`: NATS mode's worker, whose ops listener
    is then the URL) with `env` over a clean base environment; wait until /health answers.
    The default data dir is `workdir/data`; the port is a free one. `python`: another
    interpreter with its own tidegate installed (default: this one, with this tree's). `ca`:
    the public listener serves TLS, its certificate signed by this CA. `args`: the command's
    flags."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    own = [] if python else [str(PYTHON_DIR)]
    full["PYTHONPATH"] = os.pathsep.join(p for p in (*own, os.environ.get("PYTHONPATH", "")) if p)
    full["TIDEGATE_HOST"] = "127.0.0.1"
    full["TIDEGATE_PORT"] = str(free_port())
    full["TIDEGATE_WORKER_PORT"] = str(free_port())
    full["TIDEGATE_OPS_HOST"] = "127.0.0.1"
    full["TIDEGATE_OPS_PORT"] = str(free_port())
    full["TIDEGATE_DATA_DIR"] = str(workdir / "data")
    full["TIDEGATE_CORE"] = os.environ.get("TIDEGATE_CORE", "rust")
    full.update(env)
    workdir.mkdir(parents=True, exist_ok=True)
    port = full["TIDEGATE_WORKER_PORT" if command == "worker" else "TIDEGATE_PORT"]
    log_path = workdir / f"{command}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [python or sys.executable, "-m", "tidegate", command, *args],
            env=full,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    scheme = "https" if ca else "http"
    verify = ssl.create_default_context(cafile=ca) if ca else True
    gw = GatewayProcess(proc, f"{scheme}://127.0.0.1:{port}", full, log_path, verify=verify)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode} at start:\n{gw.logs()}")
        try:
            if httpx.get(f"{gw.url}/health", timeout=1.0, verify=verify).status_code == 200:
                return gw
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            gw.stop(signal.SIGKILL)
            raise AssertionError(f"gateway did not answer /health in time:\n{gw.logs()}")
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The registry backend: SQLite under the data dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("postgres_url")
    return {"DATABASE_URL": url}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: `gateway(env)` starts a gateway process; every one still running at teardown
    is stopped with SIGTERM and must exit 0."""
    started: list[GatewayProcess] = []

    def start(env: Mapping[str, str] | None = None, name: str = "gw") -> GatewayProcess:
        gw = run_gateway(env or {}, tmp_path / f"{name}{len(started)}")
        started.append(gw)
        return gw

    yield start
    failures = []
    for gw in started:
        if gw.proc.poll() is None:
            code = gw.stop()
            if code != 0:
                failures.append(f"gateway {gw.url} exited {code}:\n{gw.logs()}")
    assert not failures, "\n".join(failures)
