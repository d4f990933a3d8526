"""NATS mode's connection, streams and edge publisher against a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
import paho.mqtt.client as mqtt
from nats.js import api
from services import NatsServer
from tidegate import broker
from tidegate.nats.edge import Publisher
from tidegate.nats.settings import CONSUMER, REJECTED_STREAM, STREAM, NatsSettings
from tidegate.nats.stream import Link

T = TypeVar("T")

LINES = b"telemetry,device_id=d1,site_id=s1 temp=21.5 1700000000000000000\n"


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run one async test body on a fresh loop."""
    return asyncio.run(main())  # type: ignore[arg-type]


def fast(server: NatsServer, *, worker: bool = False, **changes: object) -> NatsSettings:
    """Settings for `server` with short publish timeouts, as its edge (or worker) user."""
    creds = server.connect_options(worker=worker).get("user_credentials")
    base = NatsSettings(
        url=server.worker_url if worker else server.edge_url,
        creds=None if creds is None else Path(creds),
        publish_timeout_s=1.0,
        publish_attempts=2,
        publish_retry_wait_s=0.05,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def started(settings: NatsSettings, *, consumer: bool = False) -> Link:
    link = Link(settings, "test", consumer=consumer)
    link.start()
    assert await link.wait(30), link.last_error
    return link


async def set_up(server: NatsServer, **changes: object) -> None:
    """Create the streams and the consumer as a worker does (edges may not)."""
    link = await started(fast(server, worker=True, **changes), consumer=True)
    await link.close()


async def stored(server: NatsServer, stream: str, subject: str) -> list[api.RawStreamMsg]:
    """Every message of `stream` on `subject`, read by sequence (no consumer: TELEMETRY is a
    work queue, where a second consumer on the workers' subjects is refused)."""
    nc = await nats.connect(**server.connect_options(worker=True))
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            if msg.subject == subject:
                out.append(msg)
        return out
    finally:
        await nc.close()


def test_link_creates_both_streams_and_the_consumer_with_the_configured_limits(
    nats_server: NatsServer,
) -> None:
    settings = fast(nats_server, worker=True, stream_max_bytes=10 << 20, duplicate_window_s=30.0)

    async def main() -> tuple[api.StreamInfo, api.StreamInfo, api.ConsumerInfo]:
        link = await started(settings, consumer=True)
        try:
            assert link.js is not None
            return (
                await link.js.stream_info(STREAM),
                await link.js.stream_info(REJECTED_STREAM),
                await link.js.consumer_info(STREAM, CONSUMER),
            )
        finally:
            await link.close()

    telemetry, rejected, consumer = run(main)
    assert telemetry.config.subjects == ["telemetry.*", "tenant.*.device.*.*"]
    assert telemetry.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert telemetry.config.discard == api.DiscardPolicy.NEW
    assert telemetry.config.storage == api.StorageType.FILE
    assert telemetry.config.max_bytes == 10 << 20
    assert telemetry.config.duplicate_window == 30.0
    assert rejected.config.subjects == ["telemetry.rejected.*"]
    assert rejected.config.retention == api.RetentionPolicy.LIMITS
    assert rejected.config.discard == api.DiscardPolicy.OLD
    assert consumer.config.durable_name == CONSUMER
    assert consumer.config.ack_policy == api.AckPolicy.EXPLICIT
    assert consumer.config.ack_wait == 30.0
    assert consumer.config.max_ack_pending == 20_000
    assert consumer.config.max_deliver == 20


def test_a_second_start_updates_the_stream_limits(nats_server: NatsServer) -> None:
    async def main() -> int | None:
        first = await started(fast(nats_server, worker=True), consumer=True)
        await first.close()
        second = await started(
            fast(nats_server, worker=True, stream_max_bytes=5 << 20), consumer=True
        )
        try:
            assert second.js is not None
            return (await second.js.stream_info(STREAM)).config.max_bytes
        finally:
            await second.close()

    assert run(main) == 5 << 20


def test_publish_stores_one_message_per_tenant_with_msg_id_and_the_lp_header(
    nats_server: NatsServer,
) -> None:
    async def main() -> tuple[list[str], Publisher]:
        await set_up(nats_server)
        link = await started(fast(nats_server))
        try:
            pub = Publisher(link, link.settings)
            failed = await pub.publish([("acme", LINES, 1), ("beta", LINES * 2, 2)])
            return failed, pub
        finally:
            await link.close()

    failed, pub = run(main)
    assert failed == []
    assert (pub.stats.published, pub.stats.failed, pub.stats.retries) == (2, 0, 0)
    acme = run(lambda: stored(nats_server, STREAM, "telemetry.acme"))
    beta = run(lambda: stored(nats_server, STREAM, "telemetry.beta"))
    assert [m.data for m in acme] == [LINES]
    assert [m.data for m in beta] == [LINES * 2]
    assert acme[0].headers is not None and beta[0].headers is not None
    assert acme[0].headers["Tidegate-Format"] == "lp"
    ids = sorted(m.headers["Nats-Msg-Id"] for m in (*acme, *beta) if m.headers)
    prefix = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{prefix}-1", f"{prefix}-2"]


def test_requests_for_a_tenant_with_a_publish_in_flight_share_the_next_message(
    nats_server: NatsServer,
) -> None:
    async def main() -> tuple[list[list[str]], Publisher]:
        await set_up(nats_server)
        link = await started(fast(nats_server))
        try:
            pub = Publisher(link, link.settings)
            lines = [LINES.replace(b"21.5", str(i).encode()) for i in range(20)]
            first = asyncio.ensure_future(pub.publish([("acme", lines[0], 1)]))
            await asyncio.sleep(0)  # the first one is on its way alone
            rest = await asyncio.gather(*(pub.publish([("acme", li, 1)]) for li in lines[1:]))
            return [await first, *rest], pub
        finally:
            await link.close()

    results, pub = run(main)
    assert results == [[]] * 20
    assert (pub.stats.requests, pub.stats.published) == (20, 2)
    msgs = run(lambda: stored(nats_server, STREAM, "telemetry.acme"))
    assert [m.data.count(b"\n") for m in msgs if m.data] == [1, 19]
    assert msgs[1].data == b"".join(LINES.replace(b"21.5", str(i).encode()) for i in range(1, 20))


def test_a_republished_msg_id_is_stored_once(nats_server: NatsServer) -> None:
    """What happens when an edge retries after a lost PubAck: the stream drops the copy."""

    async def main() -> tuple[bool, bool, int]:
        await set_up(nats_server)
        link = await started(fast(nats_server))
        try:
            assert link.js is not None
            headers = {"Nats-Msg-Id": "edge-7-acme", "Tidegate-Format": "lp"}
            first = await link.js.publish("telemetry.acme", LINES, headers=headers)
            again = await link.js.publish("telemetry.acme", LINES, headers=headers)
            info = await link.js.stream_info(STREAM)
            return first.duplicate or False, again.duplicate or False, info.state.messages
        finally:
            await link.close()

    assert run(main) == (False, True, 1)


def test_publish_with_nats_down_reports_every_tenant_failed(nats_server: NatsServer) -> None:
    async def main() -> tuple[list[str], Publisher, bool]:
        await set_up(nats_server)
        link = await started(fast(nats_server))
        try:
            nats_server.stop()
            pub = Publisher(link, link.settings)
            failed = await pub.publish([("acme", LINES, 1), ("beta", LINES, 1)])
            return failed, pub, link.connected
        finally:
            await link.close()

    failed, pub, connected = run(main)
    assert sorted(failed) == ["acme", "beta"]
    assert connected is False
    assert (pub.stats.published, pub.stats.failed, pub.stats.retries) == (0, 2, 2)
    assert pub.stats.last_error == "not connected to NATS"


def test_a_full_stream_refuses_the_publish_without_retrying(nats_server: NatsServer) -> None:
    big = LINES * 1000  # ~64 KB

    async def main() -> tuple[list[str], list[str], Publisher]:
        await set_up(nats_server, stream_max_bytes=100_000)
        link = await started(fast(nats_server))
        try:
            pub = Publisher(link, link.settings)
            first = await pub.publish([("acme", big, 1000)])
            second = await pub.publish([("acme", big, 1000)])
            return first, second, pub
        finally:
            await link.close()

    first, second, pub = run(main)
    assert (first, second) == ([], ["acme"])
    assert (pub.stats.published, pub.stats.failed, pub.stats.retries) == (1, 1, 0)
    assert pub.stats.last_error is not None and "maximum bytes" in pub.stats.last_error


def test_link_connects_once_nats_server_comes_up(nats_server: NatsServer) -> None:
    nats_server.stop()

    async def main() -> tuple[bool, bool]:
        link = Link(fast(nats_server, worker=True), "late", consumer=True)
        link.start()
        try:
            early = await link.wait(1.5)
            await asyncio.to_thread(nats_server.start)
            late = await link.wait(30)
            return early, late
        finally:
            await link.close()

    assert run(main) == (False, True)


def test_an_mqtt_qos1_publish_lands_in_telemetry_on_the_mapped_subject(
    nats_server: NatsServer,
) -> None:
    run(lambda: set_up(nats_server))
    payload = b'{"site_id":"s1","metrics":{"temp":21.5}}'
    creds = broker.device_credentials(nats_server.broker_dir, "acme", "d1")
    mqtt_publish(nats_server, "tenant/acme/device/d1/telemetry", payload, creds)
    msgs = run(lambda: stored(nats_server, STREAM, "tenant.acme.device.d1.telemetry"))
    assert [m.data for m in msgs] == [payload]


def mqtt_publish(server: NatsServer, topic: str, payload: bytes, creds: dict[str, str]) -> None:
    """Publish one QoS 1 message with paho-mqtt as the device `creds` names and wait for its
    PUBACK."""
    # nats-server refuses a `.` in a client id.
    client_id = "test-" + creds["username"].replace(".", "-")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(creds["username"], creds["password"])
    client.connect("127.0.0.1", server.mqtt_port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_user_and_password_in_nats_url_authenticate_and_a_wrong_one_never_connects(
    nats_server: NatsServer,
) -> None:
    base = nats_server.url.removeprefix("nats://")
    wrong = f"nats://edge:wrong@{base}"

    async def main() -> tuple[bool, bool, str | None]:
        good = Link(fast(nats_server, worker=True), "good", consumer=True)
        bad = Link(fast(nats_server, url=wrong, creds=None), "bad")
        good.start()
        bad.start()
        try:
            return await good.wait(30), await bad.wait(2), bad.last_error
        finally:
            await good.close()
            await bad.close()

    good, bad, error = run(main)
    assert (good, bad) == (True, False)
    # nats-server answers -ERR 'Authorization Violation' and closes the socket; under load
    # the client can read the close before the error line.
    assert error is not None
    assert "Authorization" in error or "ConnectionReset" in error, error
