"""Shell-tier fixtures: the gateway app in process on SQLite (app_gateway.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from app_gateway import AppGateway


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
