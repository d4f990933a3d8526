"""One socket write per response: uvicorn writes a response's head and its body with two
`transport.write` calls, and each is a `send()` system call of its own. Under load those calls
are a large share of a request's time (the kernel does the loopback delivery inline), so the
protocol (http/limits.py) hands uvicorn this transport instead: what is written in one step of
the event loop is sent at the end of that step, once, by `writelines` (uvloop: one `writev`, the
pieces not joined into a copy first). The data and its order are unchanged; closing,
half-closing and aborting see every earlier write first.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites:
    """`transport` with its writes of one event-loop step sent as one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue `data`; the step's writes go out together when it ends."""
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Send what is queued now."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if not self._transport.is_closing():
            self._transport.writelines(pending)

    def write_eof(self) -> None:
        """Half-close after what is queued."""
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Close after what is queued (the transport sends its own buffer first)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Drop what is queued with the connection."""
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, get_extra_info, pause_reading, set_protocol, ...) is the
        # transport's own.
        return getattr(self._transport, name)
