"""NATS mode end to end: real nats-server, uvicorn edges, worker processes, InfluxDB 1.x."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import nkeys
import orjson
import pytest
from gateway import GatewayProcess, poll, provision, run_gateway
from services import InfluxDB, NatsServer, PostgresCluster
from test_nats_hostile import Device
from test_nats_stream import mqtt_publish, set_up
from tidegate import broker, broker_jwt, nats_jwt

TENANT = "acme"
DB = f"telemetry_{TENANT}"
BASE_NS = 1_795_687_200_000_000_000  # 2026-11-26T10:00:00Z
DEVICES = ("d1", "d2", "d3")


@dataclass
class Deployment:
    """Edges and workers sharing one registry (PostgreSQL) and nats-server; each process has
    its own data directory (a directory has one owner)."""

    tmp: Path
    nats: NatsServer
    influx: InfluxDB
    database_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    procs: list[GatewayProcess] = field(default_factory=list)
    names: Iterator[int] = field(default_factory=itertools.count)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment every process of the deployment shares."""
        env = {
            "TIDEGATE_MODE": "nats",
            "NATS_BROKER_DIR": str(self.nats.broker_dir),
            "DATABASE_URL": self.database_url,
            "INFLUX_FLUSH_INTERVAL_MS": "100",
            "NATS_PUBLISH_TIMEOUT_S": "1",
            "NATS_ACK_WAIT_S": "5",
            "NATS_NAK_DELAY_S": "0.5",
            "TIDEGATE_DEFAULT_RPS": "100000",
            "TIDEGATE_DEFAULT_BURST": "100000",
        }
        env |= {
            "INFLUXDB_URL": self.influx.url,
            "INFLUX_API": "v1",
            "TIDEGATE_INFLUX_CREATE_DB": "1",
            "INFLUX_RETRY_MAX_S": "0.5",
        }
        return env | extra

    def provision(self) -> None:
        """Register the tenant's devices (token = `tok-<device>`)."""
        for device in DEVICES:
            self.tokens[device] = provision(
                self.env(), TENANT, device, f"site-{device}", token=f"tok-{device}-{'x' * 16}"
            )

    def cli(self, *args: str) -> dict[str, Any]:
        """Run one `tidegate` command with the deployment's environment; its JSON output
        (CalledProcessError when it fails)."""
        out = subprocess.run(
            [sys.executable, "-m", "tidegate", *args],
            env=os.environ | self.env(),
            capture_output=True,
            check=True,
        )
        result: dict[str, Any] = orjson.loads(out.stdout)
        return result

    def mqtt_credentials(self, device: str, tenant: str = TENANT) -> dict[str, str]:
        """`tidegate device mqtt-credentials` for one device."""
        return self.cli("device", "mqtt-credentials", "--tenant", tenant, "--device", device)

    def start(self, command: str, **extra: str) -> GatewayProcess:
        """Start an edge (`serve`) or a worker (`worker`) process, as the broker's edge or
        worker user."""
        name = f"{command}{next(self.names)}"
        role = self.nats.worker_env if command == "worker" else self.nats.edge_env
        proc = run_gateway(self.env(**role, **extra), self.tmp / name, command=command)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[str]:
        """SIGTERM every process still running; the failures (exit status not 0)."""
        failures = []
        for proc in self.procs:
            if proc.proc.poll() is None:
                code = proc.stop()
                if code != 0:
                    failures.append(f"{proc.url} exited {code}:\n{proc.logs()[-3000:]}")
        return failures


@pytest.fixture
def deployment(
    tmp_path: Path, nats_server: NatsServer, influxdb: InfluxDB, postgres_url: str
) -> Iterator[Deployment]:
    """A NATS-mode deployment on InfluxDB; every process must exit 0 at teardown."""
    yield from deployed(Deployment(tmp_path, nats_server, influxdb, postgres_url))


def deployed(d: Deployment) -> Iterator[Deployment]:
    """The deployment with its devices and streams, no process running yet; at the end every
    process it started is stopped and must have exited 0."""
    if DB in d.influx.databases():
        d.influx.query(None, f'DROP DATABASE "{DB}"')
    d.provision()
    # Streams and consumer as the first worker creates them: edges may only publish.
    asyncio.run(set_up(d.nats))
    yield d
    failures = d.stop_all()
    assert not failures, "\n".join(failures)


