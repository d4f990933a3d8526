"""Per-connection limits (http/limits.py) and client disconnects, against a real `tidegate
serve` process driven over raw sockets: the limits on both listeners (one smoke test; each
limit's behaviour is tested on a fake transport in tests/shell/test_connection_limits.py), a
client gone mid-body, and the process's peak RSS (VmHWM) under a huge head and a slowloris of
stalled bodies."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gateway import GatewayProcess, poll
from ingest_calls import HOLD
from ingest_calls import batch_head as head
from tidegate.config import Config

Start = Callable[..., GatewayProcess]
MIB = 1 << 20


def connect(gw: GatewayProcess) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def read_answer(sock: socket.socket) -> tuple[int | None, bytes]:
    """(status, body) of the one answer before the server closes; (None, b"") when the
    connection was reset or closed without one."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, b""
    return int(data[9:12]), data.partition(b"\r\n\r\n")[2]


def peak_rss_kib(gw: GatewayProcess) -> int:
    return _status_kib(gw, "VmHWM")


def rss_kib(gw: GatewayProcess) -> int:
    return _status_kib(gw, "VmRSS")


def _status_kib(gw: GatewayProcess, field: str) -> int:
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{gw.proc.pid}/status")


def test_a_143_mib_header_line_costs_at_most_the_cap_plus_one_read(gateway: Start) -> None:
    gw = gateway(HOLD)
    baseline = rss_kib(gw)
    sent = 0
    with connect(gw) as sock:
        sock.sendall(b"POST /ingest/v1/batch HTTP/1.1\r\nX-Huge: ")
        chunk = b"a" * MIB
        try:
            while sent < 143 * MIB:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _body = read_answer(sock)
    # The server reads and drops what follows its answer for a moment (lingering close), so
    # the client usually reads the 431; one still sending after that sees a reset.
    assert status in (431, None)
    grown = peak_rss_kib(gw) - baseline
    print(f"143 MiB head line: {sent} bytes sent, answer {status}, peak RSS +{grown} KiB")
    assert grown < 16 * 1024, f"peak RSS grew {grown} KiB"
    assert gw.stats()["limits_hit"] == {"max_header_bytes": 1}
    assert gw.client().get("/health").status_code == 200


def test_both_listeners_of_a_real_process_apply_the_limits_and_count_them(
    gateway: Start,
) -> None:
    # The smoke test of the protocol under uvicorn: `serve` wires it on both listeners. Each
    # limit's behaviour: tests/shell/test_connection_limits.py, on a fake transport.
    gw = gateway({**HOLD, "TIDEGATE_HEADER_TIMEOUT_S": "1", "TIDEGATE_MAX_HEADER_BYTES": "4096"})
    with connect(gw) as sock:
        sock.sendall(head(2, "X-Pad: " + "a" * 1000) + b"{}")
        status, _ = read_answer(sock)
    assert status == 400  # the body's fault, not the head's
    host, port = gw.ops_url.removeprefix("http://").split(":")
    with (
        connect(gw) as public,
        socket.create_connection((host, int(port)), timeout=30) as idle,
        socket.create_connection((host, int(port)), timeout=30) as big,
    ):
        public.sendall(head(2, "X-Pad: " + "a" * 9000) + b"{}")
        big.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"x" * 8192 + b"\r\n\r\n")
        answers = [read_answer(public), read_answer(idle), read_answer(big)]
    too_large = {"detail": "request head exceeds the limit of 4096 bytes"}
    assert [(s, json.loads(b)) for s, b in answers] == [
        (431, too_large),
        (408, {"detail": "request head not received within 1 s"}),
        (431, too_large),
    ]
    assert gw.stats()["limits_hit"] == {"header_timeout": 1, "max_header_bytes": 2}
    assert 'tidegate_connection_limit_total{limit="max_header_bytes"} 2.0' in gw.metrics()


def test_a_client_gone_mid_body_is_counted_and_logged_once_without_a_traceback(
    gateway: Start,
) -> None:
    gw = gateway(HOLD)
    with connect(gw) as sock:
        sock.sendall(head(1000) + b'{"messages":[')
        time.sleep(0.3)
    stats = poll(gw.stats, until=lambda s: s["client_disconnects"])
    assert stats["client_disconnects"] == {"batch": 1}
    assert 'tidegate_client_disconnects_total{route="batch"} 1.0' in gw.metrics()
    log = gw.logs()
    assert log.count('"event":"client_disconnected"') == 1
    assert '"level":"info"' in next(
        line for line in log.splitlines() if "client_disconnected" in line
    )
    assert "Traceback" not in log
    assert '"level":"error"' not in log


# The slowloris: 150 connections each send all but 4 KiB of a 1 MiB body, then stall.
SLOW_CONNECTIONS = 150
SLOW_BODY = MIB - 4096


@pytest.mark.parametrize("max_requests", [32, Config().max_requests])
def test_slowloris_of_stalled_bodies_is_cut_and_memory_stays_bounded(
    gateway: Start, max_requests: int
) -> None:
    """Bound: the requests in progress hold at most `max_requests` bodies (each read once into
    the route's chunks and once into uvicorn's buffer as it passes), so the peak RSS may grow
    by 2 x `max_requests` MiB plus 32 MiB of allocator slack, whatever 150 connections send."""
    gw = gateway(
        {
            **HOLD,
            "TIDEGATE_BODY_TIMEOUT_S": "3",
            "TIDEGATE_MAX_REQUESTS": str(max_requests),
        }
    )
    baseline = rss_kib(gw)
    outcomes: list[int | None] = []
    lock = threading.Lock()

    def slow_client() -> None:
        with connect(gw) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head(MIB) + b" " * SLOW_BODY)
            status, _ = read_answer(sock)
        with lock:
            outcomes.append(status)

    started = time.monotonic()
    threads = [threading.Thread(target=slow_client) for _ in range(SLOW_CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert len(outcomes) == SLOW_CONNECTIONS, "some connections stayed open"
    assert set(outcomes) <= {408, 503, None}, outcomes
    limits = poll(
        gw.stats,
        until=lambda s: sum(s["limits_hit"].values()) >= SLOW_CONNECTIONS,
    )["limits_hit"]
    assert limits["body_timeout"] + limits.get("max_requests", 0) == SLOW_CONNECTIONS
    assert limits["body_timeout"] >= 1
    grown = peak_rss_kib(gw) - baseline
    bound = (2 * max_requests + 32) * 1024
    print(f"slowloris: peak RSS +{grown} KiB (bound {bound} KiB), {elapsed:.1f} s, {limits}")
    assert grown < bound, f"peak RSS grew {grown} KiB, bound {bound} KiB"
    assert gw.client().get("/health").status_code == 200
