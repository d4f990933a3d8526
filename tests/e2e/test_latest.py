"""telemetry_latest's writer: dirty devices go to device_state in one upsert, a failed write
keeps them for the next, and the newest received row wins whatever order writes arrive in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from messages import RECEIVE_NS, load_core
from tidegate.config import Config
from tidegate.latest import LatestWriter
from tidegate.store import open_registry
from tidegate.store.device_state import StateRow


def accepted_batch(core: Any, device: str, seq: int, receive_ns: int) -> Any:
    message = {
        "tenant_id": "t1",
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": "tok",
        "site_id": "s1",
        "seq": seq,
        "metrics": {"temp": 20 + seq},
    }
    batch = core.parse_batch(json.dumps({"messages": [message]}).encode(), receive_ns)
    batch.resolve([(count, None) for *_, count in batch.groups()])
    return batch


class FailingOnce:
    """A device_state store whose first upsert fails."""

    def __init__(self) -> None:
        self.calls: list[list[StateRow]] = []

    async def upsert(self, rows: Sequence[StateRow]) -> None:
        self.calls.append(list(rows))
        if len(self.calls) == 1:
            raise ConnectionError("database went away")

    async def views(self, tenant_id: str, device_ids: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_a_failed_write_keeps_the_devices_for_the_next(impl: str) -> None:
    core = load_core(impl)
    latest = core.Latest()
    store = FailingOnce()
    writer = LatestWriter(latest, store, 3600)
    latest.record(accepted_batch(core, "d1", 1, RECEIVE_NS))

    async def run() -> list[bool]:
        return [await writer.flush(), await writer.flush(), await writer.flush()]

    assert asyncio.run(run()) == [False, True, True]
    assert [[row[:5] for row in call] for call in store.calls] == [
        [("t1", "d1", "telemetry", RECEIVE_NS, 1)],
        [("t1", "d1", "telemetry", RECEIVE_NS, 1)],
    ]
    assert (writer.upserts, writer.rows_written, writer.failures) == (1, 1, 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_device_state_keeps_the_newest_received_row(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    cfg = Config(database_url=url, data_dir=tmp_path)
    core = load_core("rust")
    newer, older = core.Latest(), core.Latest()
    newer.record(accepted_batch(core, "d1", 2, RECEIVE_NS + 10))
    older.record(accepted_batch(core, "d1", 1, RECEIVE_NS))

    async def run() -> Any:
        reg = await open_registry(cfg)
        try:
            await reg.migrate()
            await reg.add_device("t1", "d1", "s1", token="tok")
            await LatestWriter(newer, reg.device_state, 3600).flush()
            await LatestWriter(older, reg.device_state, 3600).flush()  # arrives late
            return await reg.device_state.views("t1", ["d1", "d2"])
        finally:
            await reg.close()

    views = asyncio.run(run())
    assert list(views) == ["d1"]
    assert views["d1"].latest == ("telemetry", RECEIVE_NS + 10, 2, '{"temp":22.0}', RECEIVE_NS + 10)


class Slow:
    """A device_state store whose upserts take a while."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stored: list[StateRow] = []

    async def upsert(self, rows: Sequence[StateRow]) -> None:
        self.started.set()
        await asyncio.sleep(0.2)
        self.stored.extend(rows)

    async def views(self, tenant_id: str, device_ids: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError


def test_stop_lets_a_write_under_way_finish() -> None:
    core = load_core("rust")
    latest = core.Latest()
    latest.record(accepted_batch(core, "d1", 1, RECEIVE_NS))

    async def run() -> list[StateRow]:
        store = Slow()
        writer = LatestWriter(latest, store, 0.01)
        writer.start()
        await store.started.wait()
        await writer.stop()
        return store.stored

    assert [row[:2] for row in asyncio.run(run())] == [("t1", "d1")]