@pytest.fixture
def edge(deployment: Deployment) -> GatewayProcess:
    """An edge of the deployment, started."""
    return deployment.start("serve")


@pytest.fixture
def worker(deployment: Deployment) -> GatewayProcess:
    """A worker of the deployment (with the default settings), started."""
    return deployment.start("worker")


def message(seq: int, token: str | None = None, device: str | None = None) -> dict[str, Any]:
    """One batch item with an explicit, unique ts (so every message is its own point)."""
    device = device or DEVICES[seq % len(DEVICES)]
    ts_ns = BASE_NS + seq * 1000
    return {
        "tenant_id": TENANT,
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": token or f"tok-{device}-{'x' * 16}",
        "site_id": f"site-{device}",
        "seq": seq,
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns // 10**9))
        + f".{ts_ns % 10**9:09d}Z",
        "metrics": {"temp": 20 + seq % 7, "ok": True},
    }


def stored_seqs(influx: InfluxDB) -> list[int]:
    """Every `seq` InfluxDB holds for the tenant, one per point."""
    if DB not in influx.databases():
        return []
    return sorted(int(r["seq"]) for r in influx.query(DB, "SELECT seq FROM telemetry"))


class Load(threading.Thread):
    """Posts 10-message batches with explicit ts until stopped; records which seqs got 202."""

    def __init__(self, edge: GatewayProcess, batch: int = 10) -> None:
        super().__init__(daemon=True)
        self.edge = edge
        self.batch = batch
        self.accepted: set[int] = set()
        self.statuses: dict[int, int] = {}
        self.stopped = threading.Event()
        self._seq = itertools.count()

    def run(self) -> None:
        with httpx.Client(base_url=self.edge.url, timeout=30.0) as client:
            while not self.stopped.is_set():
                seqs = [next(self._seq) for _ in range(self.batch)]
                body = {"messages": [message(s) for s in seqs]}
                try:
                    r = client.post("/ingest/v1/batch", content=orjson.dumps(body))
                except httpx.TransportError:
                    continue
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                if r.status_code == 202:
                    results = r.json()["results"]
                    self.accepted.update(
                        s
                        for s, res in zip(seqs, results, strict=True)
                        if res["status"] == "accepted"
                    )

    def stop(self) -> None:
        """Stop after the request in flight; wait for it."""
        self.stopped.set()
        self.join(60)


def worker_stats(worker: GatewayProcess) -> dict[str, Any]:
    """GET /stats of a worker."""
    r = httpx.get(f"{worker.url}/stats", timeout=10.0)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def wait_for_exactly(influx: InfluxDB, seqs: set[int], wait_s: float = 90.0) -> None:
    """InfluxDB ends up with exactly `seqs`, each once."""
    stored = poll(lambda: stored_seqs(influx), lambda got: len(got) >= len(seqs), wait_s)
    assert len(stored) == len(set(stored)), "a message was written twice as distinct points"
    assert set(stored) == seqs


# -- the edge ---------------------------------------------------------------------------------

MIXED = {
    "messages": [
        message(1),
        message(2, token="wrong-token-xxxxxxxxxxxx"),
        {**message(3), "metrics": {"temp": "hot"}},
        {**message(4), "site_id": "elsewhere"},
        {**message(5), "msg_type": "status"},
    ]
}


def test_the_same_batch_gets_byte_identical_responses_in_direct_and_nats_mode(
    deployment: Deployment, edge: GatewayProcess, tmp_path: Path
) -> None:
    direct_env = {
        k: v for k, v in deployment.env().items() if not k.startswith(("NATS_", "TIDEGATE_MODE"))
    }
    direct = run_gateway(
        direct_env | {"TIDEGATE_DATA_DIR": str(tmp_path / "direct")}, tmp_path / "d"
    )
    deployment.procs.append(direct)  # on the deployment's registry: its devices are known
    body = orjson.dumps(MIXED)
    answers = [gw.client().post("/ingest/v1/batch", content=body) for gw in (direct, edge)]
    assert answers[0].status_code == answers[1].status_code == 202
    assert answers[0].content == answers[1].content
    assert answers[1].json()["accepted"] == 1
    single = [
        gw.client().post(
            f"/ingest/v1/tenant/{TENANT}/device/d1/telemetry",
            content=b'{"site_id":"site-d1","metrics":{"temp":1}}',
            headers={"X-Provision-Token": deployment.tokens["d1"]},
        )
        for gw in (direct, edge)
    ]
    assert [r.status_code for r in single] == [202, 202]
    assert single[0].content == single[1].content == b'{"status":"accepted"}'
    # The edge published both: it opened no write-ahead log (direct mode did).
    assert edge.stats()["wal"] is None
    assert not (edge.data_dir / "wal").exists()
    assert direct.stats()["wal"]["appended_records"] == 2


