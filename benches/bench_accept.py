"""What the write-ahead log costs a request, in one process: CPU time per 100,000 messages through
what the batch route calls to buffer a request (`parse_batch`, verdicts, `durable.Accept.append`,
the sink's drain + settle of ready tenants), `memory` against `wal` + `interval` (the default)
and, for the records per fsync, `wal` + `always`; 32 appends in flight on one event loop.

    pytest benches/bench_accept.py --benchmark-enable     # the figures (printed at the end)
    pytest benches/bench_accept.py                         # as a test: one round

The modes take turns round by round (on a shared machine a neighbour's burst falls on both),
and the CPU time counts every thread of the process (the log's writer and maintenance threads).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from corpus import RECEIVE_NS, Corpus
from tidegate import _core
from tidegate.config import Config
from tidegate.durable import Accept

IN_FLIGHT = 32
ROUNDS = 7
PASSES = 3
MODES = {"memory": ("memory", "interval"), "wal-interval": ("wal", "interval")}


async def accept_all(cfg: Config, bodies: list[bytes]) -> tuple[float, dict[str, object] | None]:
    """CPU seconds to take every body through `Accept.append`, IN_FLIGHT at a time; the log's
    counters after."""
    buffers = _core.TenantBuffers()
    accept = Accept(cfg, buffers)
    await accept.start()

    async def one(body: bytes) -> None:
        batch = _core.parse_batch(body, RECEIVE_NS)
        batch.resolve([(count, None) for *_, count in batch.groups()])
        for tenant in await accept.append(batch):
            drained = buffers.drain(tenant)
            if drained is not None:
                buffers.settle(tenant, drained[1])

    start = time.process_time()
    for at in range(0, len(bodies), IN_FLIGHT):
        await asyncio.gather(*(one(body) for body in bodies[at : at + IN_FLIGHT]))
    used = time.process_time() - start
    stats = accept.stats()
    await accept.close()
    return used, stats


def run(corpus: Corpus, workdir: Path, durability: str, sync: str) -> tuple[float, Any]:
    """One round of one mode in a fresh data dir: CPU seconds per 100k messages, log counters."""
    data_dir = workdir / f"{durability}-{sync}-{time.monotonic_ns()}"
    cfg = Config(durability=durability, wal_sync=sync, data_dir=data_dir)
    used, stats = asyncio.run(accept_all(cfg, corpus.bodies * PASSES))
    return used / (corpus.messages * PASSES) * 100_000, stats


def test_the_log_costs_a_request(
    benchmark: Any, corpus: Corpus, throughput: dict[str, Any], tmp_path: Path
) -> None:
    rounds = ROUNDS if benchmark.enabled else 1

    def compare() -> dict[str, Any]:
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode, (durability, sync) in MODES.items():
                cpu[mode].append(run(corpus, tmp_path, durability, sync)[0])
        _, always = run(corpus, tmp_path, "wal", "always")
        memory, wal = (statistics.median(cpu[mode]) for mode in MODES)
        return {
            "memory_cpu_s_per_100k": round(memory, 4),
            "wal_interval_cpu_s_per_100k": round(wal, 4),
            "wal_over_memory": round(wal / memory, 3),
            "always_records_per_fsync": always["records_per_fsync"],
            "rounds": rounds,
        }

    result = benchmark.pedantic(compare, rounds=1, iterations=1)
    assert result["always_records_per_fsync"] >= 1
    if benchmark.enabled:
        benchmark.extra_info.update(result)
        throughput["accept"] = result
