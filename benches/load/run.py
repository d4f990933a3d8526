"""End-to-end load run: one gateway process (one uvicorn worker) under wrk in another process.

For each combination of --cores x --sinks x --registries x --durability (the log needs the
Rust core): provision the devices, start `python -m tidegate serve`, warm the auth cache with
every body once, then
1. saturate: wrk -c CONNECTIONS for DURATION s -> accepted msgs/s (from the gateway's own
   /ingest/v1/stats), latency percentiles (wrk), RSS at start and end;
2. paced (unless --paced-rate 0): a fixed offered load, by default 75,000 msgs/s (half the
   150,000 target), or `half`: half the first run's saturated rate -> latency percentiles.
With the write-ahead log, each phase also reports records per fsync.

`--modes direct,nats`: NATS mode runs a nats-server (`--nats-sync always` as the shipped config,
and/or `default`: JetStream's 2-minute sync), one edge (`serve --mode nats`) under wrk and one
`tidegate worker` writing to the sink; after each phase the bench waits until the worker has
written every accepted message. Every phase reports CPU seconds per 100k accepted messages per
process (gateway or edge, worker, nats-server, influxd) and for the HTTP process's event-loop
thread alone (`gateway loop` or `edge loop`, the thread that bounds its rate), NATS mode also the
publish-to-sink latency (JetStream store time to the worker's write) and the worker's rate
including its drain.

    python benches/load/run.py --cores rust,python --sinks lp,influx --registries sqlite,postgres

With --baseline GIT_REF, that commit is checked out (a git worktree in a temp dir), built and
installed into its own venv, and every combination runs on the baseline and then on the working
tree, side by side in one run on the same bodies:

    python benches/load/run.py --cores rust --baseline base-c4f33ef --paced-rate 0

`--alternate PAIRS` (direct mode, saturated phases only) starts the baseline and the working tree,
each with every --durability, at once and lets them all take turns, PAIRS runs each, then prints
a `mean of PAIRS` row per build and durability: on a shared machine whose speed drifts within
minutes, only alternating runs compare fairly. With memory mode among the durabilities, each
logged run also shows its share of the same build's memory-mode run of that turn (`of memory
mode`), and its mean row the median of those shares with their range.

    python benches/load/run.py --cores rust --baseline base-c4f33ef --alternate 4 --duration 10

`--ceiling` also starts the HTTP ceiling (benches/load/ceiling.py: a Starlette route that only
reads the bodies, one uvicorn worker) and runs it under the same load: once before the matrix,
or with --alternate as one more turn of every pair. Each row then shows its share of the
ceiling's mean rate:

    python benches/load/run.py --cores rust --durability memory,wal-interval --alternate 3 \
        --duration 10 --paced-rate 0 --ceiling

`--seeds` also starts the per-message approach tidegate replaces (benches/load/seeds.py: the
original design's batch route, pydantic models and one message at a time in Python) under the
same load, the same way, and prints each row's speed-up over it:

    python benches/load/run.py --cores rust --durability wal-interval --alternate 2 \
        --duration 10 --paced-rate 0 --ceiling --seeds

Prints one JSON object per phase and a Markdown table at the end (also written to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(HERE)]

from gateway import GatewayProcess, poll, run_gateway  # noqa: E402
from procs import CpuMeter, Source  # noqa: E402
from services import InfluxDB, NatsServer, PostgresCluster, free_port  # noqa: E402
from test_nats_stream import set_up  # noqa: E402
from tidegate.config import Config  # noqa: E402
from tidegate.store import open_registry  # noqa: E402

LUA = HERE / "batch.lua"
# Each reference app's script and its rows' build name.
REFERENCE_APPS = {
    "ceiling": (HERE / "ceiling.py", "http ceiling"),
    "seeds": (HERE / "seeds.py", "seeds approach"),
}
BATCH = 100
WORKING = "working tree"


@dataclass(frozen=True)
class Build:
    """What serves: the working tree (`python` None: this interpreter), or a baseline ref built
    into its own venv."""

    name: str
    python: str | None = None


def build_baseline(ref: str, workdir: Path) -> Build:
    """Check `ref` out into a git worktree under `workdir` and install it (release build of the
    core) into a venv of its own."""
    tree = workdir / "baseline-src"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True
    )
    venv = workdir / "baseline-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CARGO_TARGET_DIR": str(workdir / "baseline-target")}
    env.pop("VIRTUAL_ENV", None)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, env=env)
    subprocess.run([*pip, str(tree)], check=True, env=env)
    return Build(ref, str(venv / "bin" / "python"))


def remove_baseline(workdir: Path) -> None:
    """Remove the baseline's git worktree (its venv goes with `workdir`)."""
    tree = workdir / "baseline-src"
    if tree.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )


@dataclass
class Setup:
    """Load shape, shared by every run."""

    devices: int
    tenants: int
    devices_per_batch: int
    bodies: int
    duration: int
    connections: int
    threads: int
    workdir: Path
    discard_lp: bool = False
    token_of: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One combination of the matrix, with the services it may use."""

    core: str
    sink: str
    registry: str
    durability: str
    pg: PostgresCluster | None
    influx: InfluxDB | None


def new_setup(args: argparse.Namespace, devices_per_batch: int, bodies: int, prefix: str) -> Setup:
    """The Setup of a run from its arguments (`devices`, `tenants`, `duration`, `connections`,
    `threads`), in a new temp dir, each device's token fixed; exits when wrk is missing."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    s = Setup(
        args.devices,
        args.tenants,
        devices_per_batch,
        bodies,
        args.duration,
        args.connections,
        args.threads,
        Path(tempfile.mkdtemp(prefix=prefix)),
    )
    s.token_of = {k: f"tok-{k[0]}-{k[1]}-{'x' * 24}" for k in device_keys(s)}
    return s


def device_keys(s: Setup) -> list[tuple[str, str]]:
    """`devices` devices spread evenly over `tenants` tenants."""
    return [(f"tenant{i % s.tenants}", f"dev{i:05d}") for i in range(s.devices)]