def test_nats_down_answers_503_unavailable_and_every_202_is_in_the_stream(
    deployment: Deployment, edge: GatewayProcess
) -> None:
    client = edge.client()
    accepted = 0
    for seq in range(0, 50, 10):
        r = client.post(
            "/ingest/v1/batch", json={"messages": [message(s) for s in range(seq, seq + 10)]}
        )
        assert r.status_code == 202
        accepted += 1
    deployment.nats.stop()
    r = client.post("/ingest/v1/batch", json={"messages": [message(100), message(101)]})
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert [i["reason"] for i in r.json()["results"]] == ["UNAVAILABLE", "UNAVAILABLE"]
    single = client.post(
        f"/ingest/v1/tenant/{TENANT}/device/d1/telemetry",
        content=b'{"site_id":"site-d1","metrics":{"temp":1}}',
        headers={"X-Provision-Token": deployment.tokens["d1"]},
    )
    assert single.status_code == 503
    assert single.json()["reason"] == "UNAVAILABLE"
    assert httpx.get(f"{edge.url}/ready", timeout=30).status_code == 503
    deployment.nats.start()
    poll(lambda: httpx.get(f"{edge.url}/ready", timeout=30).status_code, lambda s: s == 200)
    assert stream_message_count(deployment.nats) == accepted
    r = client.post("/ingest/v1/batch", json={"messages": [message(200)]})
    assert r.status_code == 202
    assert stream_message_count(deployment.nats) == accepted + 1


def stream_message_count(server: NatsServer) -> int:
    """Messages in TELEMETRY now."""

    async def count() -> int:
        nc = await nats.connect(**server.connect_options(worker=True))
        try:
            return (await nc.jetstream().stream_info("TELEMETRY")).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


# -- workers ----------------------------------------------------------------------------------


def test_a_worker_sigkilled_mid_stream_and_restarted_writes_every_202_exactly_once(
    deployment: Deployment, edge: GatewayProcess, worker: GatewayProcess
) -> None:
    load = Load(edge)
    load.start()
    poll(lambda: worker_stats(worker)["worker_acked"], lambda n: n >= 20)
    worker.stop(signal.SIGKILL)
    time.sleep(0.5)
    deployment.start("worker")
    time.sleep(1.0)
    load.stop()
    assert load.accepted, load.statuses
    wait_for_exactly(deployment.influx, load.accepted)


def test_nats_server_restarted_mid_stream_loses_nothing(
    deployment: Deployment, edge: GatewayProcess, worker: GatewayProcess
) -> None:
    load = Load(edge)
    load.start()
    poll(lambda: len(load.accepted), lambda n: n >= 200)
    deployment.nats.stop(signal.SIGKILL)
    time.sleep(0.5)
    deployment.nats.start()
    poll(lambda: len(load.accepted), lambda n: n >= 400)
    load.stop()
    wait_for_exactly(deployment.influx, load.accepted)


def test_two_workers_share_one_stream_and_both_write(
    deployment: Deployment, edge: GatewayProcess, worker: GatewayProcess
) -> None:
    workers = [worker, deployment.start("worker")]
    load = Load(edge)
    load.start()
    poll(
        lambda: [worker_stats(w)["worker_acked"] for w in workers],
        lambda acked: min(acked) >= 10,
    )
    load.stop()
    wait_for_exactly(deployment.influx, load.accepted)


