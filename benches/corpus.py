"""Fixed ingest corpora for the core benches (seeded, so every run is the same).

`build`: 100-message batch bodies from 1,000 devices of 10 tenants, 4 to 8 metrics each; about
15% of the items are invalid, of mixed kinds (wrong type, missing field, bad timestamp, bad
metric, negative seq, bad tenant, oversized, not an object).

`build_lines`: one device's readings as one line-protocol body and as JSON bodies, for the line
protocol path against the JSON path on the same content.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

SEED = 20240501
RECEIVE_NS = 1_714_566_645_000_000_000
TENANTS = 10
DEVICES = 1000
BATCH = 100
INVALID_SHARE = 0.15

FLOAT_METRICS = ("temp", "humidity", "pressure", "voltage", "current", "power", "co2", "lux")
INT_METRICS = ("rssi", "battery")
BOOL_METRICS = ("door_open", "fan_on")


@dataclass(frozen=True)
class Corpus:
    bodies: list[bytes]
    messages: int
    valid: int

    @property
    def body_bytes(self) -> int:
        return sum(map(len, self.bodies))


def _device(rng: random.Random, i: int) -> dict[str, Any]:
    names = rng.sample(FLOAT_METRICS + INT_METRICS + BOOL_METRICS, rng.randint(4, 8))
    return {
        "tenant_id": f"tenant-{i % TENANTS:02d}",
        "device_id": f"dev-{i:04d}",
        "provision_token": f"{rng.getrandbits(96):024x}",
        "site_id": f"site-{rng.randrange(40):02d}",
        "metrics": names,
        "seq": rng.randrange(10_000),
    }


def _value(rng: random.Random, name: str) -> object:
    if name in BOOL_METRICS:
        return rng.random() < 0.5
    if name in INT_METRICS:
        return rng.randint(-100, 100)
    return round(rng.uniform(-50, 1500), rng.choice((1, 2, 3)))


def _message(rng: random.Random, device: dict[str, Any], second: int) -> dict[str, Any]:
    device["seq"] += 1
    minute, sec = divmod(second, 60)
    return {
        "tenant_id": device["tenant_id"],
        "device_id": device["device_id"],
        "msg_type": "telemetry" if rng.random() < 0.9 else "heartbeat",
        "provision_token": device["provision_token"],
        "site_id": device["site_id"],
        "ts": f"2024-05-01T12:{minute % 60:02d}:{sec:02d}.{rng.randrange(1000):03d}Z",
        "seq": device["seq"],
        "metrics": {name: _value(rng, name) for name in device["metrics"]},
    }


def _spoil(rng: random.Random, msg: dict[str, Any]) -> object:
    kind = rng.randrange(8)
    if kind == 0:
        msg["msg_type"] = "event"
    elif kind == 1:
        del msg["site_id"]
    elif kind == 2:
        msg["ts"] = "2024-05-01 12:00:00"
    elif kind == 3:
        msg["metrics"]["temp"] = "n/a"
    elif kind == 4:
        msg["seq"] = -1
    elif kind == 5:
        msg["tenant_id"] = msg["tenant_id"].upper()
    elif kind == 6:
        msg["firmware_blob"] = "x" * 9000
    else:
        return "not a message"
    return msg


def build(batches: int = 200) -> Corpus:
    """`batches` request bodies of 100 messages each."""
    rng = random.Random(SEED)
    devices = [_device(rng, i) for i in range(DEVICES)]
    bodies = []
    valid = 0
    for b in range(batches):
        items: list[object] = []
        for _ in range(BATCH):
            msg = _message(rng, rng.choice(devices), b % 3600)
            if rng.random() < INVALID_SHARE:
                items.append(_spoil(rng, msg))
            else:
                items.append(msg)
                valid += 1
        body = json.dumps({"messages": items}, separators=(",", ":")).encode()
        bodies.append(body)
    return Corpus(bodies, batches * BATCH, valid)


LINE_DEVICE = ("dev-1", "site-1", "token-1")
LINE_METRICS = ("usage_user", "usage_system", "usage_idle", "temp")


@dataclass(frozen=True)
class LineCorpus:
    """The same readings as one line-protocol body and as JSON bodies of BATCH messages."""

    lp_body: bytes
    json_bodies: list[bytes]
    lines: int


def _readings(i: int) -> list[float]:
    return [i * 0.25, 3.5, 96.0 - i % 7, 21.0 + i % 5 / 10]


def build_lines(lines: int = 5_000) -> LineCorpus:
    """`lines` readings of LINE_DEVICE (tenant `acme`), four float metrics and `seq` each: one
    line-protocol body as a Telegraf batch would send it, and the same content as JSON."""
    lp_body = "".join(
        "telemetry "
        + ",".join(f"{k}={v!r}" for k, v in zip(LINE_METRICS, _readings(i), strict=True))
        + f",seq={i}i {RECEIVE_NS + i}\n"
        for i in range(lines)
    ).encode()
    device, site, token = LINE_DEVICE
    json_bodies = [
        json.dumps(
            {
                "messages": [
                    {
                        "tenant_id": "acme",
                        "device_id": device,
                        "site_id": site,
                        "provision_token": token,
                        "msg_type": "telemetry",
                        "seq": i,
                        "ts": None,
                        "metrics": dict(zip(LINE_METRICS, _readings(i), strict=True)),
                    }
                    for i in range(start, min(start + BATCH, lines))
                ]
            }
        ).encode()
        for start in range(0, lines, BATCH)
    ]
    return LineCorpus(lp_body, json_bodies, lines)
