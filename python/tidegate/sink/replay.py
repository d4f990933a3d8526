"""`tidegate replay`: send the embedded sink's LP files and the stop spill files to InfluxDB, or
(`--dead-letters`) the dead-letter files once their cause is fixed, with the sink's own retry
policy (retry.py) and dead-letter rules (influx.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import deque
from pathlib import Path
from typing import BinaryIO

import httpx

from tidegate.config import Config
from tidegate.logs import log
from tidegate.sink.files import wait_for_appends
from tidegate.sink.influx import InfluxTarget
from tidegate.sink.retry import Retries, RetryPolicy, send
from tidegate.sink.target import Counts, Failure


async def replay(
    cfg: Config, url: str, api: str, *, dead_letters: bool = False, max_attempts: int = 10
) -> dict[str, int]:
    """Send the embedded sink's files (`data_dir/lp`) and the stop spill files
    (`data_dir/spill`) — or, with `dead_letters`, the dead-letter files (`data_dir/deadletter`,
    their `#` notes skipped) — to the InfluxDB at `url` with write API `api`; returns counts.
    Lines the database refuses again are dead-lettered again, into a new file.

    Files go in order (lp/ then spill/; per tenant, oldest hour first), each in chunks of at most
    `influx_max_body_lines` lines under the sink's retry and dead-letter policy. A file is first
    renamed to `*.lp.sending` (a running gateway's next append starts a new file) and becomes
    `*.lp.done` only after all its chunks are written. Delivery is at-least-once: after a crash,
    or when one chunk failed `max_attempts` times (replay then stops, `files_failed` = 1), the
    next replay re-sends that one file from its start; InfluxDB keeps one point per series and
    timestamp, so re-sent lines replace themselves.
    """
    rcfg = dataclasses.replace(cfg, influxdb_url=url.rstrip("/"), influx_api=api)
    counts = Counts()
    policy = RetryPolicy(rcfg, counts)
    files = failed = lines = 0
    async with httpx.AsyncClient(timeout=cfg.influx_timeout_s) as client:
        target = InfluxTarget(rcfg, client, counts, lambda *_: None)
        files_to_send = (
            _dead_letter_files(cfg.data_dir) if dead_letters else _replay_files(cfg.data_dir)
        )
        for path, tenant in files_to_send:
            sent = await _replay_file(rcfg, target, policy, path, tenant, max_attempts)
            if sent is None:
                failed += 1
                break
            files += 1
            lines += sent
    result = {"files": files, "files_failed": failed, "lines": lines}
    result.update((k, v) for k, v in dataclasses.asdict(counts).items() if isinstance(v, int))
    log("replay_finished", counts=result)
    return result


_NAMES = (".lp", ".lp.sending")


def _unsent(directory: Path) -> list[Path]:
    """The directory's `.lp` files and interrupted replays' `.lp.sending`, oldest first."""

    def order(path: Path) -> tuple[str, int]:
        name = path.name.removesuffix(".sending").removesuffix(".lp")
        # An interrupted replay's file holds older lines than a new file of the same name.
        return name, 0 if path.name.endswith(".sending") else 1

    return sorted((p for p in directory.iterdir() if p.name.endswith(_NAMES)), key=order)


def _replay_files(data_dir: Path) -> list[tuple[Path, str]]:
    """LP and spill files with their tenant (`<root>/telemetry_<tenant>/<hour>.lp`)."""
    out: list[tuple[Path, str]] = []
    for root in (data_dir / "lp", data_dir / "spill"):
        if not root.is_dir():
            continue
        for tenant_dir in sorted(root.glob("telemetry_*")):
            tenant = tenant_dir.name.removeprefix("telemetry_")
            out.extend((path, tenant) for path in _unsent(tenant_dir))
    return out


def _dead_letter_files(data_dir: Path) -> list[tuple[Path, str]]:
    """Dead-letter files with their tenant (`deadletter/telemetry_<tenant>.lp`)."""
    root = data_dir / "deadletter"
    if not root.is_dir():
        return []
    return [
        (path, path.name.split(".", 1)[0].removeprefix("telemetry_"))
        for path in _unsent(root)
        if path.name.startswith("telemetry_")
    ]


async def _replay_file(
    cfg: Config,
    target: InfluxTarget,
    policy: RetryPolicy,
    path: Path,
    tenant: str,
    max_attempts: int,
) -> int | None:
    """Send one file; its line count, or None when a chunk kept failing (file not done)."""
    sending = path if path.name.endswith(".sending") else path.with_name(path.name + ".sending")
    if sending != path:
        path.rename(sending)
    await asyncio.to_thread(wait_for_appends, sending)
    sent = 0
    with sending.open("rb") as f:
        while (
            chunk := await asyncio.to_thread(_read_chunk, f, cfg.influx_max_body_lines)
        ) is not None:
            retries = Retries()

            def failed(failure: Failure, lines: int, retries: Retries = retries) -> float | None:
                delay = policy.failed(tenant, retries, failure, lines)
                if retries.attempts >= max_attempts:
                    log("replay_gave_up", level="error", file=str(sending), error=failure.error)
                    return None
                log(
                    "replay_retry",
                    level="warning",
                    file=str(sending),
                    retry_in_s=round(delay, 3),
                    error=failure.error,
                )
                return delay

            deliver = functools.partial(target.deliver, tenant)
            if await send(deliver, deque([chunk]), failed) is not None:
                return None
            sent += chunk[1]
    sending.rename(_done_path(sending))
    return sent


def _read_chunk(f: BinaryIO, max_lines: int) -> tuple[bytes, int] | None:
    """Up to `max_lines` data lines (blank and `#` comment lines skipped), newline-terminated."""
    parts: list[bytes] = []
    for line in f:
        if not line.strip() or line.startswith(b"#"):
            continue
        parts.append(line if line.endswith(b"\n") else line + b"\n")
        if len(parts) >= max_lines:
            break
    return (b"".join(parts), len(parts)) if parts else None


def _done_path(sending: Path) -> Path:
    name = sending.name.removesuffix(".sending")
    done = sending.with_name(name + ".done")
    n = 1
    # The same hour can be replayed twice (a gateway kept appending): keep both records.
    while done.exists():
        done = sending.with_name(f"{name.removesuffix('.lp')}.{n}.lp.done")
        n += 1
    return done