def test_influxdb_down_keeps_messages_in_the_stream_until_it_returns(
    deployment: Deployment, edge: GatewayProcess, worker: GatewayProcess
) -> None:
    influx = deployment.influx
    client = edge.client()
    r = client.post("/ingest/v1/batch", json={"messages": [message(s) for s in range(10)]})
    assert r.status_code == 202
    wait_for_exactly(influx, set(range(10)))
    influx.stop()
    accepted = set(range(10))
    for start in range(10, 110, 10):
        seqs = range(start, start + 10)
        r = client.post("/ingest/v1/batch", json={"messages": [message(s) for s in seqs]})
        assert r.status_code == 202
        accepted.update(seqs)
    poll(lambda: httpx.get(f"{worker.url}/ready", timeout=30).status_code, lambda s: s == 503)
    time.sleep(2.0)  # several retry rounds: nothing may be acked while nothing is written
    assert stream_message_count(deployment.nats) >= 9
    influx.start()
    wait_for_exactly(influx, accepted)
    poll(lambda: stream_message_count(deployment.nats), lambda n: n == 0)


def test_sigterm_with_influxdb_down_exits_0_and_leaves_the_messages_to_the_next_worker(
    deployment: Deployment, edge: GatewayProcess
) -> None:
    influx = deployment.influx
    worker = deployment.start("worker", TIDEGATE_SHUTDOWN_DEADLINE_S="2")
    client = edge.client()
    influx.stop()
    accepted: set[int] = set()
    for start in range(0, 50, 10):
        seqs = range(start, start + 10)
        r = client.post("/ingest/v1/batch", json={"messages": [message(s) for s in seqs]})
        assert r.status_code == 202
        accepted.update(seqs)
    poll(lambda: worker_stats(worker)["worker_fetched"], lambda n: n >= 1)
    assert worker.stop() == 0
    assert "worker_stopped" in worker.logs()
    assert not (worker.data_dir / "spill").exists()  # unwritten lines went back, not to a file
    assert stream_message_count(deployment.nats) == 5
    influx.start()
    deployment.start("worker")
    wait_for_exactly(influx, accepted)


# -- envelopes and MQTT -----------------------------------------------------------------------


def envelope(device: str, token: str, metrics: object, seq: int, tenant: str = TENANT) -> bytes:
    """The seed's envelope around a single-message payload."""
    return orjson.dumps(
        {
            "topic": f"tenant/{tenant}/device/{device}/telemetry",
            "tenant_id": tenant,
            "device_id": device,
            "msg_type": "telemetry",
            "username": "",
            "payload": {
                "site_id": f"site-{device}",
                "seq": seq,
                "metrics": metrics,
                "provision_token": token,
            },
            "ts": 1764150000000,
        }
    )


def rejected(server: NatsServer) -> list[tuple[str, str, str, bytes]]:
    """`(subject, reason, detail, data)` of every message in TELEMETRY_REJECTED."""

    async def read() -> list[tuple[str, str, str, bytes]]:
        nc = await nats.connect(**server.connect_options(worker=True))
        try:
            js = nc.jetstream()
            state = (await js.stream_info("TELEMETRY_REJECTED")).state
            out = []
            # An empty stream reports first_seq 0, which no message has (a bad request).
            for seq in range(max(state.first_seq, 1), state.last_seq + 1):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    msg = await js.get_msg("TELEMETRY_REJECTED", seq)
                    headers = msg.headers or {}
                    reason, detail = headers["Tidegate-Reason"], headers["Tidegate-Detail"]
                    out.append((msg.subject, reason, detail, msg.data or b""))
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def publish_raw(
    server: NatsServer, items: list[tuple[str, bytes]], headers: dict[str, str] | None = None
) -> None:
    """Publish `(subject, data)` pairs to JetStream as another producer (the edge's user,
    the only one allowed on `telemetry.*`) would, each with `headers`."""

    async def main() -> None:
        nc = await nats.connect(**server.connect_options())
        try:
            js = nc.jetstream()
            for subject, data in items:
                await js.publish(subject, data, headers=headers)
        finally:
            await nc.close()

    asyncio.run(main())


