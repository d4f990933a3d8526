"""End to end, line protocol: tidegate's InfluxDB v2 write route against InfluxDB 1.x's own
`/write`, on the same bodies: 5,000-line gzip batches as Telegraf sends them, under wrk.

    python benches/load/lineproto.py --duration 30 --rounds 3

Each body is one Telegraf agent's batch (its cpu, mem, disk and net inputs, 10 lines per
10-second round, `host` tags), gzip-compressed at Go's default level, as `outputs.influxdb_v2`
sends it. Every agent is a device with its own credential: tidegate gets the body on
`POST /api/v2/write?bucket={tenant}` with `Authorization: Token {device_id}:{token}`; influxd gets
the same bytes on `POST /write?db=bench`. The targets take turns, `--rounds` saturated phases
each (a machine whose speed drifts hits both alike), and the run prints per phase and as a
mean per target:
- lines/s: tidegate's accepted lines (its own `/ingest/v1/stats`), influxd's written points
  (its `/debug/vars` `write.pointReq`);
- p50/p99 from wrk;
- CPU seconds per 100k lines of each process doing the work (tidegate: the gateway, plus
  influxd behind it with `--sink influx`; influxd: influxd);
- tidegate's refused lines per reason: BUFFER_FULL (503) when its sink drains a tenant's lines
  slower than they arrive. All agents write to one tenant (one database, as on influxd) unless
  `--tenants` spreads them.

tidegate runs one uvicorn worker with the shipped durability (`wal` + `interval`, or
`--durability`) and, by default, its embedded line-protocol file sink, so that the two targets
do not share influxd; `--sink influx` puts tidegate in front of the same influxd instead (the
number that matters in production, where both share the machine). Both take every body once
before measuring (series created, auth cache warm). The gateway's body cap is raised to fit a
body when it exceeds the default (1 MiB), and the buffer caps to hold every connection's body
twice over, as a deployment taking 5,000-line batches would.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(HERE)]

from gateway import GatewayProcess, run_gateway  # noqa: E402
from procs import CpuMeter  # noqa: E402
from run import (  # noqa: E402
    DURABILITIES,
    Setup,
    device_keys,
    gateway_stats,
    means,
    new_setup,
    provision,
    report,
    wrk,
)
from services import InfluxDB  # noqa: E402

INFLUX_DB = "bench"
# One 10-second round of an agent: cpu-total and four cores, mem, two disks, two interfaces.
ROUND_LINES = 10
ROUND_NS = 10_000_000_000
START_NS = 1_714_566_640_000_000_000
LP_HEADERS = ("Content-Encoding: gzip", "Content-Type: text/plain; charset=utf-8")


def agent_round(rng: random.Random, host: str, ts: int) -> list[str]:
    """One round of Telegraf's cpu, mem, disk and net inputs for `host`, as it writes them."""
    lines = []
    for cpu in ("cpu-total", "cpu0", "cpu1", "cpu2", "cpu3"):
        idle = rng.uniform(60, 99)
        user = rng.uniform(0, 100 - idle)
        fields = {
            "usage_guest": 0,
            "usage_guest_nice": 0,
            "usage_idle": idle,
            "usage_iowait": rng.uniform(0, 1),
            "usage_irq": 0,
            "usage_nice": 0,
            "usage_softirq": rng.uniform(0, 0.5),
            "usage_steal": 0,
            "usage_system": 100 - idle - user,
            "usage_user": user,
        }
        text = ",".join(f"{k}={v!r}" for k, v in fields.items())
        lines.append(f"cpu,cpu={cpu},host={host} {text} {ts}")
    total = 16_000_000_000
    used = rng.randrange(total // 4, total // 2)
    lines.append(
        f"mem,host={host} active={used - 10**8}i,available={total - used}i,"
        f"available_percent={(total - used) / total * 100!r},buffered={rng.randrange(10**8)}i,"
        f"cached={rng.randrange(10**9)}i,free={total - used - 10**9}i,total={total}i,"
        f"used={used}i,used_percent={used / total * 100!r} {ts}"
    )
    for device, path in (("sda1", "/"), ("sdb1", "/data")):
        disk_used = rng.randrange(10**10, 10**11)
        lines.append(
            f"disk,device={device},fstype=ext4,host={host},mode=rw,path={path} "
            f"free={2 * 10**11 - disk_used}i,inodes_free={rng.randrange(10**7)}i,"
            f"inodes_total=12500000i,inodes_used={rng.randrange(10**6)}i,total={2 * 10**11}i,"
            f"used={disk_used}i,used_percent={disk_used / (2 * 10**11) * 100!r} {ts}"
        )
    for interface in ("eth0", "eth1"):
        lines.append(
            f"net,host={host},interface={interface} bytes_recv={rng.randrange(10**12)}i,"
            f"bytes_sent={rng.randrange(10**12)}i,drop_in=0i,drop_out=0i,err_in=0i,err_out=0i,"
            f"packets_recv={rng.randrange(10**9)}i,packets_sent={rng.randrange(10**9)}i {ts}"
        )
    return lines


@dataclass(frozen=True)
class Bodies:
    """The bodies on disk and the wrk listing of each target."""

    lines_per_body: int
    largest_raw: int
    raw_bytes_per_line: float
    gzip_ratio: float
    tidegate: Path
    influxd: Path


def write_bodies(s: Setup, lines: int) -> Bodies:
    """One gzip body of `lines` lines per agent (device); the listings for wrk."""
    rng = random.Random(20)
    body_dir = s.workdir / "lp-bodies"
    body_dir.mkdir(parents=True, exist_ok=True)
    tidegate, influxd = [], []
    raw_total = gz_total = largest = 0
    for n, (tenant, device) in enumerate(device_keys(s)):
        rounds = -(-lines // ROUND_LINES)
        text = [
            line
            for r in range(rounds)
            for line in agent_round(rng, f"host-{device}", START_NS + r * ROUND_NS)
        ][:lines]
        raw = ("\n".join(text) + "\n").encode()
        packed = gzip.compress(raw, compresslevel=6)
        path = body_dir / f"{n:04d}.lp.gz"
        path.write_bytes(packed)
        raw_total += len(raw)
        gz_total += len(packed)
        largest = max(largest, len(raw))
        token = f"Authorization: Token {device}:{s.token_of[(tenant, device)]}"
        route = f"/api/v2/write?bucket={tenant}&org=bench&precision=ns"
        tidegate.append("\t".join((str(path), route, *LP_HEADERS, token)))
        influxd.append("\t".join((str(path), f"/write?db={INFLUX_DB}&precision=ns", *LP_HEADERS)))
    listings = []
    for name, entries in (("tidegate", tidegate), ("influxd", influxd)):
        listing = s.workdir / f"{name}.txt"
        listing.write_text("\n".join(entries) + "\n")
        listings.append(listing)
    count = len(tidegate) * lines
    return Bodies(
        lines, largest, round(raw_total / count, 1), round(raw_total / gz_total, 1), *listings
    )


def warm(url: str, listing: Path) -> None:
    """Send every body once (series created, credentials cached); each must answer 204."""
    with httpx.Client(base_url=url, timeout=60.0) as c:
        for entry in listing.read_text().splitlines():
            path, route, *headers = entry.split("\t")
            r = c.post(
                route,
                content=Path(path).read_bytes(),
                headers=dict(h.split(": ", 1) for h in headers),
            )
            if r.status_code != 204:
                raise RuntimeError(f"warm-up {route} refused: {r.status_code} {r.text[:300]}")


@dataclass(frozen=True)
class Target:
    """What wrk drives: its URL and listing, the processes whose CPU counts, and its own count
    of the lines it took so far."""

    name: str
    url: str
    listing: Path
    cpu: dict[str, int]
    lines: Callable[[], int]
    # Lines refused so far, per reason (tidegate; influxd's refusals are wrk's HTTP errors).
    refused: Callable[[], dict[str, int]] = dict


def influxd_points(url: str) -> int:
    """Points influxd was asked to write so far (`/debug/vars`, `write.pointReq`)."""
    r = httpx.get(f"{url}/debug/vars", timeout=10.0)
    r.raise_for_status()
    return int(r.json()["write"]["values"]["pointReq"])


def phase(target: Target, s: Setup, round_: int) -> dict[str, Any]:
    """One saturated wrk phase against `target`."""
    before, refused_before = target.lines(), target.refused()
    cpu = CpuMeter(target.cpu)
    cpu.start()
    result = wrk(target.url, target.listing, s.duration, s.connections, s.threads)
    cpu.stop()
    lines = target.lines() - before
    refused = {
        reason: n - refused_before.get(reason, 0)
        for reason, n in target.refused().items()
        if n > refused_before.get(reason, 0)
    }
    seconds = result["duration_us"] / 1e6
    row = {
        "target": target.name,
        "round": round_,
        "lines": lines,
        "lines_per_s": round(lines / seconds),
        "req_per_s": round(result["requests"] / seconds, 1),
        "http_errors": result["status_errors"] + result["read_errors"] + result["timeouts"],
        "refused_lines": refused,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "cpu_s_per_100k": cpu.per_100k(lines),
        "seconds": round(seconds, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A target's rounds as one row of their means."""
    keys = ("lines_per_s", "req_per_s", "p50_ms", "p99_ms")
    out = dict(rows[0], round=f"mean of {len(rows)}", **means(rows, keys))
    out["http_errors"] = sum(r["http_errors"] for r in rows)
    refused: dict[str, int] = {}
    for r in rows:
        for reason, n in r["refused_lines"].items():
            refused[reason] = refused.get(reason, 0) + n
    out["refused_lines"] = refused
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The phases and means as a Markdown table, then tidegate's rate over influxd's."""
    head = (
        "| target | round | lines/s | req/s | p50 ms | p99 ms | CPU s per 100k lines "
        "| HTTP errors | refused lines |\n|---|---|---:|---:|---:|---:|---|---:|---|\n"
    )
    body = "".join(
        f"| {r['target']} | {r['round']} | {r['lines_per_s']:,.0f} | {r['req_per_s']:,} "
        f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
        f"| {', '.join(f'{k} {v}' for k, v in r['cpu_s_per_100k'].items())} "
        f"| {r['http_errors']} "
        f"| {', '.join(f'{k} {v}' for k, v in r['refused_lines'].items()) or '-'} |\n"
        for r in rows
    )
    means = {r["target"]: r["lines_per_s"] for r in rows if str(r["round"]).startswith("mean")}
    ratio = ""
    if means.get("influxd"):
        ratio = f"\ntidegate / influxd lines/s: {means['tidegate'] / means['influxd']:.2f}\n"
    return head + body + ratio


def main() -> None:
    """Parse arguments, start influxd and a gateway, run the rounds, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=30, help="seconds per phase")
    p.add_argument("--rounds", type=int, default=3, help="saturated phases per target")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    p.add_argument(
        "--agents", dest="devices", type=int, default=20, help="Telegraf agents (devices)"
    )
    p.add_argument("--tenants", type=int, default=1, help="tenants the agents are spread over")
    p.add_argument("--lines", type=int, default=5000, help="lines per body")
    p.add_argument("--durability", default="wal-interval", choices=sorted(DURABILITIES))
    p.add_argument("--sink", default="lp", choices=("lp", "influx"), help="tidegate's sink")
    p.add_argument("--out", type=Path, help="append JSON lines and the table here")
    args = p.parse_args()
    # One body per agent, each agent a device.
    s = new_setup(args, 1, args.devices, "tidegate-lp-load-")
    workdir = s.workdir
    influx = InfluxDB()
    gw: GatewayProcess | None = None
    rows: list[dict[str, Any]] = []
    try:
        influx.start()
        influx.query(None, f"CREATE DATABASE {INFLUX_DB}")
        bodies = write_bodies(s, args.lines)
        print(
            f"{args.devices} bodies of {args.lines} lines, {bodies.raw_bytes_per_line} B per "
            f"line, gzip {bodies.gzip_ratio}x",
            flush=True,
        )
        # Every connection's body is buffered at once at worst: a tenant's share must hold them
        # all (twice: those in flight to the sink too), or the route answers 503 by design; the
        # default share (16 MiB) is ~20 such bodies.
        in_flight = 2 * args.connections * bodies.largest_raw
        env = {
            "TIDEGATE_DATA_DIR": str(workdir / "gateway" / "data"),
            "TIDEGATE_CORE": "rust",
            "TIDEGATE_LOG_LEVEL": "warning",
            "TIDEGATE_MAX_BODY_BYTES": str(max(1 << 20, bodies.largest_raw)),
            "TIDEGATE_BUFFER_MAX_BYTES": str(max(64 << 20, in_flight)),
            "TIDEGATE_TENANT_MAX_BYTES": str(max(16 << 20, in_flight)),
            **DURABILITIES[args.durability],
        }
        if args.sink == "influx":
            env |= {"INFLUXDB_URL": influx.url, "INFLUX_API": "v1"}
        provision(env, s)
        gw = started = run_gateway(env, workdir / "gateway")
        cpu = {"gateway": gw.proc.pid}
        if args.sink == "influx":
            cpu["influxd"] = influx.pid
        targets = [
            Target(
                "tidegate",
                gw.url,
                bodies.tidegate,
                cpu,
                lambda: int(gateway_stats(started)["accepted"]),
                lambda: dict(gateway_stats(started)["rejected"]),
            ),
            Target(
                "influxd",
                influx.url,
                bodies.influxd,
                {"influxd": influx.pid},
                lambda: influxd_points(influx.url),
            ),
        ]
        for target in targets:
            warm(target.url, target.listing)
        by_target: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for round_ in range(1, args.rounds + 1):
            for target in targets if round_ % 2 else targets[::-1]:
                by_target[target.name].append(phase(target, s, round_))
        rows = [r for entry in by_target.values() for r in entry]
        rows += [mean_row(entry) for entry in by_target.values()]
    finally:
        if gw is not None:
            gw.stop()
        influx.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, table(rows), args.out)


if __name__ == "__main__":
    main()
