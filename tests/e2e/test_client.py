"""tidegate.client against a real gateway process: batching, per-item results, gzip, retries
of rate-limited devices, a body over the gateway's cap and a gateway restarted mid-run."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gateway import GatewayProcess, poll, provision, run_gateway
from recording_server import Recorded, RecordingServer
from recording_server import Reply as Answer
from services import free_port
from tidegate.client import AsyncClient, Client, Message, Rejection, Report, timestamp

Start = Callable[..., GatewayProcess]
ROOT = Path(__file__).resolve().parents[2]
BASE_NS = 1_700_000_000_000_000_000


def message(token: str, seq: int, device: str = "d1", site: str = "s1") -> Message:
    """One telemetry message of tenant acme with an explicit ts (re-sends overwrite)."""
    return {
        "tenant_id": "acme",
        "device_id": device,
        "msg_type": "telemetry",
        "provision_token": token,
        "site_id": site,
        "ts": timestamp(BASE_NS + seq),
        "seq": seq,
        "metrics": {"v": float(seq)},
    }


def send(flavour: str, url: str, messages: list[Message], **options: Any) -> Report:
    """Submit `messages` with the sync or the async client, then flush."""
    if flavour == "sync":
        with Client(url, **options) as client:
            for m in messages:
                client.submit(m)
            return client.flush()

    async def run() -> Report:
        async with AsyncClient(url, **options) as client:
            for m in messages:
                await client.submit(m)
            return await client.flush()

    return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Client or AsyncClient: each test holds both to the same outcome."""
    return str(request.param)


def lp_seqs(gw: GatewayProcess) -> list[int]:
    """The `seq` of every line the gateway wrote to its line-protocol files (no InfluxDB set)."""
    seqs: list[int] = []
    for path in sorted((gw.data_dir / "lp").glob("telemetry_acme/*.lp")):
        for line in path.read_text().splitlines():
            fields = line.split(" ")[1]
            seqs.extend(int(f[4:-1]) for f in fields.split(",") if f.startswith("seq="))
    return seqs


def test_accepted_and_rejected_items_are_matched_to_their_messages(
    gateway: Start, flavour: str
) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1")
    provision(gw, "acme", "d2", "s2")
    bad_token: Message = {**message(token, 1), "provision_token": "wrong-token"}
    other_site = message(token, 2, site="elsewhere")
    no_site: Message = {k: v for k, v in message(token, 3).items() if k != "site_id"}  # type: ignore[assignment]
    good = [message(token, seq) for seq in range(10, 15)]
    messages = [good[0], bad_token, good[1], other_site, good[2], no_site, *good[3:]]
    report = send(flavour, gw.url, messages, batch_size=3)
    assert report.accepted == 5
    assert [(r.message, r.reason) for r in report.rejected] == [
        (bad_token, "UNAUTHORIZED"),
        (other_site, "SITE_MISMATCH"),
        (no_site, "INVALID_SCHEMA"),
    ]
    assert gw.stats()["accepted"] == 5


def test_a_full_batch_is_sent_by_the_submit_that_fills_it(gateway: Start) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1")
    with Client(gw.url, batch_size=4) as client:
        for seq in range(3):
            client.submit(message(token, seq))
        assert gw.stats()["accepted"] == 0
        client.submit(message(token, 3))
        assert gw.stats()["accepted"] == 4
        client.submit(message(token, 4))
        assert client.flush() == Report(accepted=5)
        assert gw.stats()["accepted"] == 5
        assert client.flush() == Report()


def test_concurrent_callers_share_one_client(gateway: Start, flavour: str) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1", rps=100_000, burst=100_000)
    per_caller = [[message(token, 100 * c + i) for i in range(50)] for c in range(4)]

    async def tasks() -> Report:
        async with AsyncClient(gw.url, batch_size=7) as client:

            async def caller(messages: list[Message]) -> None:
                for m in messages:
                    await client.submit(m)

            await asyncio.gather(*(caller(ms) for ms in per_caller))
            return await client.flush()

    if flavour == "async":
        report = asyncio.run(tasks())
    else:
        with Client(gw.url, batch_size=7) as sync_client:

            def caller(messages: list[Message]) -> None:
                for m in messages:
                    sync_client.submit(m)

            callers = [threading.Thread(target=caller, args=(ms,)) for ms in per_caller]
            for t in callers:
                t.start()
            for t in callers:
                t.join()
            report = sync_client.flush()
    assert report == Report(accepted=200)
    assert gw.stats()["accepted"] == 200


