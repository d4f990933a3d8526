"""Hostile clients against the config `tidegate nats setup` writes: each is refused or has no
effect (issue 18). The clients: paho-mqtt, nats-py, and raw sockets speaking each protocol."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import shutil
import socket
import threading
import time
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import orjson
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.reasoncodes import ReasonCode
from services import NatsServer
from test_nats_stream import fast, mqtt_publish, run, set_up, started, stored
from tidegate import broker
from tidegate.nats.settings import CONSUMER, REJECTED_STREAM, STREAM, NatsSettings
from tidegate.nats.stream import Link

PAYLOAD = b'{"site_id":"s1","metrics":{"temp":21.5}}'


class Device:
    """A paho-mqtt client that records what the broker answers."""

    def __init__(self, server: NatsServer, creds: dict[str, str] | None, name: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        if creds is not None:
            self.client.username_pw_set(creds["username"], creds["password"])
        self.connack: ReasonCode | None = None
        self.suback: list[ReasonCode] = []
        self.received: list[str] = []
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, m: self.received.append(m.topic)
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.connect("127.0.0.1", server.mqtt_port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while self.connack is None and not self.disconnected.is_set():
            assert time.monotonic() < deadline, "no CONNACK"
            time.sleep(0.02)

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc

    def _on_subscribe(
        self, _c: object, _u: object, _mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        self.suback = codes

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes = PAYLOAD) -> None:
        info = self.client.publish(topic, payload, qos=1)
        # nats-server acknowledges a refused publish too (MQTT has no refusal for QoS 1);
        # it drops the message and logs the violation.
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def server(nats_server: NatsServer) -> NatsServer:
    """The secure broker with the streams and consumer a worker creates."""
    run(lambda: set_up(nats_server))
    return nats_server


def consumer_and_streams_exist(server: NatsServer) -> list[str]:
    """Names of the streams and consumers in the monitoring report (no credentials needed)."""
    out = []
    for account in server.jsz().get("account_details", []):
        for stream in account.get("stream_detail", []):
            out.append(stream["name"])
            out += [c["name"] for c in stream.get("consumer_detail") or []]
    return sorted(n for n in out if not n.startswith("$MQTT"))


def messages_in(server: NatsServer, name: str) -> int:
    """Messages in a stream now, from the monitoring report."""
    for account in server.jsz().get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == name:
                count: int = stream["state"]["messages"]
                return count
    raise AssertionError(f"no stream {name}")


EXPECTED = sorted([STREAM, REJECTED_STREAM, CONSUMER])


def test_mqtt_without_credentials_or_with_a_wrong_password_is_refused(server: NatsServer) -> None:
    broker.device_credentials(server.broker_dir, "acme", "d1")
    anonymous = Device(server, None, "anon")
    wrong = Device(server, {"username": "acme.d1", "password": "guess"}, "wrong")
    try:
        assert not anonymous.accepted
        assert not wrong.accepted
    finally:
        anonymous.close()
        wrong.close()


def test_nats_without_credentials_or_as_a_device_is_refused(server: NatsServer) -> None:
    creds = broker.device_credentials(server.broker_dir, "acme", "d1")
    device = orjson.dumps({"user": creds["username"], "pass": creds["password"]})
    # A device user may connect only over MQTT; nobody connects without a user.
    for connect in (b"{}", device):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.recv(4096)  # INFO
            s.sendall(b"CONNECT " + connect + b"\r\nPING\r\n")
            answer = _read_all(s)
        assert b"Authorization Violation" in answer, answer
        assert b"PONG" not in answer


def test_raw_sockets_without_credentials_get_nothing(server: NatsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.recv(4096)  # INFO
        s.sendall(b'CONNECT {"verbose":false}\r\nPUB telemetry.acme 2\r\nhi\r\nPING\r\n')
        answer = _read_all(s)
    assert b"Authorization Violation" in answer
    assert b"PONG" not in answer
    # MQTT 3.1.1 CONNECT, clean session, client id "raw", no user name.
    connect = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03raw"
    with socket.create_connection(("127.0.0.1", server.mqtt_port), timeout=5) as s:
        s.sendall(connect)
        answer = _read_all(s)
    # CONNACK with return code 5 (not authorized), or the connection closed.
    assert answer in (b"", b"\x20\x02\x00\x05"), answer
    assert messages_in(server, STREAM) == 0


def _read_all(s: socket.socket) -> bytes:
    out = b""
    s.settimeout(3)
    while True:
        try:
            chunk = s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


def test_a_device_publishes_only_on_its_own_topic_and_subscribes_to_nothing(
    server: NatsServer,
) -> None:
    creds = broker.device_credentials(server.broker_dir, "acme", "d1")
    broker.device_credentials(server.broker_dir, "beta", "d1")
    d1 = Device(server, creds, "acme-d1")
    try:
        assert d1.accepted
        d1.client.subscribe([("#", 1), ("tenant/#", 1), ("$JS/API/#", 0)])
        for topic in (
            "tenant/acme/device/d2/telemetry",  # another device's
            "tenant/beta/device/d1/telemetry",  # another tenant's
            "telemetry/acme",
            "$JS/API/STREAM/DELETE/TELEMETRY",
            "$JS/API/STREAM/DELETE/TELEMETRY_REJECTED",
            f"$JS/API/CONSUMER/DELETE/TELEMETRY/{CONSUMER}",
            "$JS/API/STREAM/PURGE/TELEMETRY",
        ):
            d1.publish(topic, b"{}")
        d1.publish("tenant/acme/device/d1/telemetry")
        # A second device's own message: d1's subscriptions would have delivered it.
        mqtt_publish(
            server,
            "tenant/beta/device/d1/telemetry",
            PAYLOAD,
            broker.device_credentials(server.broker_dir, "beta", "d1"),
        )
        time.sleep(0.5)
        assert all(code.is_failure for code in d1.suback), d1.suback
        assert d1.received == []
    finally:
        d1.close()
    assert consumer_and_streams_exist(server) == EXPECTED
    stored_acme = run(lambda: stored(server, STREAM, "tenant.acme.device.d1.telemetry"))
    assert [m.data for m in stored_acme] == [PAYLOAD]
    beta = run(lambda: stored(server, STREAM, "tenant.beta.device.d1.telemetry"))
    assert len(beta) == 1
    assert messages_in(server, STREAM) == 2  # nothing else got in


def test_an_edge_may_publish_telemetry_but_not_touch_the_jetstream_api(server: NatsServer) -> None:
    async def main() -> tuple[list[str], str]:
        nc = await nats.connect(server.edge_url)
        refused = []
        try:
            js = nc.jetstream(timeout=2)
            for attempt in (
                js.delete_stream(STREAM),
                js.delete_consumer(STREAM, CONSUMER),
                js.purge_stream(STREAM),
                js.publish("telemetry.rejected.acme", b"x"),
                js.publish("tenant.acme.device.d1.telemetry", b"{}"),
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
    assert len(refused) == 5, refused
    assert stream == STREAM
    assert consumer_and_streams_exist(server) == EXPECTED


def test_a_removed_device_loses_its_connection_and_cannot_connect_again(
    server: NatsServer,
) -> None:
    creds = broker.device_credentials(server.broker_dir, "acme", "d1")
    d1 = Device(server, creds, "acme-d1")
    try:
        assert d1.accepted
        started_at = time.monotonic()
        broker.remove_devices(server.broker_dir, "acme", ["d1"])
        assert d1.disconnected.wait(10), "the reload did not close the connection"
        assert time.monotonic() - started_at < 5
    finally:
        d1.close()
    again = Device(server, creds, "acme-d1-again")
    try:
        assert not again.accepted
    finally:
        again.close()


def test_a_lost_stream_and_consumer_are_created_again_and_an_edge_names_what_is_missing(
    server: NatsServer,
) -> None:
    server.stop()
    streams = next(server.broker_dir.glob("jetstream/jetstream/*/streams"))
    shutil.rmtree(streams / STREAM)
    server.start()

    async def main() -> tuple[str | None, str | None, str | None]:
        edge = await _link(fast(server), "edge")
        try:
            missing = edge.not_ready_reason()
            worker = await started(fast(server, worker=True), consumer=True)
            try:
                for _ in range(100):  # the edge's next check (every 2 s) finds it again
                    if edge.not_ready_reason() is None:
                        break
                    await asyncio.sleep(0.1)
                return missing, edge.not_ready_reason(), worker.not_ready_reason()
            finally:
                await worker.close()
        finally:
            await edge.close()

    missing, edge_after, worker_after = run(main)
    assert missing is not None and f"stream {STREAM} does not exist" in missing
    assert (edge_after, worker_after) == (None, None)
    assert consumer_and_streams_exist(server) == EXPECTED


async def _link(settings: NatsSettings, name: str) -> Link:
    """An edge link that has connected (not necessarily found its stream)."""
    link = Link(settings, name)
    link.start()
    for _ in range(100):
        if link.nc is not None and link.missing is not None:
            return link
        await asyncio.sleep(0.05)
    return link


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, PEM files in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidegate-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_with_a_certificate_both_listeners_take_tls_only(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = NatsServer(tls=(cert, key))
    try:
        server.start()
        assert server.worker_env["NATS_URL"].startswith("tls://")
        assert server.worker_env["NATS_TLS_CA"] == str(cert)
        settings = dataclasses.replace(
            fast(server, worker=True), tls_ca=Path(server.worker_env["NATS_TLS_CA"])
        )
        run(lambda: _set_up_with(settings))
        creds = broker.device_credentials(server.broker_dir, "acme", "d1")
        over_tls = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-d1")
        over_tls.tls_set(ca_certs=str(cert))
        over_tls.username_pw_set(creds["username"], creds["password"])
        over_tls.connect("127.0.0.1", server.mqtt_port)
        over_tls.loop_start()
        try:
            info = over_tls.publish("tenant/acme/device/d1/telemetry", PAYLOAD, qos=1)
            info.wait_for_publish(timeout=10)
        finally:
            over_tls.disconnect()
            over_tls.loop_stop()
        assert messages_in(server, STREAM) == 1
        # In clear text the MQTT listener answers no CONNACK.
        plain = Device(server, creds, "plain-d1")
        try:
            assert not plain.accepted
        finally:
            plain.close()
    finally:
        server.cleanup()


def test_the_monitoring_listener_stays_on_loopback_when_the_clients_listen_everywhere() -> None:
    server = NatsServer(host="0.0.0.0")
    try:
        server.start()
        varz = server.varz()
        assert (varz["host"], varz["http_host"]) == ("0.0.0.0", "127.0.0.1")
        # On this machine's own non-loopback address: NATS answers, the monitor is not there.
        address = _outward_address()
        with socket.create_connection((address, server.port), timeout=5) as s:
            assert s.recv(4096).startswith(b"INFO ")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, server.http_port), timeout=5)
    finally:
        server.cleanup()


def _outward_address() -> str:
    """The address this machine sends from (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        address: str = s.getsockname()[0]
    assert not ipaddress.ip_address(address).is_loopback, address
    return address


async def _set_up_with(settings: NatsSettings) -> None:
    link = await started(settings, consumer=True)
    await link.close()
