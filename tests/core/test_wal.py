"""The compiled core's write-ahead log, through its Python binding: replay, caps, errors,
group commit from threads. (Crash and corruption properties: `cargo test` in rust/src/wal/;
real-process crashes: test_e2e_wal.py.)"""

from __future__ import annotations

import selectors
import threading
from pathlib import Path

import pytest
from messages import RECEIVE_NS, batch_body, message
from tidegate import _core as core

Outcome = tuple[int, list[str], core.WalFull | core.WalUnavailable | None]


def open_wal(path: Path, max_bytes: int = 1 << 30) -> tuple[core.TenantBuffers, core.Wal]:
    buffers = core.TenantBuffers()
    return buffers, core.Wal(buffers, path, max_bytes=max_bytes)


def completions(wal: core.Wal, count: int) -> list[Outcome]:
    """The next `count` outcomes, waited for on the wakeup descriptor as the gateway does."""
    done: list[Outcome] = []
    with selectors.DefaultSelector() as selector:
        selector.register(wal.wakeup_fd(), selectors.EVENT_READ)
        while len(done) < count:
            assert selector.select(timeout=10), "no wakeup"
            done += wal.completed()
    assert len(done) == count, done
    return done


def outcome(wal: core.Wal, ticket: int) -> list[str]:
    """Waits for the submitted append `ticket`: its ready tenants, or its error raised."""
    [(done, ready, error)] = completions(wal, 1)
    assert done == ticket
    if error is not None:
        raise error
    return ready


def append(wal: core.Wal, batch: core.Batch) -> list[str]:
    """Submits the batch and waits for it to be logged and buffered."""
    ticket = wal.submit(batch)
    return outcome(wal, ticket) if ticket else []


def append_lines(wal: core.Wal, tenant: str, lines: bytes, line_count: int) -> bool:
    """Submits the lines and waits for them to be logged and buffered; False: they do not fit."""
    ticket = wal.submit_lines(tenant, lines, line_count)
    if ticket is None:
        return False
    outcome(wal, ticket)
    return True


def test_an_appended_batch_is_replayed_with_its_mark_after_reopening(tmp_path: Path) -> None:
    buffers, wal = open_wal(tmp_path)
    batch = core.parse_batch(
        batch_body(message(), message(tenant_id="beta"), message(tenant_id="")), RECEIVE_NS
    )
    assert append(wal, batch) == []
    assert batch.reasons() == [None, None, "INVALID_SCHEMA"]
    stored = buffers.depth()
    assert wal.stats()["appended_records"] == 2
    del wal  # closes: the checkpoint covers nothing, so everything stays

    buffers, wal = open_wal(tmp_path)
    counts, problems = wal.replay()
    assert (counts["records"], counts["lines"], problems) == (2, 2, [])
    assert buffers.depth() == stored
    for tenant in ("acme", "beta"):
        _, n = buffers.drain(tenant) or (b"", 0)
        buffers.settle(tenant, n)
    assert (buffers.take_delivered(), buffers.delivered_through) == ([1], 1)
    wal.checkpoint()
    assert wal.stats()["segments"] == 0
    wal.close()
    buffers, wal = open_wal(tmp_path)
    assert wal.replay()[0]["records"] == 0
    assert buffers.depth() == {}


def test_at_the_cap_an_append_raises_wal_full_and_stores_nothing(tmp_path: Path) -> None:
    buffers, wal = open_wal(tmp_path, max_bytes=100)
    assert append_lines(wal, "t", b"x" * 50 + b"\n", 1) is True
    with pytest.raises(core.WalFull) as raised:
        append_lines(wal, "t", b"y" * 50 + b"\n", 1)
    assert raised.value.detail == "write-ahead log is at its cap of 100 bytes"
    assert buffers.depth() == {"t": (1, 51)}
    assert buffers.total_bytes == 51


def test_lines_that_do_not_fit_the_buffers_are_not_logged(tmp_path: Path) -> None:
    buffers = core.TenantBuffers(max_bytes=10)
    wal = core.Wal(buffers, tmp_path)
    assert append_lines(wal, "t", b"x" * 20 + b"\n", 1) is False
    batch = core.parse_batch(batch_body(message()), RECEIVE_NS)
    assert append(wal, batch) == []
    assert batch.reasons() == ["BUFFER_FULL"]
    assert wal.stats()["appended_records"] == 0


