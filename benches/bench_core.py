"""Core throughput, Rust vs twin in one run, and memory per buffered line.

    pytest benches/bench_core.py --benchmark-enable      # numbers (a table at the end)
    pytest benches/bench_core.py                          # as tests: one pass each

Three paths, single thread, each for the compiled core and the twin:
- `core`: the core's own work, parse + validate + encode (`parse_batch`), `append` to the tenant
  buffers (every valid item: no verdicts, as the API allows), `Latest.record` (each device's
  last accepted message, telemetry_latest), `response_json`;
- `with_verdicts`: the same plus admission, as a request does it: `Admission.admit` of every
  batch against a warm cache of the corpus' devices (token check, site check, rate limit; limits
  high enough that every valid item passes).
- `with_fields`: `with_verdicts` plus the field type check (`FieldTypes.admit`; the corpus
  keeps one type per field, so it rejects nothing).
Both also do the sink's part, drain + settle of every tenant the append reports ready, so the
buffer never reaches its cap.

`test_line_protocol_per_line` runs the line-protocol path (`parse_lines` of one 5,000-line body,
then admission, field types and buffers as above) against the JSON path on the same readings
(`parse_batch` of fifty 100-message bodies, the same steps after), per line, and
`line-protocol-parser` alone (parse only, into Python objects) on the same lines.

`test_whole_path_over_orjson` sets the compiled core's `with_fields` path beside `orjson.loads`
alone on the same bodies (which builds Python objects and validates nothing), in one process, the
two taking turns round by round (CPU time), and prints how many times faster the core is.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import corpus as corpus_module
import line_protocol_parser
import orjson
import pytest
from corpus import LINE_DEVICE, RECEIVE_NS, Corpus, LineCorpus
from messages import load_core

MEMORY_LINES = 200_000
IMPLS = ["rust", "python"]
ORJSON_ROUNDS = 21
LINE_PATHS = ["line_protocol", "json", "line_protocol_parser"]


def warm_admission(core: ModuleType, bodies: list[bytes]) -> Any:
    """An Admission with every device of the corpus cached, limits that never bite."""
    admission = core.Admission(ttl_s=1e9, default_rps=1e9, default_burst=2**31)
    rows = {
        (tenant, device): (tenant, device, site, hashlib.sha256(token.encode()).digest())
        for body in bodies
        for tenant, device, site, token, _ in core.parse_batch(body, RECEIVE_NS).groups()
    }
    admission.install([], [(*row, None, None, "active") for row in rows.values()], 0.0)
    return admission


def ingest(core: ModuleType, bodies: list[bytes], admission: Any, path: str) -> int:
    """Every body through `path` (see above), `admission` warm for the paths past `core`;
    returns how many lines were buffered."""
    buffers = core.TenantBuffers()
    field_types = core.FieldTypes() if path == "with_fields" else None
    latest = core.Latest()
    flushed = 0
    for body in bodies:
        batch = core.parse_batch(body, RECEIVE_NS)
        if admission is not None and admission.admit(batch, 1.0):
            raise AssertionError("a warm cache asks for no lookup")
        if field_types is not None:
            field_types.admit(batch)
        for tenant in buffers.append(batch):
            _, count = buffers.drain(tenant)
            buffers.settle(tenant, count)
            flushed += count
        latest.record(batch)
        batch.response_json()
    return flushed + sum(count for count, _ in buffers.depth().values())


@pytest.mark.parametrize("impl", IMPLS)
def test_ingest_core_path(
    benchmark: Any, corpus: Corpus, throughput: dict[str, Any], impl: str
) -> None:
    measure(benchmark, corpus, throughput, impl, "core")


@pytest.mark.parametrize("impl", IMPLS)
def test_ingest_with_verdicts(
    benchmark: Any, corpus: Corpus, throughput: dict[str, Any], impl: str
) -> None:
    measure(benchmark, corpus, throughput, impl, "with_verdicts")


@pytest.mark.parametrize("impl", IMPLS)
def test_ingest_with_field_types(
    benchmark: Any, corpus: Corpus, throughput: dict[str, Any], impl: str
) -> None:
    measure(benchmark, corpus, throughput, impl, "with_fields")


def measure(
    benchmark: Any, corpus: Corpus, throughput: dict[str, Any], impl: str, path: str
) -> None:
    """Bench one path of one core; record msgs/s, ns/msg and, once both cores ran, their ratio."""
    benchmark.group = f"ingest {path}"
    core = load_core(impl)
    admission = warm_admission(core, corpus.bodies) if path != "core" else None
    buffered = benchmark(ingest, core, corpus.bodies, admission, path)
    assert buffered == corpus.valid
    if benchmark.enabled:
        messages = corpus.messages
        # The median: this machine's cores are shared, and a busy neighbour skews the mean.
        median = benchmark.stats["median"]
        result = {
            "msgs_per_s": round(messages / median),
            "ns_per_msg": round(median / messages * 1e9),
            "msgs_per_s_best": round(messages / benchmark.stats["min"]),
        }
        figures = throughput.setdefault(path, {})
        figures[impl] = result
        benchmark.extra_info.update(result, messages=messages, buffered=buffered)
        if set(IMPLS) <= figures.keys():
            ratio = figures["rust"]["msgs_per_s"] / figures["python"]["msgs_per_s"]
            figures["ratio"] = benchmark.extra_info["rust_over_twin"] = round(ratio, 1)


def line_services(core: ModuleType) -> tuple[Any, Any, Any]:
    """Admission with LINE_DEVICE cached (limits that never bite), field types, buffers."""
    admission = core.Admission(default_rps=1e9, default_burst=10**9)
    device, site, token = LINE_DEVICE
    row = ("acme", device, site, hashlib.sha256(token.encode()).digest(), None, None)
    admission.install([("acme", device)], [(*row, "active")], 0.0)
    return admission, core.FieldTypes(), core.TenantBuffers(batch_size=10**6, max_bytes=1 << 30)


def ingest_lines(
    core: ModuleType, lines: LineCorpus, services: tuple[Any, Any, Any], path: str
) -> int:
    """The readings through `path` (`line_protocol` or `json`) as a request does it: parse,
    admit (warm), field types, append; then drain and settle. Returns the lines drained."""
    if path == "line_protocol":
        batches = [core.parse_lines(lines.lp_body, "acme", RECEIVE_NS, device=LINE_DEVICE)]
    else:
        batches = [core.parse_batch(body, RECEIVE_NS) for body in lines.json_bodies]
    admission, types, buffers = services
    for b in batches:
        if admission.admit(b, 1.0):
            raise AssertionError("a warm cache asks for no lookup")
        types.admit(b)
        buffers.append(b)
    drained = buffers.drain("acme", 10**7)
    assert drained is not None
    buffers.settle("acme", drained[1])
    return int(drained[1])


@pytest.mark.parametrize("path", LINE_PATHS)
def test_line_protocol_per_line(
    benchmark: Any, line_corpus: LineCorpus, throughput: dict[str, Any], path: str
) -> None:
    benchmark.group = "line protocol per line"
    if path == "line_protocol_parser":
        text = line_corpus.lp_body.decode().splitlines()
        done = benchmark(lambda: len([line_protocol_parser.parse_line(line) for line in text]))
    else:
        core = load_core("rust")
        done = benchmark(ingest_lines, core, line_corpus, line_services(core), path)
    assert done == line_corpus.lines
    if benchmark.enabled:
        ns = round(benchmark.stats["median"] / line_corpus.lines * 1e9)
        benchmark.extra_info.update(lines=line_corpus.lines, ns_per_line=ns)
        throughput.setdefault("line_protocol", {})[path] = {"ns_per_line": ns}


def test_whole_path_over_orjson(benchmark: Any, corpus: Corpus, throughput: dict[str, Any]) -> None:
    core = load_core("rust")
    admission = warm_admission(core, corpus.bodies)
    rounds = ORJSON_ROUNDS if benchmark.enabled else 1

    def compare() -> dict[str, Any]:
        core_s: list[float] = []
        orjson_s: list[float] = []
        # Taking turns: a neighbour's burst or a drifting clock speed falls on both alike.
        gc.disable()
        try:
            for _ in range(rounds):
                start = time.process_time()
                assert ingest(core, corpus.bodies, admission, "with_fields") == corpus.valid
                core_s.append(time.process_time() - start)
                start = time.process_time()
                for body in corpus.bodies:
                    orjson.loads(body)
                orjson_s.append(time.process_time() - start)
        finally:
            gc.enable()
        core_ns, orjson_ns = (
            statistics.median(s) / corpus.messages * 1e9 for s in (core_s, orjson_s)
        )
        return {
            "core_ns_per_msg": round(core_ns),
            "orjson_ns_per_msg": round(orjson_ns),
            "core_over_orjson": round(orjson_ns / core_ns, 2) if core_ns else 0.0,
            "rounds": rounds,
        }

    result = benchmark.pedantic(compare, rounds=1, iterations=1)
    if benchmark.enabled:
        benchmark.extra_info.update(result)
        throughput["orjson"] = result


def test_memory_per_buffered_line(benchmark: Any, throughput: dict[str, Any]) -> None:
    # A fresh process: a heap that earlier tests freed would hide the buffers' growth.
    def measure() -> dict[str, Any]:
        run = subprocess.run(
            [sys.executable, __file__, "memory"],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        result: dict[str, Any] = json.loads(run.stdout)
        return result

    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert result["lines"] >= MEMORY_LINES
    assert result["depth_lines"] == result["lines"]
    benchmark.extra_info.update(result)
    throughput["memory"] = result


def memory_report() -> dict[str, Any]:
    """Buffer at least MEMORY_LINES corpus lines in the Rust TenantBuffers; RSS growth per line
    against the line-protocol bytes per line."""
    core = load_core("rust")
    chunks = [
        chunk
        for body in corpus_module.build(100).bodies
        for chunk in core.parse_batch(body, RECEIVE_NS).tenant_lines()
    ]
    buffers = core.TenantBuffers(batch_size=1 << 40, flush_bytes=1 << 40, max_bytes=1 << 40)
    lines = lp_bytes = 0
    # Hand the heap that building the input freed back to the OS: reusing it would not grow RSS.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = rss_bytes()
    while lines < MEMORY_LINES:
        for tenant, body, count in chunks:
            assert buffers.append_lines(tenant, body, count)
            lines += count
            lp_bytes += len(body)
    grown = rss_bytes() - before
    return {
        "lines": lines,
        "depth_lines": sum(n for n, _ in buffers.depth().values()),
        "lp_bytes_per_line": round(lp_bytes / lines, 1),
        "rss_bytes_per_line": round(grown / lines, 1),
        "rss_over_lp": round(grown / lp_bytes, 3),
    }


def rss_bytes() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def passes(count: int, path: str) -> None:
    """`count` passes of the corpus through `path` of the compiled core, for an instruction
    count: `valgrind --tool=callgrind` of N and of M passes, the difference over (N - M) x
    20,000 messages is the path's instructions per message, whatever the machine's load.
    `line_protocol` and `json` are those of `test_line_protocol_per_line` (5,000 lines a
    pass)."""
    core = load_core("rust")
    if path in ("line_protocol", "json"):
        lines = corpus_module.build_lines()
        services = line_services(core)
        for _ in range(count):
            ingest_lines(core, lines, services, path)
        return
    bodies = corpus_module.build().bodies
    admission = warm_admission(core, bodies) if path != "core" else None
    for _ in range(count):
        ingest(core, bodies, admission, path)


if __name__ == "__main__" and sys.argv[1:] == ["memory"]:
    print(json.dumps(memory_report()))
elif __name__ == "__main__" and sys.argv[1:2] == ["passes"]:
    passes(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "with_fields")