def test_envelopes_and_mqtt_publishes_are_validated_good_written_bad_rejected(
    deployment: Deployment, worker: GatewayProcess
) -> None:
    worker_ready(deployment)
    tok = deployment.tokens
    publish_raw(
        deployment.nats,
        [
            (f"telemetry.{TENANT}", envelope("d1", tok["d1"], {"temp": 1}, 1)),
            (f"telemetry.{TENANT}", envelope("d2", "wrong-token-xxxxxxxx", {"temp": 1}, 2)),
            (f"telemetry.{TENANT}", envelope("d3", tok["d3"], {"temp": "hot"}, 3)),
            (f"telemetry.{TENANT}", b"not json at all"),
        ],
    )
    mqtt = f"tenant/{TENANT}/device"
    # The broker authenticated the device: a token in the payload is ignored, none is needed.
    mqtt_publish(
        deployment.nats,
        f"{mqtt}/d2/telemetry",
        orjson.dumps(
            {"site_id": "site-d2", "seq": 11, "metrics": {"temp": 2}, "provision_token": "junk"}
        ),
        deployment.mqtt_credentials("d2"),
    )
    d3 = deployment.mqtt_credentials("d3")
    mqtt_publish(
        deployment.nats,
        f"{mqtt}/d3/telemetry",
        orjson.dumps({"site_id": "site-d3", "seq": 12, "metrics": {"temp": 2}}),
        d3,
    )
    mqtt_publish(
        deployment.nats,
        f"{mqtt}/d3/telemetry",
        orjson.dumps({"site_id": "elsewhere", "seq": 13, "metrics": {"temp": 2}}),
        d3,
    )
    d1 = deployment.mqtt_credentials("d1")
    mqtt_publish(deployment.nats, f"{mqtt}/d1/heartbeat", b"\xff\xfe", d1)
    wait_for_exactly(deployment.influx, {1, 11, 12})
    got = poll(lambda: rejected(deployment.nats), lambda r: len(r) >= 5)
    assert sorted((subject, reason) for subject, reason, _, _ in got) == [
        ("telemetry.rejected.acme", "INVALID_METRICS"),
        ("telemetry.rejected.acme", "SITE_MISMATCH"),
        ("telemetry.rejected.acme", "UNAUTHORIZED"),
        ("telemetry.rejected.acme", "UNREADABLE"),
        ("telemetry.rejected.acme", "UNREADABLE"),
    ]
    # Each refused one with the core's detail of what is wrong with it; no token at rest: JSON
    # records lose theirs, unreadable ones keep no payload at all.
    details = {reason: detail for _, reason, detail, _ in got if reason != "UNREADABLE"}
    assert details == {
        "INVALID_METRICS": "metric 'temp' is a string; metrics must be numbers or booleans",
        "UNAUTHORIZED": "unknown device or wrong provision token",
        "SITE_MISMATCH": "site_id 'elsewhere' is not the device's registered site",
    }
    datas = [data for _, _, _, data in got]
    assert not any(b"tok-" in data or b"wrong-token" in data for data in datas), datas
    assert datas.count(b"") == 2
    poll(lambda: stream_message_count(deployment.nats), lambda n: n == 0)


def worker_ready(deployment: Deployment) -> None:
    """Wait until every started worker says ready (streams and consumer exist)."""
    for proc in deployment.procs:
        poll(lambda p=proc: httpx.get(f"{p.url}/ready", timeout=30).status_code, lambda s: s == 200)


def test_line_protocol_through_an_edge_and_a_worker_and_503_while_nats_is_down(
    deployment: Deployment, edge: GatewayProcess, worker: GatewayProcess
) -> None:
    influx = deployment.influx
    client = edge.client()
    auth = {"Authorization": f"Token d1:{deployment.tokens['d1']}"}
    body = f"lp,room=a v=1.5 {BASE_NS}\nlp,device_id=d2 v=2.5 {BASE_NS + 1}\n"
    r = client.post(f"/api/v2/write?bucket={TENANT}", content=body, headers=auth)
    assert r.status_code == 204
    poll(lambda: DB in influx.databases())
    rows = poll(lambda: influx.query(DB, 'SELECT * FROM "lp"'), until=lambda rows: len(rows) == 2)
    assert rows == [
        {"time": BASE_NS, "device_id": "d1", "room": "a", "site_id": "site-d1", "v": 1.5},
        {"time": BASE_NS + 1, "device_id": "d1", "room": None, "site_id": "site-d1", "v": 2.5},
    ]
    deployment.nats.stop()
    r = client.post(f"/api/v2/write?bucket={TENANT}", content=body, headers=auth)
    assert (r.status_code, r.json()["code"], r.headers["Retry-After"]) == (503, "unavailable", "1")
    deployment.nats.start()
    poll(lambda: httpx.get(f"{edge.url}/ready", timeout=30).status_code, lambda s: s == 200)


