"""Per-connection limits (http/limits.py) on a fake transport and clock: raw bytes in, the
answer written, the deadlines moved by hand, and what the gateway counts. The same limits on a
real process, and its memory under a huge head and a slowloris: tests/e2e/test_limits.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_gateway import started
from fake_transport import Connection, FakeLoop, Server, settle
from ingest_calls import HOLD
from ingest_calls import batch_head as head
from tidegate.config import Config
from tidegate.http.app import App, create_app
from tidegate.http.limits import LINGER_S

MIB = 1 << 20
Body = Callable[[Server, FakeLoop, App], Awaitable[None]]


def run(tmp_path: Path, env: dict[str, str], body: Body) -> None:
    """`body(server, loop, app)` with the gateway app of `env` started, on SQLite."""
    cfg = Config.from_env(
        {
            "TIDEGATE_DATA_DIR": str(tmp_path / "data"),
            "TIDEGATE_CORE": os.environ.get("TIDEGATE_CORE", "rust"),
            **HOLD,
            **env,
        }
    )
    app = create_app(cfg)

    async def go() -> None:
        async with started(app):
            loop = FakeLoop()
            await body(Server(app, loop), loop, app)

    asyncio.run(go())


async def ops_get(app: App, path: str) -> httpx.Response:
    """GET `path` on the ops listener's app."""
    transport = httpx.ASGITransport(app=app.state.ops_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as c:
        return await c.get(path)


async def stats(app: App) -> dict[str, Any]:
    """/ingest/v1/stats of the ops listener."""
    out: dict[str, Any] = (await ops_get(app, "/ingest/v1/stats")).json()
    return out


async def get_health(conn: Connection) -> None:
    """A first request that ends in time: GET /health answered 200."""
    await conn.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await conn.answer()
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    conn.transport.sends.clear()


def test_head_over_the_cap_is_431_and_a_head_under_it_passes(tmp_path: Path) -> None:
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        under = server.connect()
        await under.send(head(2, "X-Pad: " + "a" * 7000) + b"{}")
        status, _, _ = await under.answer()
        assert status == 400  # the body's fault, not the head's
        over = server.connect()
        await over.send(head(2, "X-Pad: " + "a" * 9000) + b"{}")
        status, headers, answer = await over.answer()
        assert (status, json.loads(answer)) == (
            431,
            {"detail": "request head exceeds the limit of 8192 bytes"},
        )
        assert (headers["connection"], headers["content-type"]) == ("close", "application/json")
        assert (await stats(app))["limits_hit"] == {"max_header_bytes": 1}
        metrics = (await ops_get(app, "/metrics")).text
        assert 'tidegate_connection_limit_total{limit="max_header_bytes"} 1.0' in metrics

    run(tmp_path, {"TIDEGATE_MAX_HEADER_BYTES": "8192"}, body)


def test_a_head_arriving_in_reads_is_cut_at_the_cap_plus_one_read(tmp_path: Path) -> None:
    # A 143 MiB header line: refused once the head passes the cap; what follows is dropped
    # unread by the parser, so the head never holds more than the cap plus one read.
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        conn = server.connect()
        fed: list[int] = []
        parser = conn.protocol.parser

        class Counted:
            def feed_data(self, data: bytes) -> None:
                fed.append(len(data))
                parser.feed_data(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(parser, name)

        conn.protocol.parser = Counted()  # type: ignore[assignment]
        await conn.send(b"POST /ingest/v1/batch HTTP/1.1\r\nX-Huge: ")
        for _ in range(143):
            await conn.send(b"a" * MIB)
        status, headers, answer = await conn.answer()
        cap = Config().max_header_bytes
        assert (status, json.loads(answer)) == (
            431,
            {"detail": f"request head exceeds the limit of {cap} bytes"},
        )
        assert headers["connection"] == "close"
        assert sum(fed) <= cap + MIB, fed
        assert len(fed) == 2
        # Lingering close: the write side is shut at once, the connection after LINGER_S.
        assert (conn.transport.eof, conn.transport.closed) == (True, False)
        await loop.advance(LINGER_S)
        assert conn.transport.closed
        assert (await stats(app))["limits_hit"] == {"max_header_bytes": 1}

    run(tmp_path, {}, body)


def test_an_idle_connection_and_a_trickled_head_get_408(tmp_path: Path) -> None:
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        idle, slow = server.connect(), server.connect()
        await slow.send(b"POST /ingest/v1/batch HTTP/1.1\r\nHost: t")
        await loop.advance(0.99)
        assert (idle.transport.sends, slow.transport.sends) == ([], [])
        await loop.advance(0.01)
        detail = {"detail": "request head not received within 1 s"}
        for conn in (idle, slow):
            status, _, answer = await conn.answer()
            assert (status, json.loads(answer)) == (408, detail)
        assert (await stats(app))["limits_hit"] == {"header_timeout": 2}

    run(tmp_path, {"TIDEGATE_HEADER_TIMEOUT_S": "1"}, body)


def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        conn = server.connect()
        await get_health(conn)
        await loop.advance(0.99)
        assert not conn.transport.closed
        await loop.advance(0.01)
        assert conn.transport.closed
        assert conn.transport.sends == []  # closed by the server, no second answer

    run(tmp_path, {"TIDEGATE_KEEPALIVE_TIMEOUT_S": "1"}, body)


def test_a_stalled_body_gets_408_and_is_counted_on_its_route(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        conn = server.connect()
        await conn.send(head(1000) + b'{"messages":[')
        await loop.advance(0.99)
        assert conn.transport.sends == []
        await loop.advance(0.01)
        status, _, answer = await conn.answer()
        assert (status, json.loads(answer)) == (
            408,
            {"detail": "request body not received within 1 s"},
        )
        for _ in range(1000):
            if (await stats(app))["responses"].get("batch 408"):
                break
            await asyncio.sleep(0.01)
        now = await stats(app)
        assert now["responses"]["batch 408"] == 1
        assert now["limits_hit"] == {"body_timeout": 1}
        assert now["client_disconnects"] == {}

    with caplog.at_level(logging.DEBUG):
        run(tmp_path, {"TIDEGATE_BODY_TIMEOUT_S": "1"}, body)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_each_request_of_a_connection_gets_its_own_deadlines(tmp_path: Path) -> None:
    # The protocol moves its one timer only when a deadline comes sooner: a timer set for an
    # earlier deadline re-arms itself, a stale one does nothing.
    async def stall_body(conn: Connection, loop: FakeLoop) -> None:
        """A stalled body gets its 408 two seconds after its head, not before."""
        await conn.send(head(1000) + b'{"messages":[')
        await loop.advance(1.99)
        assert conn.transport.sends == []
        await loop.advance(0.01)
        status, _, answer = await conn.answer()
        assert (status, json.loads(answer)) == (
            408,
            {"detail": "request body not received within 2 s"},
        )

    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        late_in_head = server.connect()
        # The connection's head deadline passes while the body deadline runs.
        await loop.advance(0.5)
        await stall_body(late_in_head, loop)
        kept_alive = server.connect()
        # A second request after a first one that ended in time.
        await get_health(kept_alive)
        await loop.advance(1.5)
        await stall_body(kept_alive, loop)
        assert (await stats(app))["limits_hit"] == {"body_timeout": 2}

    env = {"TIDEGATE_HEADER_TIMEOUT_S": "1", "TIDEGATE_BODY_TIMEOUT_S": "2"}
    run(tmp_path, env, body)


def test_connections_and_requests_beyond_their_caps_get_503(tmp_path: Path) -> None:
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        first, second = server.connect(), server.connect()
        await first.send(head(1000) + b"{")  # one request in progress, body pending
        third = server.connect()
        await third.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, answer = await third.answer()
        assert (status, json.loads(answer), headers["retry-after"]) == (
            503,
            {"detail": "too many open connections (limit 2); retry later"},
            "1",
        )
        third.close()
        await second.send(head(2) + b"{}")
        status, headers, answer = await second.answer()
        assert (status, json.loads(answer), headers["retry-after"]) == (
            503,
            {"detail": "too many requests in progress (limit 1); retry later"},
            "1",
        )
        assert (await stats(app))["limits_hit"] == {"max_connections": 1, "max_requests": 1}
        first.close()
        await settle()

    run(tmp_path, {"TIDEGATE_MAX_CONNECTIONS": "2", "TIDEGATE_MAX_REQUESTS": "1"}, body)


def test_a_response_is_one_send_and_a_refusal_is_sent_before_the_half_close(
    tmp_path: Path,
) -> None:
    # uvicorn writes a head and a body: the coalesced writes (http/writes.py) make them one.
    async def body(server: Server, loop: FakeLoop, app: App) -> None:
        conn = server.connect()
        await conn.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        await conn.answer()
        [response] = conn.transport.sends
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.endswith(b'{"status":"ok"}')
        idle = server.connect()
        await loop.advance(Config().header_timeout_s)
        [refusal] = idle.transport.sends
        assert refusal.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert idle.transport.eof

    run(tmp_path, {}, body)


def test_a_body_reads_the_same_in_one_piece_in_pieces_and_chunked(tmp_path: Path) -> None:
    # The protocol keeps a body's first piece as it came (http/limits.py, on_body); pieces
    # after it, read by the app in between or not, and chunked bodies must read the same.
    body = b'{"messages":[{"device_id":"a"},{"device_id":"b"},{"device_id":"c"}]}'
    pieces = [body[:20], body[20:45], body[45:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

    async def body_test(server: Server, loop: FakeLoop, app: App) -> None:
        answers = []
        for reads in (
            [head(len(body)) + body],
            [head(len(body)) + pieces[0], pieces[1], pieces[2]],
            [head(None, "Transfer-Encoding: chunked") + chunked[:30], chunked[30:]],
        ):
            conn = server.connect()
            for data in reads:
                await conn.send(data)
            answers.append(await conn.answer())
        conn = server.connect()
        # Every piece in before the app reads any: they are joined.
        conn.protocol.data_received(head(len(body)) + pieces[0])
        for piece in pieces[1:]:
            conn.protocol.data_received(piece)
        await settle()
        answers.append(await conn.answer())
        status, _, first = answers[0]
        assert status == 400
        assert [len(json.loads(a)["results"]) for *_, a in answers] == [3, 3, 3, 3]
        assert [(s, a) for s, _, a in answers] == [(status, first)] * 4

    run(tmp_path, {}, body_test)
