"""A fleet of simulated devices sending telemetry through `tidegate.client`.

Each device sends `--rate` readings a second (a temperature and a humidity drifting at random)
for `--seconds`; the client batches them, retries what the gateway asks it to, and each second
the simulator flushes and prints one JSON line with the outcome. Devices come from a JSON file
of `tidegate device add` outputs (one object per line, or a list):

    tidegate device add --tenant acme --device d1 --site s1 >> devices.jsonl
    python examples/simulate_devices.py --url http://127.0.0.1:8080 --devices devices.jsonl

Exit status 0 when every message was accepted, 1 when any was rejected.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from tidegate.client import Client, Message, Report, timestamp


def read_devices(path: Path) -> list[dict[str, str]]:
    """`tidegate device add` outputs: a JSON list, or one object per line."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        devices: list[dict[str, str]] = json.loads(text)
        return devices
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Device:
    """One device's identity and its drifting readings."""

    def __init__(self, entry: dict[str, str], rng: random.Random) -> None:
        self.entry = entry
        self.rng = rng
        self.seq = 0
        self.temp = rng.uniform(15.0, 25.0)
        self.humidity = rng.uniform(30.0, 60.0)

    def reading(self) -> Message:
        """The next message, stamped now (a re-sent message then overwrites itself)."""
        self.seq += 1
        self.temp += self.rng.gauss(0.0, 0.1)
        self.humidity = min(100.0, max(0.0, self.humidity + self.rng.gauss(0.0, 0.5)))
        return {
            "tenant_id": self.entry["tenant_id"],
            "device_id": self.entry["device_id"],
            "msg_type": "telemetry",
            "provision_token": self.entry["provision_token"],
            "site_id": self.entry["site_id"],
            "ts": timestamp(),
            "seq": self.seq,
            "metrics": {"temp": round(self.temp, 2), "humidity": round(self.humidity, 1)},
        }


def summary(second: int, sent: int, report: Report) -> str:
    """One JSON line: what this second sent and what came of it."""
    reasons = Counter(r.reason for r in report.rejected)
    return json.dumps(
        {"second": second, "sent": sent, "accepted": report.accepted, "rejected": reasons},
        sort_keys=True,
    )


def simulate(client: Client, devices: list[Device], rate: int, seconds: int) -> int:
    """Send for `seconds`; the number of rejected messages."""
    rejected = 0
    interval = 1.0 / rate
    for second in range(1, seconds + 1):
        start = time.monotonic()
        sent = 0
        for tick in range(rate):
            for device in devices:
                client.submit(device.reading())
                sent += 1
            # Readings spread over the second, as a real sampling loop would.
            time.sleep(max(0.0, start + (tick + 1) * interval - time.monotonic()))
        report = client.flush()
        rejected += len(report.rejected)
        print(summary(second, sent, report), flush=True)
    return rejected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    parser.add_argument("--devices", type=Path, required=True, help="device JSON file")
    parser.add_argument("--rate", type=int, default=1, help="messages/s per device")
    parser.add_argument("--seconds", type=int, default=10, help="how long to send")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-retry-s", type=float, default=30.0)
    parser.add_argument("--no-gzip", action="store_true", help="send plain JSON")
    parser.add_argument("--seed", type=int, default=None, help="for repeatable readings")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    devices = [Device(entry, rng) for entry in read_devices(args.devices)]
    with Client(
        args.url,
        batch_size=args.batch_size,
        gzip=not args.no_gzip,
        max_retry_s=args.max_retry_s,
    ) as client:
        rejected = simulate(client, devices, args.rate, args.seconds)
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
