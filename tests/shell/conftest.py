"""Shell-tier fixtures: the gateway app in process on SQLite (app_gateway.py), and no network:
a test of this tier that connects or listens on an IP socket fails (its place is tests/e2e)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from app_gateway import AppGateway


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """IP sockets may not connect or bind (socket pairs, as the event loop's, still work)."""

    def refuse(name: str) -> Callable[..., Any]:
        real = getattr(socket.socket, name)

        def guarded(self: socket.socket, *args: Any) -> Any:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                raise AssertionError(f"the shell tier opens no network socket ({name} {args})")
            return real(self, *args)

        return guarded

    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(name))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., AppGateway]]:
    """Factory: `gateway(env)` starts the app in process; every one still running at teardown
    is shut down and must lose nothing (as tests/e2e's processes must exit 0)."""
    started: list[AppGateway] = []

    def start(env: dict[str, str] | None = None, name: str = "gw") -> AppGateway:
        gw = AppGateway(env or {}, tmp_path / f"{name}{len(started)}")
        started.append(gw)
        return gw

    yield start
    assert [gw.stop() for gw in started] == [0] * len(started)