def test_an_unusable_directory_raises_wal_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(core.WalUnavailable, match="cannot create"):
        core.Wal(core.TenantBuffers(), blocker / "wal")


def test_a_bad_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='sync must be "always" or "interval", not "never"'):
        core.Wal(core.TenantBuffers(), tmp_path, sync="never")


def test_appends_from_threads_share_fsyncs(tmp_path: Path) -> None:
    buffers, wal = open_wal(tmp_path)
    tickets: list[int | None] = []

    def produce(worker: int) -> None:
        for i in range(100):
            tickets.append(wal.submit_lines(f"t{worker % 2}", b"m v=%di %d\n" % (worker, i), 1))

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    done = completions(wal, 800)
    for t in threads:
        t.join()
    assert sorted(ticket for ticket, _, _ in done) == sorted(tickets)
    assert [error for _, _, error in done] == [None] * 800
    stats = wal.stats()
    assert stats["appended_records"] == stats["synced_records"] == 800
    assert stats["fsyncs"] == stats["groups"] <= 800
    assert sum(lines for lines, _ in buffers.depth().values()) == 800


def test_submitted_appends_complete_through_the_wakeup_descriptor(tmp_path: Path) -> None:
    buffers, wal = open_wal(tmp_path)
    batch = core.parse_batch(batch_body(message(), message(tenant_id="beta")), RECEIVE_NS)
    ticket = wal.submit(batch)
    lines_ticket = wal.submit_lines("gamma", b"m v=1i 1\n", 1)
    assert ticket and lines_ticket and ticket != lines_ticket
    assert wal.submit(core.parse_batch(batch_body(message(tenant_id="")), RECEIVE_NS)) == 0
    done = completions(wal, 2)
    assert sorted(done) == sorted([(ticket, [], None), (lines_ticket, [], None)])
    assert set(buffers.depth()) == {"acme", "beta", "gamma"}
    assert wal.completed() == []


def test_a_refused_submit_raises_at_once_and_stores_nothing(tmp_path: Path) -> None:
    buffers, wal = open_wal(tmp_path, max_bytes=10)
    with pytest.raises(core.WalFull):
        wal.submit(core.parse_batch(batch_body(message()), RECEIVE_NS))
    assert buffers.total_bytes == 0
    assert buffers.take_delivered() == [1]


def test_with_sync_interval_an_append_is_logged_and_buffered_at_once(tmp_path: Path) -> None:
    buffers = core.TenantBuffers(batch_size=2)
    wal = core.Wal(buffers, tmp_path, sync="interval")
    batch = core.parse_batch(
        batch_body(message(), message(), message(tenant_id="beta")), RECEIVE_NS
    )
    assert wal.append(batch) == ["acme"]
    assert wal.append_lines("gamma", b"m v=1i 1\n", 1) == []
    assert wal.completed() == []
    assert buffers.depth() == {
        "acme": (2, buffers.depth()["acme"][1]),
        "beta": (1, buffers.depth()["beta"][1]),
        "gamma": (1, 9),
    }
    stats = wal.stats()
    assert (stats["appended_records"], stats["groups"]) == (3, 2)
    stored = buffers.depth()
    wal.close()

    buffers = core.TenantBuffers(batch_size=2)
    wal = core.Wal(buffers, tmp_path, sync="interval")
    assert wal.replay()[0]["records"] == 3
    assert buffers.depth() == stored


def test_with_sync_interval_a_refused_append_raises_and_stores_nothing(tmp_path: Path) -> None:
    buffers = core.TenantBuffers()
    wal = core.Wal(buffers, tmp_path, sync="interval", max_bytes=10)
    with pytest.raises(core.WalFull):
        wal.append(core.parse_batch(batch_body(message()), RECEIVE_NS))
    with pytest.raises(core.WalFull):
        wal.append_lines("t", b"x" * 5 + b"\n", 1)
    assert buffers.total_bytes == 0
    assert buffers.take_delivered() == [1, 2]


def test_with_sync_always_an_append_at_once_is_refused(tmp_path: Path) -> None:
    buffers, wal = open_wal(tmp_path)
    with pytest.raises(ValueError, match='sync must be "interval"'):
        wal.append(core.parse_batch(batch_body(message()), RECEIVE_NS))
    with pytest.raises(ValueError, match='sync must be "interval"'):
        wal.append_lines("t", b"m v=1i 1\n", 1)
    assert buffers.total_bytes == 0
