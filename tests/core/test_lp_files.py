"""The compiled core's line-protocol file appends, through its Python binding: `append_file`
and the `FileAppender` thread the embedded sink uses. (The lock protocol against replay:
`cargo test` in rust/src/lp_files.rs and test_sink.py's replay tests.)"""

from __future__ import annotations

import errno
import selectors
from pathlib import Path

import pytest
from tidegate import _core as core


def outcomes(appender: core.FileAppender, count: int) -> list[tuple[object, OSError | None]]:
    """The next `count` outcomes, waited for on the descriptor as the sink's loop does."""
    done: list[tuple[object, OSError | None]] = []
    with selectors.DefaultSelector() as selector:
        selector.register(appender.wakeup_fd(), selectors.EVENT_READ)
        while len(done) < count:
            assert selector.select(timeout=10), "no wakeup"
            done += appender.completed()
    return done


def test_append_file_creates_the_directories_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "lp" / "telemetry_t1" / "2026-12-06T22.lp"
    core.append_file(path, b"m x=1 1\n")
    core.append_file(str(path), b"m x=2 2\n")
    assert path.read_bytes() == b"m x=1 1\nm x=2 2\n"


def test_append_file_raises_the_errnos_own_oserror_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "telemetry_t1").write_bytes(b"")  # a plain file where the directory goes
    path = tmp_path / "telemetry_t1" / "h.lp"
    with pytest.raises(NotADirectoryError) as raised:
        core.append_file(path, b"m x=1 1\n")
    assert raised.value.errno == errno.ENOTDIR
    assert raised.value.filename == str(path)


def test_the_appender_appends_in_order_and_hands_back_each_waiter(tmp_path: Path) -> None:
    appender = core.FileAppender()
    path = tmp_path / "telemetry_t1" / "h.lp"
    waiters = [object() for _ in range(200)]
    for n, waiter in enumerate(waiters):
        appender.submit(waiter, path, b"m x=%d %d\n" % (n, n))
    done = outcomes(appender, len(waiters))
    appender.close()
    assert [w for w, _ in done] == waiters
    assert all(error is None for _, error in done)
    assert path.read_bytes() == b"".join(b"m x=%d %d\n" % (n, n) for n in range(200))


def test_a_failed_append_comes_back_as_its_oserror_and_the_next_still_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "blocked").write_bytes(b"")
    appender = core.FileAppender()
    appender.submit("bad", tmp_path / "blocked" / "h.lp", b"x\n")
    appender.submit("good", tmp_path / "ok" / "h.lp", b"y\n")
    (bad, error), (good, fine) = outcomes(appender, 2)
    appender.close()
    assert (bad, good, fine) == ("bad", "good", None)
    assert isinstance(error, NotADirectoryError)
    assert (tmp_path / "ok" / "h.lp").read_bytes() == b"y\n"


def test_a_closed_appender_refuses_work_and_closes_twice(tmp_path: Path) -> None:
    appender = core.FileAppender()
    appender.close()
    appender.close()
    with pytest.raises(ValueError, match="closed"):
        appender.submit(None, tmp_path / "h.lp", b"x\n")
    with pytest.raises(ValueError, match="closed"):
        appender.wakeup_fd()