def test_the_context_manager_flushes_on_exit(gateway: Start, flavour: str) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1")

    async def run() -> Report | None:
        async with AsyncClient(gw.url) as client:
            await client.submit(message(token, 1))
        return client.last_report

    if flavour == "async":
        assert asyncio.run(run()) == Report(accepted=1)
    else:
        with Client(gw.url) as sync_client:
            sync_client.submit(message(token, 1))
        assert sync_client.last_report == Report(accepted=1)
    assert gw.stats()["accepted"] == 1


def test_bodies_are_gzipped_unless_told_otherwise() -> None:
    def accept_all(req: Recorded) -> Answer:
        body = gzip.decompress(req.body) if req.headers.get("content-encoding") else req.body
        n = len(json.loads(body)["messages"])
        results = [{"index": i, "status": "accepted"} for i in range(n)]
        out = {"accepted": n, "rejected": 0, "results": results}
        return Answer(202, {"Content-Type": "application/json"}, json.dumps(out).encode())

    server = RecordingServer()
    server.respond = accept_all
    try:
        for gzip_on in (True, False):
            with Client(server.url, gzip=gzip_on) as client:
                client.submit(message("t", 1))
                assert client.flush() == Report(accepted=1)
    finally:
        server.close()
    zipped, plain = server.requests
    assert zipped.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.body)) == {"messages": [message("t", 1)]}
    assert "content-encoding" not in plain.headers
    assert json.loads(plain.body) == {"messages": [message("t", 1)]}


def test_a_proxys_502_is_retried_and_a_whole_request_400_reported_for_each_message() -> None:
    results = json.dumps({"accepted": 2, "rejected": 0, "results": [{"status": "accepted"}] * 2})
    script = [
        Answer(502, body=b"<html>bad gateway</html>"),
        Answer(202, {"Content-Type": "application/json"}, results.encode()),
        Answer(400, {"Content-Type": "application/json"}, b'{"detail":"body is not JSON"}'),
    ]
    server = RecordingServer()
    server.respond = lambda _: script.pop(0)
    first, second = [message("t", 1), message("t", 2)], [message("t", 3), message("t", 4)]
    try:
        assert send("sync", server.url, first, max_retry_s=5) == Report(accepted=2)
        assert send("sync", server.url, second, max_retry_s=5) == Report(
            rejected=[Rejection(m, "HTTP_400", "body is not JSON") for m in second]
        )
    finally:
        server.close()
    assert len(server.requests) == 3
    assert server.requests[0].body == server.requests[1].body


def test_gzip_batches_are_accepted_by_the_gateway(gateway: Start) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1")
    report = send("sync", gw.url, [message(token, s) for s in range(250)], gzip=True)
    assert report == Report(accepted=250)
    assert poll(lambda: sorted(lp_seqs(gw)), lambda s: len(s) == 250) == list(range(250))


def test_a_rate_limited_device_is_retried_until_every_message_is_accepted(
    gateway: Start, flavour: str
) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1", rps=5, burst=5)
    start = time.monotonic()
    report = send(flavour, gw.url, [message(token, s) for s in range(15)], max_retry_s=30)
    assert report == Report(accepted=15)
    # 5 at once, then 5 tokens a second: the retries waited for Retry-After.
    assert time.monotonic() - start >= 1.5
    assert gw.stats()["rejected"].get("RATE_LIMITED", 0) >= 10


def test_a_rate_limited_device_is_reported_after_max_retry_s(gateway: Start, flavour: str) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1", rps=1, burst=1)
    messages = [message(token, s) for s in range(10)]
    start = time.monotonic()
    report = send(flavour, gw.url, messages, max_retry_s=1.5)
    elapsed = time.monotonic() - start
    assert 1 <= report.accepted <= 3
    assert report.accepted + len(report.rejected) == 10
    assert {r.reason for r in report.rejected} == {"RATE_LIMITED"}
    # The accepted ones come first: each batch retry keeps the request order.
    assert [r.message for r in report.rejected] == messages[report.accepted :]
    assert elapsed < 1.5 + 5  # gave up by the deadline (plus a slow machine's margin)


def test_max_retry_s_zero_reports_the_first_refusal(gateway: Start) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1", rps=1, burst=2)
    messages = [message(token, s) for s in range(3)]
    report = send("sync", gw.url, messages, max_retry_s=0)
    limit = "rate limit exceeded: the device may send 1 messages/s with bursts of 2"
    assert report == Report(accepted=2, rejected=[Rejection(messages[2], "RATE_LIMITED", limit)])


