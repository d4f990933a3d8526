"""Operator mode (`tidegate nats setup --auth jwt`) against a real nats-server: devices with
bearer JWTs, revocations pushed to the resolver, the same hostile clients as the users file."""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import nkeys
import orjson
import pytest
from gateway import GatewayProcess
from services import InfluxDB, NatsServer
from test_nats_e2e import TENANT, Deployment, deployed, wait_for_exactly
from test_nats_hostile import (
    EXPECTED,
    PAYLOAD,
    Device,
    _read_all,
    consumer_and_streams_exist,
    messages_in,
)
from test_nats_stream import run, set_up, stored
from tidegate import broker, broker_jwt, nats_jwt
from tidegate.nats.settings import CONSUMER, STREAM


@pytest.fixture
def jwt_server() -> Iterator[NatsServer]:
    """A nats-server in operator mode with the streams and consumer a worker creates."""
    server = NatsServer(auth="jwt")
    try:
        server.start()
        run(lambda: set_up(server))
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def jwt_deployment(
    tmp_path: Path, jwt_server: NatsServer, influxdb: InfluxDB, postgres_url: str
) -> Iterator[Deployment]:
    """The NATS-mode deployment of test_nats_e2e, on the operator-mode broker."""
    yield from deployed(Deployment(tmp_path, jwt_server, influxdb, postgres_url))


def test_setup_writes_keys_and_credentials_only_its_user_reads(jwt_server: NatsServer) -> None:
    root = jwt_server.broker_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    written = {p.name for p in root.iterdir() if p.is_file() and p.suffix != ".pid"}
    assert written == {
        "account.nk",
        "accounts.conf",
        "admin.creds",
        "broker.json",
        "edge.creds",
        "nats-server.conf",
        "operator.nk",
        "system.nk",
        "worker.creds",
    }
    for name in written:
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600, name
    for role, env in (("edge", jwt_server.edge_env), ("worker", jwt_server.worker_env)):
        assert env == {"NATS_URL": jwt_server.url, "NATS_CREDS": str(root / f"{role}.creds")}
    seeds = {(root / n).read_text()[:2] for n in ("operator.nk", "system.nk", "account.nk")}
    assert seeds == {"SO", "SA"}


def test_a_device_jwt_publishes_only_on_its_own_topic_and_subscribes_to_nothing(
    jwt_server: NatsServer,
) -> None:
    creds = broker.device_credentials(jwt_server.broker_dir, "acme", "d1")
    claims = nats_jwt.claims(creds["password"])["nats"]
    assert claims["pub"] == {"allow": ["tenant.acme.device.d1.*"]}
    assert (claims["bearer_token"], claims["allowed_connection_types"]) == (True, ["MQTT"])
    d1 = Device(jwt_server, creds, "acme-d1")
    try:
        assert d1.accepted
        d1.client.subscribe([("#", 1), ("tenant/#", 1), ("$JS/API/#", 0)])
        for topic in (
            "tenant/acme/device/d2/telemetry",
            "tenant/beta/device/d1/telemetry",
            "telemetry/acme",
            "$JS/API/STREAM/DELETE/TELEMETRY",
            "$JS/API/STREAM/DELETE/TELEMETRY_REJECTED",
            f"$JS/API/CONSUMER/DELETE/TELEMETRY/{CONSUMER}",
            "$JS/API/STREAM/PURGE/TELEMETRY",
        ):
            d1.publish(topic, b"{}")
        d1.publish("tenant/acme/device/d1/telemetry")
        time.sleep(0.5)
        assert d1.suback and all(code.is_failure for code in d1.suback), d1.suback
        assert d1.received == []
    finally:
        d1.close()
    assert consumer_and_streams_exist(jwt_server) == EXPECTED
    got = run(lambda: stored(jwt_server, STREAM, "tenant.acme.device.d1.telemetry"))
    assert [m.data for m in got] == [PAYLOAD]
    assert messages_in(jwt_server, STREAM) == 1


