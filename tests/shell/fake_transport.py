"""The connection-limits protocol (http/limits.py) without sockets, as uvicorn tests its own
protocols: a transport that records what is written and a loop whose clock the test moves.
Requests are raw bytes fed to the protocol; the gateway's app answers them on the running loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn
from tidegate.http import limits
from tidegate.http.gateway import Gateway
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["Connection", "FakeLoop", "FakeTransport", "Server", "settle"]

# Real seconds a test waits for the app to answer (a deadline for a slow machine).
SETTLE_S = 30.0


class FakeTransport:
    """The transport side of one connection: each write call is one send, kept in `sends`."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.eof = False
        self.closed = False
        self.reading = True

    @property
    def data(self) -> bytes:
        """Everything written so far."""
        return b"".join(self.sends)

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof, "written after close or half-close"
        self.sends.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:
        """One send of the pieces, as uvloop's `writev`."""
        assert not self.closed and not self.eof, "written after close or half-close"
        self.sends.append(b"".join(data))

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _Timer:
    """An asyncio.TimerHandle on the fake clock."""

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self._when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The running loop for tasks and call_soon (the app and the coalesced writes run for
    real); timers on a clock that moves only by `advance`."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.now = 0.0
        self.timers: list[_Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Timer:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> asyncio.Handle:
        return self._loop.call_soon(callback, *args)

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return self._loop.create_task(coro, **kwargs)

    async def advance(self, seconds: float) -> None:
        """Move the clock by `seconds`, firing the timers due on the way, in order."""
        target = self.now + seconds
        while due := [t for t in self.timers if not t.cancelled and t.when() <= target]:
            timer = min(due, key=_Timer.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when())
            timer.callback(*timer.args)
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    """Let the tasks and call_soon callbacks run."""
    for _ in range(50):
        await asyncio.sleep(0)


class Connection:
    """One client connection: bytes in through `send`, the protocol's writes in `transport`."""

    def __init__(self, protocol: HttpToolsProtocol, transport: FakeTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    async def send(self, data: bytes) -> None:
        """The bytes of one socket read."""
        self.protocol.data_received(data)
        await settle()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-case headers, body) of the first whole answer, waiting (in real time)
        for the app to write it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while True:
            data = self.transport.data
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode().split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in lines[1:])
                if len(body) >= int(headers.get("content-length", "0")):
                    return int(lines[0][9:12]), headers, body
            assert loop.time() < deadline, f"no whole answer: {data!r}"
            await asyncio.sleep(0.001)

    def close(self) -> None:
        """The client goes away."""
        self.protocol.connection_lost(None)


class Server:
    """The gateway app behind the limited protocol, as `tidegate serve` runs it (limits from
    the Config, hits counted in the gateway's metrics), on a fake loop."""

    def __init__(self, app: Any, loop: FakeLoop) -> None:
        gw: Gateway = app.state.gateway
        cfg = gw.cfg
        protocol = limits.protocol_class(limits.Limits.from_config(cfg, gw.metrics.limit_hit))
        self._protocol = protocol
        self._config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=cfg.keepalive_timeout_s,
        )
        self._config.load()
        self._state = ServerState()
        self._loop = loop

    def connect(self) -> Connection:
        """A new connection (the head deadline starts now)."""
        protocol = self._protocol(
            config=self._config,
            server_state=self._state,
            app_state={},
            _loop=self._loop,  # type: ignore[arg-type]
        )
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return Connection(protocol, transport)
