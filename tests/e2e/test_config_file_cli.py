"""`tidegate serve|worker|migrate --config FILE` as real processes."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gateway import poll
from services import free_port
from tidegate_process import own_environment, tidegate


def toml(tmp_path: Path, text: str) -> Path:
    """A configuration file holding `text`."""
    path = tmp_path / "tidegate.toml"
    path.write_text(text)
    return path


def python_core_env() -> dict[str, str]:
    """A clean environment, on the Python core."""
    return {**own_environment(), "TIDEGATE_CORE": "python"}


def test_migrate_reads_its_data_dir_from_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, f"TIDEGATE_DATA_DIR = '{tmp_path / 'from-file'}'\n")
    done = tidegate(python_core_env(), "migrate", "--config", str(path))
    assert (done.returncode, done.stdout) == (0, '{"migrated": true, "backend": "sqlite"}\n')
    assert (tmp_path / "from-file" / "registry.sqlite3").exists()


@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_an_unknown_key_exits_2_naming_it_and_the_file(tmp_path: Path, command: str) -> None:
    path = toml(tmp_path, "TIDEGATE_WORKR_PORT = 9100\n")
    done = tidegate(python_core_env(), command, "--config", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"tidegate: configuration error: {path}: unknown setting 'TIDEGATE_WORKR_PORT' "
        "(did you mean TIDEGATE_WORKER_PORT?)\n"
    )


def healthy(url: str, proc: subprocess.Popen[bytes]) -> int:
    """GET /health's status, 0 while nothing answers (the process must still run)."""
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code
    except httpx.TransportError:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return 0


def run_until_healthy(env: dict[str, str], urls: list[str], *args: str) -> str:
    """Start `tidegate *args`, wait for /health at each of `urls`, stop it with SIGTERM; its
    output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidegate", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for url in urls:
            answer = functools.partial(healthy, url, proc)
            assert poll(answer, lambda code: code == 200, wait_s=30) == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    return out


def test_serve_takes_the_file_under_the_environment_and_the_flags(tmp_path: Path) -> None:
    port, ops_port = free_port(), free_port()
    path = toml(
        tmp_path,
        f"TIDEGATE_PORT = 1\nTIDEGATE_OPS_PORT = {ops_port}\nTIDEGATE_LOG_LEVEL = 'error'\n"
        f"TIDEGATE_DATA_DIR = '{tmp_path / 'data'}'\n",
    )
    env = {**python_core_env(), "TIDEGATE_PORT": str(port), "TIDEGATE_LOG_LEVEL": "error"}
    urls = [f"http://127.0.0.1:{p}" for p in (port, ops_port)]
    out = run_until_healthy(env, urls, "serve", "--config", str(path), "--log-level", "info")
    # The environment's port beat the file's 1; the flag's level beat both (info is logged).
    assert '"gateway_started"' in out
    assert (tmp_path / "data" / "registry.sqlite3").exists()


def test_worker_takes_the_file(tmp_path: Path) -> None:
    worker_port = free_port()
    path = toml(
        tmp_path,
        f"TIDEGATE_WORKER_PORT = {worker_port}\nNATS_URL = 'nats://127.0.0.1:{free_port()}'\n"
        f"TIDEGATE_DATA_DIR = '{tmp_path / 'data'}'\nTIDEGATE_MODE = 'nats'\n",
    )
    url = f"http://127.0.0.1:{worker_port}"
    out = run_until_healthy(python_core_env(), [url], "worker", "--config", str(path))
    assert (tmp_path / "data" / "registry.sqlite3").exists(), out