def test_anonymous_garbage_and_foreign_jwts_are_refused(jwt_server: NatsServer) -> None:
    real = broker.device_credentials(jwt_server.broker_dir, "acme", "d1")["password"]
    # A JWT with the same claims signed by an account nats-server does not know.
    stranger = nats_jwt.new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    user = nats_jwt.public(nats_jwt.new_key(nkeys.PREFIX_BYTE_USER))
    claims = nats_jwt.claims(real)
    forged = nats_jwt.encode(stranger, user, "acme.d1", claims["nats"], claims["iat"])
    head, body, _ = real.split(".")
    tampered = f"{head}.{body}.{forged.split('.')[2]}"
    attempts = {
        "anonymous": None,
        "garbage": {"username": "acme.d1", "password": "guess"},
        "foreign": {"username": "acme.d1", "password": forged},
        "tampered": {"username": "acme.d1", "password": tampered},
    }
    devices = [Device(jwt_server, creds, name) for name, creds in attempts.items()]
    try:
        assert [d.accepted for d in devices] == [False] * len(devices)
    finally:
        for d in devices:
            d.close()
    # Over NATS: nobody without a JWT and nonce signature; a device's JWT is for MQTT only.
    for connect in (b"{}", orjson.dumps({"user": "acme.d1", "pass": real, "jwt": real})):
        with socket.create_connection(("127.0.0.1", jwt_server.port), timeout=5) as s:
            s.recv(4096)  # INFO
            s.sendall(b"CONNECT " + connect + b"\r\nPING\r\n")
            answer = _read_all(s)
        assert b"Authorization Violation" in answer, answer
        assert b"PONG" not in answer


def test_an_edge_may_publish_telemetry_but_not_touch_the_jetstream_api(
    jwt_server: NatsServer,
) -> None:
    async def main() -> tuple[list[str], str]:
        nc = await nats.connect(**jwt_server.connect_options())
        refused = []
        try:
            js = nc.jetstream(timeout=2)
            for attempt in (
                js.delete_stream(STREAM),
                js.delete_consumer(STREAM, CONSUMER),
                js.purge_stream(STREAM),
                js.publish("telemetry.rejected.acme", b"x"),
                js.publish("tenant.acme.device.d1.telemetry", b"{}"),
                nc.request(broker_jwt.CLAIMS_UPDATE, b"x", timeout=1),
            ):
                try:
                    await attempt
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                    refused.append(type(exc).__name__)
            ack = await js.publish("telemetry.acme", b"x 1\n")
            return refused, ack.stream
        finally:
            await nc.close()

    refused, stream = run(main)
    assert len(refused) == 6, refused
    assert stream == STREAM
    assert consumer_and_streams_exist(jwt_server) == EXPECTED


def test_a_revoked_device_is_cut_within_2_s_and_refused_again_even_after_a_restart(
    jwt_server: NatsServer,
) -> None:
    creds = broker.device_credentials(jwt_server.broker_dir, "acme", "d1")
    d1 = Device(jwt_server, creds, "acme-d1")
    try:
        assert d1.accepted
        started_at = time.monotonic()
        broker.remove_devices(jwt_server.broker_dir, "acme", ["d1"])
        assert d1.disconnected.wait(2), "the account update did not close the connection"
        assert time.monotonic() - started_at < 2
    finally:
        d1.close()
    for attempt in ("again", "after-restart"):
        again = Device(jwt_server, creds, f"acme-d1-{attempt}")
        try:
            assert not again.accepted
        finally:
            again.close()
        jwt_server.stop()
        jwt_server.start()


def test_new_credentials_revoke_the_old_ones_and_work_at_once(jwt_server: NatsServer) -> None:
    old = broker.device_credentials(jwt_server.broker_dir, "acme", "d1")
    d1 = Device(jwt_server, old, "acme-d1")
    try:
        assert d1.accepted
        new = broker.device_credentials(jwt_server.broker_dir, "acme", "d1")
        assert d1.disconnected.wait(2)
    finally:
        d1.close()
    refused, fresh = Device(jwt_server, old, "acme-d1-old"), Device(jwt_server, new, "acme-d1-new")
    try:
        assert (refused.accepted, fresh.accepted) == (False, True)
    finally:
        refused.close()
        fresh.close()
    revoked = json.loads((jwt_server.broker_dir / broker.STATE).read_text())["revocations"]
    assert len(revoked) == 1  # one entry per device, however often it gets new credentials


def test_a_device_publishes_over_mqtt_into_influxdb_and_a_cli_revoke_cuts_it(
    jwt_deployment: Deployment,
) -> None:
    d = jwt_deployment
    worker: GatewayProcess = d.start("worker")
    creds = d.mqtt_credentials("d1")
    assert creds["username"] == f"{TENANT}.d1"
    device = Device(d.nats, creds, "jwt-e2e-d1")
    try:
        assert device.accepted
        body = orjson.dumps({"site_id": "site-d1", "seq": 11, "metrics": {"temp": 2}})
        device.publish(f"tenant/{TENANT}/device/d1/telemetry", body)
        wait_for_exactly(d.influx, {11})
        started_at = time.monotonic()
        d.cli("device", "revoke", "--tenant", TENANT, "--device", "d1")
        assert device.disconnected.wait(10)
        assert time.monotonic() - started_at < 10
    finally:
        device.close()
    assert worker.proc.poll() is None
    again = Device(d.nats, creds, "jwt-e2e-d1-again")
    try:
        assert not again.accepted
    finally:
        again.close()
