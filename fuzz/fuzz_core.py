"""Atheris fuzz target of the core: parse_batch, parse_single and parse_shelly, then verdicts,
buffering, drain and encoding, on the compiled `_core` and the `_twin` alike.

Only `BodyError`/`ValueError` may escape. Anything else is a crash: a Rust panic (PyO3's
`PanicException`), a `TypeError`, or a broken invariant (the response is not JSON, a line count
is wrong). The first input byte picks the entry point; the rest is the body.

    python fuzz/fuzz_core.py -dict=fuzz/core.dict -len_control=0 CORPUS_DIR
    (tests/core/test_fuzz.py runs it for 100,000 inputs from a seed corpus on every test run)
"""

from __future__ import annotations

import contextlib
import json
import sys
from types import ModuleType

import atheris

with atheris.instrument_imports():
    from tidegate import _twin
from tidegate import _core

RECEIVE_NS = 1_700_000_000_000_000_000
NOW_S = 1_714_566_645


def exercise(core: ModuleType, selector: int, body: bytes) -> None:
    """Feed `body` through one entry point of `core` and everything that follows it."""
    max_payload = 8192 if selector & 0x80 else 64
    entry = selector % 3
    if entry == 2:
        shelly = core.parse_shelly(body, NOW_S, 1000 if selector & 0x40 else 2)
        rows = len(shelly.power)
        lines, count = shelly.encode(range(rows))
        assert count == rows == lines.count(b"\n")
        assert len(shelly.errors) <= shelly.total_messages
        return
    if entry == 0:
        batch = core.parse_batch(body, RECEIVE_NS, max_payload)
    else:
        batch = core.parse_single(body, "acme", "dev-1", "telemetry", "tok", RECEIVE_NS)
    batch.resolve([(count - 1, "RATE_LIMITED") for *_, count in batch.groups()])
    buffers = core.TenantBuffers(batch_size=2, flush_bytes=256, max_bytes=selector * 4)
    buffers.append(batch)
    for tenant, lines, count in batch.tenant_lines():
        assert count == lines.count(b"\n") and lines.endswith(b"\n"), tenant
    for tenant in buffers.tenants():
        drained = buffers.drain(tenant, max_lines=1 + selector % 4)
        assert drained is not None
        buffers.put_back(tenant, *drained)
    accepted, rejected, response = batch.response_json()
    results = json.loads(response)["results"]
    assert accepted + rejected == len(batch) == len(results)
    assert [r.get("reason") for r in results] == batch.reasons()


def test_one_input(data: bytes) -> None:
    """libFuzzer entry: only a body error may escape either core."""
    if not data:
        return
    for core in (_core, _twin):
        with contextlib.suppress(ValueError):  # BodyError included
            exercise(core, data[0], data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