def test_a_batch_over_the_body_cap_is_split_until_it_fits(gateway: Start, flavour: str) -> None:
    gw = gateway({"TIDEGATE_MAX_BODY_BYTES": "2000"})
    token = provision(gw, "acme", "d1", "s1")
    report = send(flavour, gw.url, [message(token, s) for s in range(40)], gzip=False)
    assert report == Report(accepted=40)
    assert gw.stats()["responses"]["batch 413"] >= 1


def test_an_unreachable_gateway_is_reported_after_max_retry_s(flavour: str) -> None:
    msg = message("t", 1)
    report = send(flavour, f"http://127.0.0.1:{free_port()}", [msg], max_retry_s=0.5)
    assert report.accepted == 0
    assert [(r.message, r.reason) for r in report.rejected] == [(msg, "UNAVAILABLE")]
    assert "ConnectError" in (report.rejected[0].detail or "")


def test_a_gateway_restarted_mid_run_loses_nothing(gateway: Start, tmp_path: Path) -> None:
    gw = gateway()
    token = provision(gw, "acme", "d1", "s1", rps=100_000, burst=100_000)
    total = 400
    reports: list[Report] = []

    def device() -> None:
        with Client(gw.url, batch_size=10, max_retry_s=60) as client:
            for seq in range(total):
                client.submit(message(token, seq))
                time.sleep(0.002)
            reports.append(client.flush())

    sender = threading.Thread(target=device)
    sender.start()
    poll(lambda: gw.stats()["accepted"], lambda n: n >= 50)
    assert gw.stop() == 0
    time.sleep(0.5)  # connection refused meanwhile: the client backs off and retries
    restarted = run_gateway(gw.env, tmp_path / "restarted")
    try:
        sender.join(120)
        assert not sender.is_alive()
        assert reports == [Report(accepted=total)]
        # The run went on through the restart: the new process took the rest.
        assert 0 < restarted.stats()["accepted"] < total
        assert restarted.stop() == 0
    finally:
        if restarted.proc.poll() is None:
            restarted.stop()
    seqs = Counter(lp_seqs(gw))
    assert sorted(seqs) == list(range(total))
    # At least once: only a batch in flight when the gateway stopped may arrive twice.
    assert sum(seqs.values()) - total <= 10


def device_file(gw: GatewayProcess, path: Path, *adds: list[str]) -> Path:
    """`tidegate device add ARGS >> path` for each of `adds`, as docs/client.md does it."""
    with path.open("a") as out:
        for args in adds:
            command = [sys.executable, "-m", "tidegate", "device", "add", "--tenant", "acme"]
            subprocess.run([*command, *args], env=gw.env, stdout=out, check=True, timeout=60)
    return path


def simulate(gw: GatewayProcess, devices: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run examples/simulate_devices.py against `gw`: its exit status and JSON lines."""
    simulator = [sys.executable, str(ROOT / "examples" / "simulate_devices.py"), "--url", gw.url]
    out = subprocess.run(
        [*simulator, "--devices", str(devices), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=gw.env,
    )
    assert not out.stderr
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()]


def test_the_device_simulator_runs_against_a_gateway(gateway: Start, tmp_path: Path) -> None:
    gw = gateway()
    devices = device_file(
        gw, tmp_path / "devices.jsonl", *(["--device", d, "--site", "s1"] for d in ("d1", "d2"))
    )
    status, lines = simulate(gw, devices, "--rate", "5", "--seconds", "2")
    assert (status, lines) == (
        0,
        [
            {"second": 1, "sent": 10, "accepted": 10, "rejected": {}},
            {"second": 2, "sent": 10, "accepted": 10, "rejected": {}},
        ],
    )
    assert gw.stats()["accepted"] == 20


def test_the_simulator_reports_a_device_over_its_rate_limit(gateway: Start, tmp_path: Path) -> None:
    gw = gateway()
    slow = ["--device", "slow", "--site", "s1", "--rps", "1", "--burst", "1"]
    devices = device_file(gw, tmp_path / "devices.jsonl", slow)
    status, lines = simulate(gw, devices, "--rate", "5", "--seconds", "1", "--max-retry-s", "0")
    assert status == 1
    assert [line["sent"] for line in lines] == [5]
    assert lines[0]["accepted"] >= 1
    assert lines[0]["rejected"] == {"RATE_LIMITED": 5 - lines[0]["accepted"]}
