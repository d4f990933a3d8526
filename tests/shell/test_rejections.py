"""What a client and an operator learn of a rejection: every rejected item of the batch route
carries a `detail` naming what is wrong with it (each reason code walked), the single route and
the line-protocol routes say the same, and rejections reach the log sampled."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from app_gateway import AppGateway
from ingest_calls import HOLD, msg, post_batch, single
from provisioning import provision
from tidegate._core import REASONS
from tidegate.pipeline.rejection_log import EVENT, RejectionLog

Start = Callable[..., AppGateway]

ID_RULE = "1 to 128 bytes of UTF-8 without control characters or backslashes"
# One example per reason code: the message sent and the detail its result carries.
EXAMPLES: dict[str, str] = {
    "INVALID_MSG_TYPE": "msg_type 'alarm' is not one of: telemetry, heartbeat",
    "INVALID_SCHEMA": "site_id must be a string, got a number",
    "INVALID_TIMESTAMP": "ts must be an RFC 3339 string, got a number",
    "INVALID_METRICS": "metric 'temp' is a string; metrics must be numbers or booleans",
    "PAYLOAD_TOO_LARGE": "message is 9121 bytes; the limit is 8192 bytes",
    "UNAUTHORIZED": "unknown device or wrong provision token",
    "SITE_MISMATCH": "site_id 's2' is not the device's registered site",
    "RATE_LIMITED": "rate limit exceeded: the device may send 0.5 messages/s with bursts of 1",
    "BUFFER_FULL": "the tenant's ingest buffer is full; retry later",
    "UNAVAILABLE": "the device registry did not answer; retry later",
}


def details(response: Any) -> dict[str, str]:
    """reason -> detail of the rejected results (each must have one)."""
    out = {}
    for result in response.json()["results"]:
        if result["status"] == "rejected":
            out[result["reason"]] = result["detail"]
    return out


def test_every_reason_code_comes_with_a_detail_on_the_batch_route(
    gateway: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    provision(gw, "t1", "slow", "s1", token="tok-slow", rps=0.5, burst=1)
    c = gw.client()
    seen = details(
        post_batch(
            c,
            [
                msg("d1", msg_type="alarm"),
                msg("d1", site_id=123),
                msg("d1", ts=1714566645),
                msg("d1", metrics={"temp": "hot"}),
                msg("d1", metrics={"pad": "x" * 9000}),
                msg("d1", token="wrong-token"),
                msg("d1", site_id="s2"),
                msg("slow", "tok-slow"),
                msg("slow", "tok-slow"),
            ],
        )
    )
    full = gateway({**HOLD, "TIDEGATE_BUFFER_MAX_BYTES": "100"}, name="full")
    provision(full, "t1", "d1", "s1", token="tok-d1")
    seen |= details(post_batch(full.client(), [msg("d1", seq=i) for i in range(3)]))

    async def silent(keys: object) -> object:
        raise TimeoutError

    monkeypatch.setattr(gw.gateway.services.admitter.registry, "devices", silent)
    seen |= details(post_batch(c, [msg("d7", "tok-d7")]))
    assert seen == EXAMPLES
    assert set(EXAMPLES) == set(REASONS)
    assert "wrong-token" not in json.dumps(seen)


def test_the_single_route_answers_the_items_detail_for_a_validation_code(
    gateway: Start,
) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    r = single(gw.client(), body={"site_id": "s1", "metrics": {"temp": "hot"}})
    assert (r.status_code, r.json()) == (
        400,
        {"detail": EXAMPLES["INVALID_METRICS"], "reason": "INVALID_METRICS"},
    )


def test_rejections_are_logged_once_per_tenant_and_reason_per_interval(
    gateway: Start, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway(HOLD)
    provision(gw, "t1", "d1", "s1", token="tok-d1")
    c = gw.client()
    with caplog.at_level(logging.INFO, logger="tidegate"):
        for _ in range(3):
            post_batch(c, [msg("d1", metrics={"temp": "hot"})] * 50 + [msg("d1", token="bad")])
    lines = [r for r in caplog.records if r.getMessage() == EVENT]
    assert [getattr(r, "fields") for r in lines] == [  # noqa: B009
        {
            "tenant": "t1",
            "reason": "INVALID_METRICS",
            "device_id": "d1",
            "detail": EXAMPLES["INVALID_METRICS"],
            "suppressed": 0,
            "interval_s": 10.0,
        },
        {
            "tenant": "t1",
            "reason": "UNAUTHORIZED",
            "device_id": "d1",
            "detail": "unknown device or wrong provision token",
            "suppressed": 0,
            "interval_s": 10.0,
        },
    ]


class FakeBatch:
    """The one method the sampler reads of a Batch."""

    def __init__(self, rows: list[tuple[str, str, str | None, str]]) -> None:
        self.rows = rows

    def rejections(self) -> list[tuple[str, str, str | None, str]]:
        return self.rows


def test_a_flood_of_rejections_costs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    sampler = RejectionLog(10.0, clock=lambda: now[0])
    flood = FakeBatch(
        [("RATE_LIMITED", f"t{i % 3}", f"d{i}", "rate limit exceeded") for i in range(100)]
    )
    with caplog.at_level(logging.INFO, logger="tidegate"):
        for step in range(100):  # 10,000 rejections over 25 s
            now[0] = step * 0.25
            sampler.note(flood)  # type: ignore[arg-type]
    fields = [getattr(r, "fields") for r in caplog.records if r.getMessage() == EVENT]  # noqa: B009
    # Three tenants, a line each at 0 s, 10 s and 20 s: 9 lines for 10,000 items; each line
    # counts what its tenant sent since the previous one (34 or 33 items every 0.25 s).
    assert len(fields) == 9
    assert [f["suppressed"] for f in fields] == [0, 0, 0] + [1359, 1319, 1319] * 2


def test_the_sampler_remembers_a_bounded_number_of_tenants(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampler = RejectionLog(10.0, clock=lambda: 0.0)
    many = FakeBatch([("UNAUTHORIZED", f"t{i}", None, "x") for i in range(5000)])
    with caplog.at_level(logging.INFO, logger="tidegate"):
        sampler.note(many)  # type: ignore[arg-type]
        sampler.note(many)  # type: ignore[arg-type]
    fields = [getattr(r, "fields") for r in caplog.records if r.getMessage() == EVENT]  # noqa: B009
    assert len(fields) == 1025
    assert fields[-1]["tenant"] == "*"