def write_bodies(s: Setup) -> Path:
    """Pre-generate `bodies` batch bodies; each holds BATCH messages from `devices_per_batch`
    devices of one tenant (a forwarder per site). Returns the file listing them for wrk."""
    keys = device_keys(s)
    by_tenant: dict[str, list[str]] = {}
    for tenant, device in keys:
        by_tenant.setdefault(tenant, []).append(device)
    tenants = sorted(by_tenant)
    rng = random.Random(7)
    paths = []
    body_dir = s.workdir / "bodies"
    body_dir.mkdir(parents=True, exist_ok=True)
    for b in range(s.bodies):
        tenant = tenants[b % len(tenants)]
        devs = by_tenant[tenant]
        start = (b // len(tenants)) * s.devices_per_batch % len(devs)
        chosen = [devs[(start + k) % len(devs)] for k in range(s.devices_per_batch)]
        messages = []
        for m in range(BATCH):
            device = chosen[m % len(chosen)]
            messages.append(
                {
                    "tenant_id": tenant,
                    "device_id": device,
                    "msg_type": "telemetry",
                    "provision_token": s.token_of[(tenant, device)],
                    "site_id": f"site-{device}",
                    "seq": b * BATCH + m,
                    "metrics": {
                        "temperature": round(rng.uniform(-20, 40), 2),
                        "humidity": round(rng.uniform(0, 100), 1),
                        "voltage": round(rng.uniform(3.0, 4.2), 3),
                        "rssi": rng.randint(-110, -40),
                        "door_open": rng.random() < 0.1,
                    },
                }
            )
        path = body_dir / f"{b:04d}.json"
        path.write_bytes(json.dumps({"messages": messages}, separators=(",", ":")).encode())
        paths.append(str(path))
    listing = s.workdir / "bodies.txt"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def provision(env: dict[str, str], s: Setup) -> None:
    """Register the tenants and devices with a limit far above the load (tokens fixed)."""
    cfg = Config.from_env(env)

    async def run() -> None:
        reg = await open_registry(cfg)
        try:
            await reg.migrate()
            for t in sorted({t for t, _ in device_keys(s)}):
                await reg.add_tenant(t)
            for tenant, device in device_keys(s):
                await reg.add_device(
                    tenant,
                    device,
                    f"site-{device}",
                    rps=1e9,
                    burst=1_000_000_000,
                    token=s.token_of[(tenant, device)],
                )
        finally:
            await reg.close()

    asyncio.run(run())


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return int(match.group(1)) if match else 0


class RssSampler(threading.Thread):
    """Samples a gateway's RSS, its buffered bytes and the size of its write-ahead log once a
    second; with `discard_lp`, also deletes the embedded sink's files, so a long saturated run
    (~1 GB of line protocol per 10 s) does not fill the disk: the sink's writes cost the same,
    and a nearly full file system would slow them."""

    def __init__(self, gw: GatewayProcess, discard_lp: bool = False) -> None:
        super().__init__(daemon=True)
        self.gw = gw
        self.discard_lp = discard_lp
        self.samples: list[int] = []
        self.buffered_bytes: list[int] = []
        self.wal_bytes: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            self.samples.append(rss_kib(self.gw.proc.pid))
            stats = gateway_stats(self.gw)
            self.buffered_bytes.append(stats["buffer_depth"]["bytes_counted"])
            wal = stats.get("wal")
            if wal:
                self.wal_bytes.append(wal["bytes"])
            if self.discard_lp:
                # An append in progress keeps its file open; the next one creates it anew.
                for path in (self.gw.data_dir / "lp").glob("*/*.lp"):
                    path.unlink(missing_ok=True)


def wrk(
    url: str, listing: Path, duration: int, connections: int, threads: int, delay_ms: int = 0
) -> dict[str, Any]:
    """Run wrk with the batch script; its `done()` prints one WRK_JSON line."""
    env = {**os.environ, "BODIES_LIST": str(listing), "DELAY_MS": str(delay_ms)}
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            out: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
            return out
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


@dataclass
class Procs:
    """The processes of one run: the HTTP process under wrk, and in NATS mode its worker."""

    gw: GatewayProcess
    cpu: dict[str, Source]
    worker: GatewayProcess | None = None

    def worker_stats(self, reset_latency: bool = False) -> dict[str, Any]:
        """The worker's /stats (NATS mode)."""
        assert self.worker is not None
        params = {"reset_latency": "1"} if reset_latency else {}
        r = httpx.get(f"{self.worker.url}/stats", params=params, timeout=10.0)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


def gateway_stats(gw: GatewayProcess) -> dict[str, Any]:
    """/ingest/v1/stats from the ops listener, or from the public one for a baseline built
    before the ops listener existed."""
    try:
        return gw.stats()
    except httpx.ConnectError:
        out: dict[str, Any] = httpx.get(f"{gw.url}/ingest/v1/stats", timeout=10.0).json()
        return out


def measure(
    procs: Procs,
    listing: Path,
    duration: int,
    connections: int,
    threads: int,
    delay_ms: int,
    discard_lp: bool = False,
) -> dict[str, Any]:
    """One wrk phase; accepted msgs/s from the gateway's own counters, CPU per process, and in
    NATS mode the wait until the worker wrote everything accepted."""
    gw = procs.gw
    before = gateway_stats(gw)
    written_before = procs.worker_stats(reset_latency=True)["writes_ok"] if procs.worker else 0
    cpu = CpuMeter(procs.cpu)
    cpu.start()
    sampler = RssSampler(gw, discard_lp)
    rss_start = rss_kib(gw.proc.pid)
    sampler.start()
    result = wrk(gw.url, listing, duration, connections, threads, delay_ms)
    sampler.stopped.set()
    sampler.join()
    after = gateway_stats(gw)
    seconds = result["duration_us"] / 1e6
    accepted = after["accepted"] - before["accepted"]
    nats: dict[str, Any] = {}
    if procs.worker is not None:
        drain_start = time.monotonic()
        worker = poll(
            procs.worker_stats,
            lambda st: st["writes_ok"] - written_before >= accepted,
            wait_s=600,
        )
        drain_s = time.monotonic() - drain_start
        latency = worker["delivery_latency"]
        nats = {
            "drain_s": round(drain_s, 2),
            "worker_msgs_per_s": round(accepted / (seconds + drain_s)),
            "delivery_p50_ms": latency.get("p50_ms"),
            "delivery_p99_ms": latency.get("p99_ms"),
        }
    cpu.stop()
    rejected = after["rejected_total"] - before["rejected_total"]
    wal_after, wal_before = after.get("wal") or {}, before.get("wal") or {}
    fsyncs = wal_after.get("fsyncs", 0) - wal_before.get("fsyncs", 0)
    synced = wal_after.get("synced_records", 0) - wal_before.get("synced_records", 0)
    return {
        "requests": result["requests"],
        "req_per_s": round(result["requests"] / seconds, 1),
        "accepted_msgs": accepted,
        "accepted_msgs_per_s": round(accepted / seconds),
        "rejected_msgs": rejected,
        "http_errors": result["status_errors"] + result["read_errors"] + result["timeouts"],
        "p50_ms": result["p50_us"] / 1000,
        "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "p999_ms": result["p999_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
        "rss_start_mib": round(rss_start / 1024, 1),
        "rss_end_mib": round(rss_kib(gw.proc.pid) / 1024, 1),
        "rss_max_mib": round(max(sampler.samples or [rss_start]) / 1024, 1),
        # One sample per 30 s: what "flat over a long run" is judged on.
        "rss_trace_mib": [round(kib / 1024, 1) for kib in sampler.samples[::30]],
        # Beside it, what the buffers held then: whether RSS follows the sink falling behind.
        "buffered_trace_mib": [round(b / 2**20, 1) for b in sampler.buffered_bytes[::30]],
        "buffered_max_mib": round(max(sampler.buffered_bytes or [0]) / 2**20, 1),
        # The log's size: bounded when its sink keeps up, whatever the run's length.
        "wal_max_mib": round(max(sampler.wal_bytes) / 2**20, 1) if sampler.wal_bytes else None,
        "fsyncs": fsyncs,
        "records_per_fsync": round(synced / fsyncs, 1) if fsyncs else None,
        # Segments retired in the phase (recycled as spares or deleted) and records copied
        # forward past half the cap: a log that outgrows its cap at this rate shows here.
        "wal_segments": {
            key: wal_after.get(key, 0) - wal_before.get(key, 0)
            for key in ("recycled_segments", "deleted_segments", "compacted_records")
        },
        "cpu_s": cpu.used,
        "cpu_s_per_100k": cpu.per_100k(accepted),
        **nats,
        "connections": connections,
        "delay_ms": delay_ms,
        "seconds": round(seconds, 2),
    }


def paced(procs: Procs, listing: Path, duration: int, rate: float) -> dict[str, Any]:
    """Latency at a fixed offered load of `rate` msgs/s. wrk is closed-loop, so each of C
    connections waits `delay` ms (whole ms) between requests; C is chosen so one connection's
    period is >= 20 ms (rounding error <= 5%), and a 5 s calibration run corrects the delay
    for the response time."""
    req_rate = rate / BATCH
    connections = max(1, math.ceil(req_rate * 0.020))
    period_ms = connections * 1000 / req_rate
    delay = max(0, round(period_ms - 1))
    calib = wrk(procs.gw.url, listing, 5, connections, 1, delay)
    achieved = calib["requests"] / (calib["duration_us"] / 1e6)
    response_ms = connections * 1000 / achieved - delay
    delay = max(0, round(period_ms - response_ms))
    res = measure(procs, listing, duration, connections, 1, delay)
    return {"phase": "paced", "target_msgs_per_s": round(rate), **res}


def warm(gw: GatewayProcess, listing: Path) -> None:
    """Send every body once: the auth cache then holds every device."""
    with httpx.Client(base_url=gw.url, timeout=30.0) as c:
        for path in listing.read_text().split():
            r = c.post("/ingest/v1/batch", content=Path(path).read_bytes())
            if r.status_code != 202 or r.json()["rejected"]:
                raise RuntimeError(f"warm-up batch refused: {r.status_code} {r.text[:300]}")


DURABILITIES = {
    "memory": {"TIDEGATE_DURABILITY": "memory"},
    "wal-interval": {"TIDEGATE_DURABILITY": "wal", "TIDEGATE_WAL_SYNC": "interval"},
    "wal-always": {"TIDEGATE_DURABILITY": "wal", "TIDEGATE_WAL_SYNC": "always"},
}


@dataclass
class Running:
    """One build's started processes, its bodies and the tags of its rows."""

    name: str
    procs: Procs
    listing: Path
    tags: dict[str, str]

    def stop(self) -> None:
        """Stop the gateway (and worker); print the log tail of one that did not exit 0."""
        for proc in (self.procs.gw, self.procs.worker):
            code = proc.stop() if proc is not None else 0
            if code != 0 and proc is not None:
                tail = proc.logs()[-3000:]
                print(f"{self.name} {proc.url} exited {code}:\n{tail}", file=sys.stderr)


def start(s: Setup, build: Build, case: Case, nats: NatsServer | None = None) -> Running:
    """Provision, start and warm one build. With `nats`, the HTTP process is a NATS-mode edge
    and a worker writes to the sink."""
    core, sink, registry, durability = case.core, case.sink, case.registry, case.durability
    pg, influx = case.pg, case.influx
    mode = "direct" if nats is None else f"nats-{nats.sync_interval or 'default'}"
    kind = durability if nats is None else mode
    name = f"{'baseline' if build.python else 'working'}-{core}-{sink}-{registry}-{kind}"
    workdir = s.workdir / name
    env = {"TIDEGATE_CORE": core, "TIDEGATE_DATA_DIR": str(workdir / "data")}
    if nats is None:
        env.update(DURABILITIES[durability])
    else:
        env["TIDEGATE_MODE"] = "nats"
    env["TIDEGATE_LOG_LEVEL"] = "warning"
    if registry == "postgres":
        assert pg is not None
        env["DATABASE_URL"] = pg.url(pg.create_database())
    if sink == "influx":
        assert influx is not None
        env.update(
            {"INFLUXDB_URL": influx.url, "INFLUX_API": "v1", "TIDEGATE_INFLUX_CREATE_DB": "1"}
        )
    provision(env, s)
    listing = write_bodies(s)
    if nats is not None:
        # The streams as a worker creates them: the edge may only publish.
        asyncio.run(set_up(nats))
    gw = run_gateway(env | (nats.edge_env if nats else {}), workdir, python=build.python)
    http = "gateway" if nats is None else "edge"
    # The event loop's thread (uvicorn's main thread) bounds the rate: its share of a phase
    # says whether a slow run was the loop waiting or the same work running slower.
    procs = Procs(gw, {http: gw.proc.pid, f"{http} loop": (gw.proc.pid, gw.proc.pid)})
    tags = {
        "build": build.name,
        "core": core,
        "sink": sink,
        "registry": registry,
        "durability": durability if nats is None else "-",
        "mode": mode,
    }
    running = Running(name, procs, listing, tags)
    try:
        if nats is not None:
            # A data directory of its own (one owner each): with SQLite, the worker's registry
            # is empty, which the edge-validated line protocol it consumes does not need.
            worker_env = {**env, "TIDEGATE_DATA_DIR": str(workdir / "worker" / "data")}
            procs.worker = run_gateway(
                worker_env | nats.worker_env,
                workdir / "worker",
                command="worker",
                python=build.python,
            )
            procs.cpu |= {"worker": procs.worker.proc.pid, "nats-server": nats.pid}
        if influx is not None and sink == "influx":
            procs.cpu["influxd"] = influx.pid
        warm(gw, listing)
    except BaseException:
        running.stop()
        raise
    return running


def saturated(s: Setup, run: Running) -> dict[str, Any]:
    """One saturated phase of a started build, printed as it ends."""
    sat = measure(run.procs, run.listing, s.duration, s.connections, s.threads, 0, s.discard_lp)
    row = {**run.tags, "phase": "saturated", **sat}
    print(json.dumps(row), flush=True)
    return row


def run_one(
    s: Setup,
    build: Build,
    case: Case,
    paced_rate: str,
    first_saturated: list[float],
    nats: NatsServer | None = None,
) -> list[dict[str, Any]]:
    """Start, measure (saturated, then paced), stop."""
    run = start(s, build, case, nats)
    try:
        results = [saturated(s, run)]
        first_saturated.append(results[0]["accepted_msgs_per_s"])
        rate = first_saturated[0] / 2 if paced_rate == "half" else float(paced_rate)
        if rate:
            results.append({**run.tags, **paced(run.procs, run.listing, s.duration, rate)})
            print(json.dumps(results[-1]), flush=True)
    finally:
        run.stop()
    return results


class Reference:
    """A reference app in a process of its own, with this interpreter, under the same load as
    the gateways: `ceiling` (ceiling.py, a route that only reads the bodies) or `seeds`
    (seeds.py, the per-message approach; it is given every device's token and site)."""

    def __init__(self, kind: str, s: Setup) -> None:
        self.kind = kind
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (s.workdir / f"{kind}.log").open("wb")
        args = [self.url.rsplit(":", 1)[1]]
        if kind == "seeds":
            devices = s.workdir / "seeds-devices.json"
            devices.write_text(
                json.dumps(
                    {
                        f"{tenant}/{device}": {"token": token, "site_id": f"site-{device}"}
                        for (tenant, device), token in s.token_of.items()
                    }
                )
            )
            args += [str(devices), str(s.workdir / "seeds-sink.lp")]
        self.proc = subprocess.Popen(
            [sys.executable, str(REFERENCE_APPS[kind][0]), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        poll(self._up, wait_s=60)

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def phase(self, s: Setup, listing: Path) -> dict[str, Any]:
        """One saturated phase; every 202 counts as BATCH messages (every body is valid)."""
        cpu = CpuMeter({self.kind: self.proc.pid})
        cpu.start()
        rss_start = rss_kib(self.proc.pid)
        result = wrk(self.url, listing, s.duration, s.connections, s.threads)
        cpu.stop()
        seconds = result["duration_us"] / 1e6
        messages = (result["requests"] - result["status_errors"]) * BATCH
        rss_end = round(rss_kib(self.proc.pid) / 1024, 1)
        row = {
            "build": REFERENCE_APPS[self.kind][1],
            **dict.fromkeys(("mode", "core", "sink", "registry", "durability"), "-"),
            "phase": self.kind,
            "requests": result["requests"],
            "req_per_s": round(result["requests"] / seconds, 1),
            "accepted_msgs_per_s": round(messages / seconds),
            "rejected_msgs": 0,
            "http_errors": result["status_errors"] + result["read_errors"] + result["timeouts"],
            **{f"p{p}_ms": result[f"p{p}_us"] / 1000 for p in ("50", "90", "99", "999")},
            "rss_start_mib": round(rss_start / 1024, 1),
            "rss_end_mib": rss_end,
            "rss_max_mib": rss_end,
            "records_per_fsync": None,
            "cpu_s_per_100k": cpu.per_100k(messages),
            "seconds": round(seconds, 2),
        }
        print(json.dumps(row), flush=True)
        return row

    def stop(self) -> None:
        """Stop the app and close its log."""
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def with_shares(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gateway row with its share of the ceiling rows' mean rate and its speed-up over the
    seeds rows' mean rate (when there are any)."""
    means = {
        kind: statistics.mean(rates)
        for kind in REFERENCE_APPS
        if (rates := [r["accepted_msgs_per_s"] for r in rows if r["phase"] == kind])
    }
    out = []
    for r in rows:
        if r["phase"] not in REFERENCE_APPS:
            rate = r["accepted_msgs_per_s"]
            if "ceiling" in means:
                r = {**r, "ceiling_share": round(rate / means["ceiling"], 3)}
            if "seeds" in means:
                r = {**r, "over_seeds": round(rate / means["seeds"], 1)}
        out.append(r)
    return out


def run_alternating(
    s: Setup, entries: list[tuple[Build, Case]], pairs: int, references: list[Reference]
) -> list[dict[str, Any]]:
    """Every (build, case) started and warmed at once, then `pairs` saturated phases each, all
    of them (and the reference apps, if given) taking turns (and turns about who goes first): on a
    machine whose speed drifts, a drift hits all alike. Ends with one row per (build, case) of
    the runs' means."""
    runs: list[Running] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    reference_rows: list[dict[str, Any]] = []
    try:
        for build, case in entries:
            runs.append(start(s, build, case))
            rows[runs[-1].name] = []
        for pair in range(pairs):
            turns: list[Running | Reference] = [*runs, *references]
            for run in turns if pair % 2 == 0 else turns[::-1]:
                if isinstance(run, Reference):
                    reference_rows.append(run.phase(s, runs[0].listing))
                else:
                    rows[run.name].append(saturated(s, run))
    finally:
        for run in runs:
            run.stop()
    with_memory = of_memory_mode(list(rows.values()))
    return (
        [row for entry in with_memory for row in entry]
        + [mean_row(entry) for entry in with_memory if entry]
        + reference_rows
    )


def of_memory_mode(entries: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Each logged run's rate as a share of memory mode's run of the same build and turn: runs
    side by side in time, so a drift of the machine moves both (the target compares them)."""
    memory = {same_build(e[0]): e for e in entries if e and e[0]["durability"] == "memory"}
    out = []
    for entry in entries:
        base = memory.get(same_build(entry[0])) if entry else None
        if base is None or base is entry:
            out.append(entry)
            continue
        out.append(
            [
                {**r, "memory_share": round(r["accepted_msgs_per_s"] / m["accepted_msgs_per_s"], 3)}
                for r, m in zip(entry, base, strict=True)
            ]
        )
    return out


def same_build(row: dict[str, Any]) -> tuple[str, ...]:
    """What a row shares with memory mode's row of the same build: all but the durability."""
    return tuple(str(row[k]) for k in ("build", "mode", "core", "sink", "registry"))


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of a build's alternating runs, as a row of its own (phase `mean of N`)."""
    keys = ("accepted_msgs_per_s", "req_per_s", "p50_ms", "p99_ms", "p999_ms")
    out = dict(rows[0], phase=f"mean of {len(rows)}", **means(rows, keys))
    out["accepted_msgs_per_s"] = round(out["accepted_msgs_per_s"])
    if "memory_share" in rows[0]:
        shares = [r["memory_share"] for r in rows]
        out["memory_share"] = statistics.median(shares)
        out["memory_share_range"] = (min(shares), max(shares))
    return out


def means(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Over `rows`, the mean of each of `keys` and of each process's `cpu_s_per_100k`."""
    out: dict[str, Any] = {key: round(statistics.mean(r[key] for r in rows), 2) for key in keys}
    out["cpu_s_per_100k"] = {
        k: round(statistics.mean(r["cpu_s_per_100k"][k] for r in rows), 3)
        for k in rows[0]["cpu_s_per_100k"]
    }
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    head = (
        "| build | mode | core | sink | registry | durability | phase | accepted msgs/s | req/s "
        "| p50 ms | p99 ms | p99.9 ms | RSS start→end (max) MiB | rejected | records/fsync "
        "| CPU s per 100k msgs | worker msgs/s | publish→sink p50/p99 ms | share of ceiling "
        "| speed-up over seeds | of memory mode |\n"
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['build']} | {r['mode']} | {r['core']} | {r['sink']} | {r['registry']} "
        f"| {r['durability']} "
        f"| {r['phase']} | {r['accepted_msgs_per_s']:,} | {r['req_per_s']:,} | {r['p50_ms']:.2f} "
        f"| {r['p99_ms']:.2f} | {r['p999_ms']:.2f} "
        f"| {r['rss_start_mib']}→{r['rss_end_mib']} ({r['rss_max_mib']}) | {r['rejected_msgs']} "
        f"| {r['records_per_fsync'] or '-'} "
        f"| {', '.join(f'{k} {v}' for k, v in r['cpu_s_per_100k'].items())} "
        f"| {r.get('worker_msgs_per_s') or '-'} "
        f"| {r.get('delivery_p50_ms') or '-'} / {r.get('delivery_p99_ms') or '-'} "
        f"| {format(r['ceiling_share'], '.1%') if 'ceiling_share' in r else '-'} "
        f"| {r.get('over_seeds', '-')} | {memory_share(r)} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def memory_share(row: dict[str, Any]) -> str:
    """A logged run's share of memory mode's (`of_memory_mode`); a mean row's is the median
    over the turns, with their range."""
    if "memory_share" not in row:
        return "-"
    share = f"{row['memory_share']:.1%}"
    if "memory_share_range" in row:
        low, high = row["memory_share_range"]
        share = f"median {share} ({low:.1%} to {high:.1%})"
    return share


def run_nats(
    s: Setup, build: Build, case: Case, args: argparse.Namespace, sync: str | None
) -> list[dict[str, Any]]:
    """One NATS-mode run on a fresh nats-server with JetStream sync `sync`."""
    nats = NatsServer(sync)
    try:
        nats.start()
        return run_one(s, build, case, args.paced_rate, [], nats)
    finally:
        nats.cleanup()


def report(rows: list[dict[str, Any]], text: str, out: Path | None) -> None:
    """Print the table `text`; append the rows as JSON lines and the table to `out`, if given."""
    print(text)
    if out:
        with out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
            f.write(text)


def main() -> None:
    """Parse arguments, run the matrix, print and write the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cores", default="rust,python")
    p.add_argument("--sinks", default="lp", help="lp (embedded files) and/or influx (1.x, v1)")
    p.add_argument("--registries", default="sqlite", help="sqlite and/or postgres")
    p.add_argument("--duration", type=int, default=30, help="seconds per phase")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--devices-per-batch", type=int, default=10)
    p.add_argument("--bodies", type=int, default=200)
    p.add_argument(
        "--durability",
        default="memory",
        help=f"one or more of {', '.join(DURABILITIES)} (TIDEGATE_DURABILITY/WAL_SYNC)",
    )
    p.add_argument(
        "--paced-rate",
        default="75000",
        help="msgs/s of the latency phase (default: half the 150k target; 0 skips it), or "
        "`half`: half the first run's saturated rate, the same for every run",
    )
    p.add_argument("--modes", default="direct", help="direct and/or nats")
    p.add_argument(
        "--nats-sync",
        default="always",
        help="NATS mode: `always` (JetStream fsyncs each publish, the shipped config) and/or "
        "`default` (every 2 minutes)",
    )
    p.add_argument(
        "--baseline",
        metavar="GIT_REF",
        help="also build this commit into its own venv and run it before the working tree",
    )
    p.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="PAIRS",
        help="direct mode, saturated only: start every build with every durability at once and "
        "run PAIRS saturated phases each, all taking turns (a fair comparison on a machine whose "
        "speed drifts); adds a `mean of PAIRS` row per build and durability",
    )
    p.add_argument(
        "--discard-lp",
        action="store_true",
        help="lp sink: delete its files once a second during saturated phases (a long run "
        "would fill the disk; the sink writes the same bytes)",
    )
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the HTTP ceiling app (a route that only reads the bodies) under the same "
        "load, and print each row's share of it",
    )
    p.add_argument(
        "--seeds",
        action="store_true",
        help="also run the per-message approach tidegate replaces (seeds.py) under the same load, "
        "and print each row's speed-up over it",
    )
    p.add_argument("--out", type=Path, help="append JSON lines and the table here")
    args = p.parse_args()
    s = new_setup(args, args.devices_per_batch, args.bodies, "tidegate-load-")
    s.discard_lp = args.discard_lp
    workdir = s.workdir
    registries = args.registries.split(",")
    sinks = args.sinks.split(",")
    pg = PostgresCluster() if "postgres" in registries else None
    influx = InfluxDB() if "influx" in sinks else None
    modes = args.modes.split(",")
    syncs = [None if v == "default" else v for v in args.nats_sync.split(",")]
    rows: list[dict[str, Any]] = []
    references: list[Reference] = []
    try:
        builds = [Build(WORKING)]
        kinds = [k for k, wanted in (("ceiling", args.ceiling), ("seeds", args.seeds)) if wanted]
        for kind in kinds:
            references.append(Reference(kind, s))
            if not args.alternate:
                rows.append(references[-1].phase(s, write_bodies(s)))
        if args.baseline:
            builds.insert(0, build_baseline(args.baseline, workdir))
        if pg:
            pg.start()
        if influx:
            influx.start()
        first_saturated: list[float] = []
        for core in args.cores.split(","):
            for sink in sinks:
                for registry in registries:
                    # The log needs the Rust core.
                    direct = [
                        Case(core, sink, registry, durability, pg, influx)
                        for durability in args.durability.split(",")
                        if "direct" in modes and (core == "rust" or durability == "memory")
                    ]
                    if args.alternate:
                        entries = [(build, case) for case in direct for build in builds]
                        rows += run_alternating(s, entries, args.alternate, references)
                        continue
                    for build in builds:
                        for case in direct:
                            rows += run_one(s, build, case, args.paced_rate, first_saturated)
                        if "nats" in modes:
                            case = Case(core, sink, registry, "memory", pg, influx)
                            for sync in syncs:
                                rows += run_nats(s, build, case, args, sync)
    finally:
        for reference in references:
            reference.stop()
        remove_baseline(workdir)
        if influx:
            influx.cleanup()
        if pg:
            pg.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, table(with_shares(rows)), args.out)


if __name__ == "__main__":
    main()