def test_a_revoked_device_loses_its_mqtt_access_within_seconds(deployment: Deployment) -> None:
    d1 = Device(deployment.nats, deployment.mqtt_credentials("d1"), "e2e-d1")
    try:
        assert d1.accepted
        started_at = time.monotonic()
        deployment.cli("device", "revoke", "--tenant", TENANT, "--device", "d1")
        assert d1.disconnected.wait(10)
        assert time.monotonic() - started_at < 10
    finally:
        d1.close()
    # No new credentials for a revoked device either.
    with pytest.raises(subprocess.CalledProcessError):
        deployment.mqtt_credentials("d1")


def test_a_message_that_reaches_max_deliver_is_moved_to_rejected_and_counted(
    deployment: Deployment,
) -> None:
    asyncio.run(set_up(deployment.nats, max_deliver=1, ack_wait_s=1.0))
    worker = deployment.start("worker", NATS_MAX_DELIVER="1", NATS_ACK_WAIT_S="1")
    worker_ready(deployment)
    # The worker pauses; its pending pull request expires (0.5 s); another consumer client
    # takes the message and never acks it: JetStream gives up after one delivery.
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)
        publish_raw(deployment.nats, [(f"telemetry.{TENANT}", envelope("d1", "t" * 20, {}, 1))])

        async def take_without_ack() -> int:
            nc = await nats.connect(**deployment.nats.connect_options(worker=True))
            try:
                sub = await nc.jetstream().pull_subscribe_bind("ingest-workers", "TELEMETRY")
                msgs = await sub.fetch(1, timeout=5)
                await asyncio.sleep(2.5)  # past AckWait: the advisory is sent
                return len(msgs)
            finally:
                await nc.close()

        assert asyncio.run(take_without_ack()) == 1
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    got = poll(lambda: rejected(deployment.nats), lambda r: len(r) >= 1)
    assert [(subject, reason) for subject, reason, _, _ in got] == [
        ("telemetry.rejected.acme", "MAX_DELIVERIES")
    ]
    assert b"t" * 20 not in got[0][3]
    poll(lambda: stream_message_count(deployment.nats), lambda n: n == 0)
    stats = httpx.get(f"{worker.url}/stats", timeout=10).json()
    assert stats["worker_rejected"] == {"MAX_DELIVERIES": 1}
    assert '"worker_max_deliveries"' in worker.logs()


