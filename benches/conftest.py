"""Fixtures for the benches: the real services of the test suite (tests/e2e is on pythonpath), the
core corpus, and a table of the core's figures at the end of the run."""

from __future__ import annotations

from typing import Any

import corpus as corpus_module
import pytest
from services import *  # noqa: F403  (PostgreSQL for bench_shelly.py)

FIGURES = pytest.StashKey[dict[str, Any]]()


@pytest.fixture(scope="session")
def corpus() -> corpus_module.Corpus:
    return corpus_module.build()


@pytest.fixture(scope="session")
def line_corpus() -> corpus_module.LineCorpus:
    return corpus_module.build_lines()


@pytest.fixture(scope="session")
def throughput(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Figures the benches measured, for the summary table."""
    return request.config.stash.setdefault(FIGURES, {})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, {})
    if not figures:
        return
    write = terminalreporter.write_line
    terminalreporter.section("tidegate core")
    paths = [path for path in ("core", "with_verdicts", "with_fields") if path in figures]
    if paths:
        write(
            f"{'path':<15}{'core':<8}{'msgs/s (median)':>16}{'ns/msg':>10}{'msgs/s (best)':>16}"
            f"{'rust/twin':>11}"
        )
    for path in paths:
        for impl in ("rust", "python"):
            row = figures[path].get(impl)
            if row is None:
                continue
            # The ratio on the Rust row: what the compiled core buys on this path.
            ratio = (
                f"{figures[path]['ratio']}x" if impl == "rust" and "ratio" in figures[path] else ""
            )
            write(
                f"{path:<15}{impl:<8}{row['msgs_per_s']:>16,}{row['ns_per_msg']:>10,}"
                f"{row['msgs_per_s_best']:>16,}{ratio:>11}"
            )
    if "line_protocol" in figures:
        lp = figures["line_protocol"]
        rows = [
            f"{name} {lp[path]['ns_per_line']:,} ns"
            for path, name in (
                ("line_protocol", "line protocol"),
                ("json", "JSON"),
                ("line_protocol_parser", "line-protocol-parser alone"),
            )
            if path in lp
        ]
        write(f"per line of the same readings (medians): {', '.join(rows)}")
    if "orjson" in figures:
        o = figures["orjson"]
        write(
            f"whole path (with_fields) {o['core_ns_per_msg']:,} ns/msg vs orjson.loads alone "
            f"{o['orjson_ns_per_msg']:,} ns/msg: the core is {o['core_over_orjson']}x orjson's "
            f"speed (CPU time, medians of {o['rounds']} interleaved rounds)"
        )
    if "accept" in figures:
        a = figures["accept"]
        write(
            f"buffering a request, CPU s per 100k msgs: memory {a['memory_cpu_s_per_100k']}, "
            f"wal + interval {a['wal_interval_cpu_s_per_100k']} ({a['wal_over_memory']}x; "
            f"medians of {a['rounds']} alternating rounds); wal + always: "
            f"{a['always_records_per_fsync']} records per fsync"
        )
    if "memory" in figures:
        m = figures["memory"]
        write(
            f"memory: {m['rss_bytes_per_line']} B RSS per buffered line for "
            f"{m['lp_bytes_per_line']} B of line protocol "
            f"({m['rss_over_lp']}x, {m['lines']:,} lines)"
        )
    if "page_cache" in figures:
        layouts = ", ".join(f"{name} {us} µs" for name, us in figures["page_cache"].items())
        write(f"a 30 KB log write, CPU per write (medians): {layouts}")
