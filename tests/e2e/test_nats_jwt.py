"""Operator mode (`tidegate nats setup --auth jwt`) against a real nats-server: devices with
bearer JWTs, revocations pushed to the resolver. The users file's hostile and end-to-end tests
that concern identities run here again, on this module's operator-mode `nats_server`
(`TIDEGATE_TEST_NATS_AUTH=jwt` runs every NATS test so)."""

from __future__ import annotations

import dataclasses
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import nkeys
import paho.mqtt.client as mqtt
import pytest
from services import NatsServer
from test_control_nats import test_only_edges_and_workers_speak_on_the_control_subject
from test_nats_e2e import (
    deployment,
    edge,
    test_a_deleted_consumer_is_created_again_by_the_worker_and_messages_flow_again,
    test_a_revoke_through_the_tenant_api_cuts_the_devices_mqtt_access,
    test_a_revoked_device_loses_its_mqtt_access_within_seconds,
    test_a_worker_sigkilled_mid_stream_and_restarted_writes_every_202_exactly_once,
    test_envelopes_and_mqtt_publishes_are_validated_good_written_bad_rejected,
    worker,
)
from test_nats_hostile import (
    PAYLOAD,
    Device,
    _set_up_with,
    messages_in,
    self_signed,
    server,
    test_a_device_publishes_only_on_its_own_topic_and_subscribes_to_nothing,
    test_a_lost_stream_and_consumer_are_created_again_and_an_edge_names_what_is_missing,
    test_a_removed_device_loses_its_connection_and_cannot_connect_again,
    test_an_edge_may_publish_telemetry_but_not_touch_the_jetstream_api,
    test_mqtt_without_credentials_or_with_a_wrong_password_is_refused,
    test_nats_without_credentials_or_as_a_device_is_refused,
    test_raw_sockets_without_credentials_get_nothing,
)
from test_nats_stream import fast, run
from tidegate import broker, nats_jwt
from tidegate.nats.settings import STREAM

# Fixtures used by name and tests collected again here, on operator mode.
__all__ = [
    "deployment",
    "edge",
    "server",
    "test_a_deleted_consumer_is_created_again_by_the_worker_and_messages_flow_again",
    "test_a_device_publishes_only_on_its_own_topic_and_subscribes_to_nothing",
    "test_a_lost_stream_and_consumer_are_created_again_and_an_edge_names_what_is_missing",
    "test_a_removed_device_loses_its_connection_and_cannot_connect_again",
    "test_a_revoke_through_the_tenant_api_cuts_the_devices_mqtt_access",
    "test_a_revoked_device_loses_its_mqtt_access_within_seconds",
    "test_a_worker_sigkilled_mid_stream_and_restarted_writes_every_202_exactly_once",
    "test_an_edge_may_publish_telemetry_but_not_touch_the_jetstream_api",
    "test_envelopes_and_mqtt_publishes_are_validated_good_written_bad_rejected",
    "test_mqtt_without_credentials_or_with_a_wrong_password_is_refused",
    "test_nats_without_credentials_or_as_a_device_is_refused",
    "test_only_edges_and_workers_speak_on_the_control_subject",
    "test_raw_sockets_without_credentials_get_nothing",
    "worker",
]


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A fresh nats-server in operator mode for one test (the fixtures above build on it)."""
    started = NatsServer(auth="jwt")
    try:
        started.start()
        yield started
    finally:
        started.cleanup()


def test_setup_writes_keys_and_credentials_only_its_user_reads(server: NatsServer) -> None:
    root = server.broker_dir
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
    for role, env in (("edge", server.edge_env), ("worker", server.worker_env)):
        assert env == {"NATS_URL": server.url, "NATS_CREDS": str(root / f"{role}.creds")}
    seeds = {(root / n).read_text()[:2] for n in ("operator.nk", "system.nk", "account.nk")}
    assert seeds == {"SO", "SA"}


def test_anonymous_garbage_and_foreign_jwts_are_refused(server: NatsServer) -> None:
    real = broker.device_credentials(server.broker_dir, "acme", "d1")["password"]
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
    devices = [Device(server, creds, name) for name, creds in attempts.items()]
    try:
        assert [d.accepted for d in devices] == [False] * len(devices)
    finally:
        for d in devices:
            d.close()


def accepted(server: NatsServer, creds: dict[str, str], name: str) -> bool:
    """Whether the broker takes an MQTT connection with `creds` now."""
    device = Device(server, creds, name)
    device.close()
    return device.accepted


@pytest.mark.parametrize("while_down", [False, True], ids=["pushed", "while-down"])
def test_a_revoke_holds_after_a_restart(server: NatsServer, while_down: bool) -> None:
    # (The cut of a connected device, within 2 s: the hostile test run here.)
    creds = broker.device_credentials(server.broker_dir, "acme", "d1")
    if while_down:
        server.stop()
    broker.remove_devices(server.broker_dir, "acme", ["d1"])
    if not while_down:
        assert not accepted(server, creds, "acme-d1-again")
        server.stop()
    server.start()
    assert not accepted(server, creds, "acme-d1-after-restart")


def test_new_credentials_revoke_the_old_ones_and_work_at_once(server: NatsServer) -> None:
    old = broker.device_credentials(server.broker_dir, "acme", "d1")
    d1 = Device(server, old, "acme-d1")
    try:
        assert d1.accepted
        new = broker.device_credentials(server.broker_dir, "acme", "d1")
        assert d1.disconnected.wait(2)
    finally:
        d1.close()
    assert not accepted(server, old, "acme-d1-old")
    assert accepted(server, new, "acme-d1-new")
    revoked = json.loads((server.broker_dir / broker.STATE).read_text())["revocations"]
    assert len(revoked) == 1  # one entry per device, however often it gets new credentials


def test_over_tls_services_connect_with_creds_and_a_revoke_is_pushed(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = NatsServer(tls=(cert, key), auth="jwt")
    try:
        server.start()
        assert server.worker_env["NATS_TLS_CA"] == str(cert)
        settings = dataclasses.replace(fast(server, worker=True), tls_ca=cert)
        run(lambda: _set_up_with(settings))
        creds = broker.device_credentials(server.broker_dir, "acme", "d1")
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-d1")
        device.tls_set(ca_certs=str(cert))
        device.username_pw_set(creds["username"], creds["password"])
        cut = threading.Event()
        device.on_disconnect = lambda *_: cut.set()
        device.connect("127.0.0.1", server.mqtt_port)
        device.loop_start()
        try:
            device.publish("tenant/acme/device/d1/telemetry", PAYLOAD, qos=1).wait_for_publish(10)
            assert messages_in(server, STREAM) == 1
            broker.remove_devices(server.broker_dir, "acme", ["d1"])
            assert cut.wait(2), "the account update did not close the TLS connection"
        finally:
            device.disconnect()
            device.loop_stop()
    finally:
        server.cleanup()