def test_a_revoke_through_the_tenant_api_cuts_the_devices_mqtt_access(
    deployment: Deployment, edge: GatewayProcess
) -> None:
    key = deployment.cli("tenant", "add", "--tenant", "beta")["api_key"]
    provision(deployment.env(), "beta", "b1", "site-b1")
    b1 = Device(deployment.nats, deployment.mqtt_credentials("b1", "beta"), "e2e-b1")
    try:
        assert b1.accepted
        r = edge.client().post(
            "/api/v1/batch/devices",
            json={"operations": [{"op": "revoke", "device_id": "b1"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["total_succeeded"] == 1
        assert b1.disconnected.wait(10)
    finally:
        b1.close()


# -- nothing stranded, self-healing -----------------------------------------------------------


@pytest.fixture
def own_registry(
    tmp_path: Path, nats_server: NatsServer, influxdb: InfluxDB, own_postgres: PostgresCluster
) -> Iterator[Deployment]:
    """A deployment whose registry (PostgreSQL) the test may stop and start."""
    url = own_postgres.url(own_postgres.create_database())
    yield from deployed(Deployment(tmp_path, nats_server, influxdb, url))


def test_a_registry_outage_pauses_fetching_so_no_delivery_is_spent(
    own_registry: Deployment, own_postgres: PostgresCluster
) -> None:
    d = own_registry
    # Three deliveries, one second apart at most: a worker that kept fetching (and nak'ing)
    # through the outage would have given every message up long before the registry returns.
    asyncio.run(set_up(d.nats, max_deliver=3, ack_wait_s=1.0))
    worker = d.start("worker", NATS_MAX_DELIVER="3", NATS_ACK_WAIT_S="1")
    worker_ready(d)
    creds = {device: d.mqtt_credentials(device) for device in DEVICES}  # needs the registry
    own_postgres.stop()
    # The worker has not seen these devices yet: it must ask the registry for each.
    for seq, device in enumerate(DEVICES):
        body = {"site_id": f"site-{device}", "seq": seq, "metrics": {"temp": seq}}
        topic = f"tenant/{TENANT}/device/{device}/telemetry"
        mqtt_publish(d.nats, topic, orjson.dumps(body), creds[device])
    ready = poll(
        lambda: httpx.get(f"{worker.url}/ready", timeout=30),
        lambda r: r.status_code == 503 and "registry" in r.text,
    )
    assert "registry is unavailable" in ready.text
    time.sleep(6.0)  # six times the whole MaxDeliver budget
    assert stream_message_count(d.nats) == len(DEVICES)
    assert stored_seqs(d.influx) == []
    own_postgres.start()
    wait_for_exactly(d.influx, set(range(len(DEVICES))))
    poll(lambda: stream_message_count(d.nats), lambda n: n == 0)
    assert rejected(d.nats) == []
    assert worker_stats(worker)["worker_rejected"] == {}
    logs = worker.logs()
    assert '"registry_available"' in logs
    assert '"worker_max_deliveries"' not in logs


def as_admin(server: NatsServer) -> dict[str, Any]:
    """nats-py connect options of a user with every right, added to the broker for this test:
    nobody that setup writes may delete a consumer, which is what this attacker did before
    issue 18."""
    if "NATS_CREDS" in server.worker_env:
        # Operator mode: a user JWT without permissions, signed with the account's seed.
        seed = (server.broker_dir / broker_jwt.ACCOUNT_SEED).read_text().strip()
        user = nats_jwt.new_key(nkeys.PREFIX_BYTE_USER)
        claims = nats_jwt.user_claims({}, "STANDARD")
        token = nats_jwt.encode(nats_jwt.from_seed(seed), nats_jwt.public(user), "admin", claims, 0)
        creds = server.root / "admin-test.creds"
        creds.write_text(nats_jwt.creds(token, user))
        return {"servers": [server.url], "user_credentials": str(creds)}
    path = server.broker_dir / broker.ACCOUNTS
    head, _, accounts = path.read_text().partition("accounts: ")
    users = orjson.loads(accounts)
    users[broker.ACCOUNT]["users"].append({"user": "admin", "password": "admin-password"})
    path.write_text(f"{head}accounts: {orjson.dumps(users).decode()}\n")
    loaded = server.varz()["config_load_time"]
    os.kill(server.pid, signal.SIGHUP)
    poll(lambda: server.varz()["config_load_time"], lambda t: t != loaded)
    return {"servers": [server.url.replace("://", "://admin:admin-password@", 1)]}


def test_a_deleted_consumer_is_created_again_by_the_worker_and_messages_flow_again(
    deployment: Deployment, edge: GatewayProcess, worker: GatewayProcess
) -> None:
    client = edge.client()

    def post(seqs: range) -> None:
        r = client.post("/ingest/v1/batch", json={"messages": [message(s) for s in seqs]})
        assert r.status_code == 202

    post(range(10))
    wait_for_exactly(deployment.influx, set(range(10)))
    admin = as_admin(deployment.nats)

    async def delete_consumer() -> None:
        nc = await nats.connect(**admin)
        try:
            assert await nc.jetstream().delete_consumer("TELEMETRY", "ingest-workers")
        finally:
            await nc.close()

    asyncio.run(delete_consumer())
    post(range(10, 20))  # the stream is kept: these wait there for a consumer
    wait_for_exactly(deployment.influx, set(range(20)))
    post(range(20, 30))
    wait_for_exactly(deployment.influx, set(range(30)))
    assert '"nats_consumer_created"' in worker.logs()
    poll(lambda: stream_message_count(deployment.nats), lambda n: n == 0)
