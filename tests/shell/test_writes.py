"""http/writes.py: a response's writes of one event-loop step reach the socket as one send,
over a real socket, in order, and nothing queued is lost to a close or a half-close."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tidegate.http.writes import CoalescedWrites


async def _connected() -> tuple[asyncio.Transport, socket.socket, list[bytes]]:
    """A real transport over one end of a socket pair, its writes recorded; the other end."""
    ours, peer = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    sent: list[bytes] = []
    real_write = transport.write

    def write(data: Any) -> None:
        sent.append(bytes(data))
        real_write(data)

    transport.write = write  # type: ignore[method-assign]
    peer.setblocking(False)
    return transport, peer, sent


async def _read_all(peer: socket.socket) -> bytes:
    """What the peer receives until the other end closes (b"" on a reset); closes the peer."""
    loop = asyncio.get_running_loop()
    data = b""
    with peer:
        try:
            while chunk := await loop.sock_recv(peer, 65536):
                data += chunk
        except ConnectionResetError:
            return b""
    return data


def test_writes_of_one_step_are_one_send_in_order() -> None:
    async def run() -> tuple[list[bytes], bytes]:
        transport, peer, sent = await _connected()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        writes.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n")
        writes.write(b"{}")
        assert sent == []
        await asyncio.sleep(0)
        writes.write(b"next")
        await asyncio.sleep(0)
        writes.close()
        return sent, await _read_all(peer)

    sent, received = asyncio.run(run())
    head_and_body = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"
    assert sent == [head_and_body, b"next"]
    assert received == head_and_body + b"next"


def test_close_and_write_eof_send_what_is_queued_first() -> None:
    async def run(end: str) -> tuple[list[bytes], bytes]:
        transport, peer, sent = await _connected()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        writes.write(b"answer")
        getattr(writes, end)()
        if end == "write_eof":
            await asyncio.sleep(0)
            writes.close()
        return sent, await _read_all(peer)

    for end in ("close", "write_eof"):
        assert asyncio.run(run(end)) == ([b"answer"], b"answer")


def test_abort_drops_what_is_queued_and_the_rest_is_the_transports() -> None:
    async def run() -> tuple[list[bytes], bytes, bool]:
        transport, peer, sent = await _connected()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        assert writes.get_extra_info("socket") is transport.get_extra_info("socket")
        writes.write(b"dropped")
        writes.abort()
        await asyncio.sleep(0)
        return sent, await _read_all(peer), writes.is_closing()

    assert asyncio.run(run()) == ([], b"", True)
