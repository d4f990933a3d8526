"""Line protocol per line against the JSON path per message on the same content, and against
`line-protocol-parser` alone (parse only).

    pytest benches/bench_lineproto.py --benchmark-enable

Both core paths do what a request does in the core: parse + validate + encode, admission of the
device (warm cache), field types, append to the tenant buffers (drained as they fill). The
content: 5,000 readings of one device, four float metrics each, as a Telegraf batch would send
them (one LP body of 5,000 lines; fifty JSON bodies of 100 messages).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import line_protocol_parser
import pytest
from messages import load_core

LINES = 5_000
RECEIVE_NS = 1_714_566_645_000_000_000
DEVICE = ("dev-1", "site-1", "token-1")
METRICS = ("usage_user", "usage_system", "usage_idle", "temp")


def _values(i: int) -> list[float]:
    return [i * 0.25, 3.5, 96.0 - i % 7, 21.0 + i % 5 / 10]


LP_BODY = "".join(
    "telemetry "
    + ",".join(f"{k}={v!r}" for k, v in zip(METRICS, _values(i), strict=True))
    + f",seq={i}i {RECEIVE_NS + i}\n"
    for i in range(LINES)
).encode()
JSON_BODIES = [
    json.dumps(
        {
            "messages": [
                {
                    "tenant_id": "acme",
                    "device_id": DEVICE[0],
                    "site_id": DEVICE[1],
                    "provision_token": DEVICE[2],
                    "msg_type": "telemetry",
                    "seq": i,
                    "ts": None,
                    "metrics": dict(zip(METRICS, _values(i), strict=True)),
                }
                for i in range(start, start + 100)
            ]
        }
    ).encode()
    for start in range(0, LINES, 100)
]


def _services(core: Any) -> tuple[Any, Any, Any]:
    admission = core.Admission(default_rps=1e9, default_burst=10**9)
    row = ("acme", DEVICE[0], DEVICE[1], hashlib.sha256(DEVICE[2].encode()).digest(), None, None)
    admission.install([("acme", DEVICE[0])], [(*row, "active")], 0.0)
    return admission, core.FieldTypes(), core.TenantBuffers(batch_size=10**6, max_bytes=1 << 30)


def _through(core: Any, batches: list[Any], services: tuple[Any, Any, Any]) -> int:
    admission, types, buffers = services
    for b in batches:
        assert admission.admit(b, 1.0) == []
        types.admit(b)
        buffers.append(b)
    drained = buffers.drain("acme", 10**7)
    assert drained is not None
    buffers.settle("acme", drained[1])
    return int(drained[1])


def _lp(core: Any, services: tuple[Any, Any, Any]) -> int:
    batch = core.parse_lines(LP_BODY, "acme", RECEIVE_NS, device=DEVICE)
    return _through(core, [batch], services)


def _json(core: Any, services: tuple[Any, Any, Any]) -> int:
    batches = [core.parse_batch(body, RECEIVE_NS) for body in JSON_BODIES]
    return _through(core, batches, services)


@pytest.mark.parametrize("path", ["line_protocol", "json"])
def test_core_path_per_line(benchmark: Any, path: str) -> None:
    core = load_core("rust")
    services = _services(core)
    run = _lp if path == "line_protocol" else _json
    assert benchmark(run, core, services) == LINES
    benchmark.extra_info["lines"] = LINES


def test_line_protocol_parser_alone(benchmark: Any) -> None:
    lines = LP_BODY.decode().splitlines()

    def parse() -> int:
        return len([line_protocol_parser.parse_line(line) for line in lines])

    assert benchmark(parse) == LINES
    benchmark.extra_info["lines"] = LINES
