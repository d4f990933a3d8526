"""What a client sends and what it learns: the message, a rejection, the report of a flush."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, NotRequired, Required, TypedDict


class Message(TypedDict, total=False):
    """One message of `POST /ingest/v1/batch`, as the route reads it. Set `ts` (RFC 3339, see
    `timestamp`): a message sent twice then overwrites itself in InfluxDB instead of becoming
    two points."""

    tenant_id: Required[str]
    device_id: Required[str]
    msg_type: Required[str]
    provision_token: Required[str]
    site_id: Required[str]
    ts: NotRequired[str]
    seq: NotRequired[int]
    metrics: NotRequired[dict[str, Any]]


def timestamp(ns: int | None = None) -> str:
    """`ns` nanoseconds since the epoch (default: now) as RFC 3339 UTC with nanoseconds."""
    secs, frac = divmod(time.time_ns() if ns is None else ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


@dataclass(frozen=True)
class Rejection:
    """A message the gateway did not take: its reason code (the gateway's, e.g. `INVALID_SCHEMA`,
    `RATE_LIMITED` once retrying ran out of time, `UNAVAILABLE` when it could not be reached, or
    `HTTP_<status>` for a whole-request answer without one) and the detail, when there is one."""

    message: Message
    reason: str
    detail: str | None = None


@dataclass
class Report:
    """The outcome of every message sent since the previous flush: each one is either counted in
    `accepted` or listed in `rejected`, exactly once."""

    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
