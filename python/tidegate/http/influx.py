"""InfluxDB's write APIs on the public listener, so Telegraf agents and InfluxDB client
libraries write through tidegate with a device's own credential (or a tenant key):

- v1 `POST /write?db={tenant}`: user `{device_id}` + password its token (an empty user: the
  password is a tenant key), as `u`/`p` query parameters or HTTP Basic (also
  `Authorization: Token …`);
- v2 `POST /api/v2/write?bucket={tenant}&org=…` (org ignored): `Authorization: Token …`;
- v3 `POST /api/v3/write_lp?db={tenant}`: `Authorization: Bearer …` or `Token …`;
- `GET /ping`: 204 with `X-Influxdb-Version`, what clients' health checks ask.

A token is `{device_id}:{provision token}` or a tenant key. The core parses and validates the
lines (docs/core-rules.md, "Line protocol"), and the batch runs through the same pipeline as
the JSON routes'. Answers take InfluxDB's shape: 204, or `{"code", "message"}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate import __version__
from tidegate._core import BUFFER_FULL, UNAUTHORIZED, UNAVAILABLE, valid_id, valid_tenant
from tidegate.answers import (
    ANSWERS,
    BODY_INVALID,
    WAL_FULL,
    WAL_UNAVAILABLE,
    Refusal,
    batch_answer,
    detail,
)
from tidegate.durable import Refused
from tidegate.http.body import read_body
from tidegate.http.endpoint import route, utf8_header
from tidegate.http.gateway import Gateway
from tidegate.pipeline.lines import refused_lines
from tidegate.serving import JsonBody
from tidegate.store import db_down

if TYPE_CHECKING:
    from tidegate._core import Batch

VERSION_HEADER = "X-Influxdb-Version"
VERSION = f"tidegate-{__version__}"
"""What `/ping` answers as InfluxDB's version: not a 1.x/2.x/3.x one, as tidegate speaks all
three write APIs and no query API."""

PRECISIONS = ("ns", "us", "µs", "u", "ms", "s")
V1_PRECISIONS = (*PRECISIONS, "m", "h")

# The `{"code"}` of InfluxDB's error body per status.
CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "unauthorized",
    413: "request too large",
    415: "invalid",
    429: "too many requests",
    503: "unavailable",
}
# UNAUTHORIZED's detail names what the device presents.
CREDENTIAL = "credential ({device_id}:{token}) or tenant key"


@dataclass(frozen=True, slots=True)
class Api:
    """One of InfluxDB's write APIs: its database parameter, precisions and schemes."""

    name: str
    db_param: str
    precisions: tuple[str, ...]
    schemes: tuple[str, ...]
    basic: bool


V1 = Api("influx_v1_write", "db", V1_PRECISIONS, ("token",), basic=True)
V2 = Api("influx_v2_write", "bucket", PRECISIONS, ("token",), basic=False)
V3 = Api("influx_v3_write", "db", PRECISIONS, ("bearer", "token"), basic=False)


@dataclass(frozen=True, slots=True)
class Credential:
    """A device's own (`device` set, `secret` its provision token) or a tenant key."""

    device: str | None
    secret: str


def routes(gw: Gateway) -> list[BaseRoute]:
    """The three write routes and /ping."""
    influx = Influx(gw)
    return [
        route(gw, "/write", "POST", V1.name, influx.v1, ingest=True),
        route(gw, "/api/v2/write", "POST", V2.name, influx.v2, ingest=True),
        route(gw, "/api/v3/write_lp", "POST", V3.name, influx.v3, ingest=True),
        route(gw, "/ping", "GET", "influx_ping", ping),
    ]


async def ping(request: Request) -> Response:
    """GET /ping: InfluxDB's liveness answer."""
    return Response(None, 204, {VERSION_HEADER: VERSION})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """InfluxDB's error body."""
    body = orjson.dumps({"code": CODES.get(status, "internal error"), "message": message})
    return JsonBody(body, status, {VERSION_HEADER: VERSION, **(headers or {})})


def credential(request: Request, api: Api) -> Credential | None:
    """The request's credential in the forms `api` accepts, or None."""
    if api.basic:
        user, password = request.query_params.get("u"), request.query_params.get("p")
        if user is not None and password is not None:
            return _user_password(user, password)
    authorization = utf8_header(request, "authorization")
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if not value:
        return None
    if scheme == "basic" and api.basic:
        return _basic(value)
    if scheme not in api.schemes:
        return None
    device, colon, token = value.partition(":")
    if colon and valid_id(device) and valid_id(token):
        return Credential(device, token)
    return Credential(None, value)


def _basic(value: str) -> Credential | None:
    try:
        user, colon, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return _user_password(user, password) if colon else None


def _user_password(user: str, password: str) -> Credential:
    """1.x: user = the device, password = its token; an empty user: the password is a tenant
    key (an agent like Telegraf's `outputs.influxdb` has no token setting)."""
    return Credential(user or None, password)


class Influx:
    """The write routes: credential, body, parse in the core, the pipeline, InfluxDB's answer."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.cfg
        self.core = gw.core

    async def v1(self, request: Request) -> Response:
        """POST /write?db={tenant}."""
        return await self.write(request, V1)

    async def v2(self, request: Request) -> Response:
        """POST /api/v2/write?bucket={tenant}&org=…."""
        return await self.write(request, V2)

    async def v3(self, request: Request) -> Response:
        """POST /api/v3/write_lp?db={tenant}."""
        return await self.write(request, V3)

    async def write(self, request: Request, api: Api) -> Response:
        """Any of the three: InfluxDB's answers for every outcome."""
        try:
            return await self._write(request, api)
        except Refusal as exc:
            return self.answer(exc.key, exc.detail)
        except self.core.BodyError as exc:
            return self.answer(BODY_INVALID, exc.detail)
        except Refused as exc:
            return self.answer(
                WAL_FULL if exc.reason == BUFFER_FULL else WAL_UNAVAILABLE, exc.detail
            )

    def answer(
        self, key: str, message: str, rate_limit_s: float = 0.0, status: int | None = None
    ) -> Response:
        """The answer table's `key` (its status, unless `status`, and Retry-After) in
        InfluxDB's shape, saying `message`."""
        spec = ANSWERS[key]
        flush_s = self.cfg.influx_flush_interval_ms / 1000
        retry = spec.retry_after(flush_s, rate_limit_s)
        return error(status or spec.status, message, {"Retry-After": retry} if retry else None)

    async def _write(self, request: Request, api: Api) -> Response:
        cfg = self.cfg
        params = request.query_params
        tenant = params.get(api.db_param)
        if not tenant:
            return self.answer(BODY_INVALID, f"{api.db_param} is required")
        precision = params.get("precision") or "ns"
        if precision not in api.precisions:
            message = f"precision must be one of {', '.join(api.precisions)}"
            return self.answer(BODY_INVALID, message)
        cred = credential(request, api)
        if cred is None or not cred.secret or not valid_tenant(tenant):
            return self._unauthorized()
        body = await read_body(request, cfg.max_body_bytes)
        now = time.time_ns()
        pipeline = self.gw.pipeline
        if cred.device is not None:
            if not (valid_id(cred.device) and valid_id(cred.secret)):
                return self._unauthorized()
            sites = await self._sites_of(tenant, [cred.device])
            if sites is None:
                return self._unavailable()
            site = sites.get(cred.device)
            if site is None:
                return self._unauthorized()
            device = (cred.device, site, cred.secret)
            batch = self.core.parse_lines(
                body, tenant, now, precision, cfg.max_payload_bytes, device=device
            )
        else:
            owner = await self.gw.services.tenant_keys.tenant(cred.secret)
            if owner is None:
                return self._unauthorized()
            if owner != tenant:
                message = f"the key does not write to {api.db_param} {tenant!r}"
                pipeline.refuse(UNAUTHORIZED, message)
                return self.answer(UNAUTHORIZED, message, status=403)
            devices = self.core.line_devices(body, cfg.max_payload_bytes)
            sites = await self._sites_of(tenant, devices)
            if sites is None:
                return self._unavailable()
            batch = self.core.parse_lines(
                body, tenant, now, precision, cfg.max_payload_bytes, sites=sites
            )
        accepted, rejected, _out, _published = await pipeline.ingest(batch)
        if not rejected:
            return Response(None, 204, {VERSION_HEADER: VERSION})
        return self._refused(batch, accepted, rejected, cred.device is not None)

    def _refused(self, batch: Batch, accepted: int, rejected: int, device: bool) -> Response:
        """Some lines were refused. None accepted and every refusal retryable as is: the batch
        route's status (503 before 429) and Retry-After; a device's own credential refused:
        401; else InfluxDB's partial write (400, the accepted lines kept), with Retry-After when
        some refusals may pass later."""
        counts = batch.reason_counts()
        flush_s = self.cfg.influx_flush_interval_ms / 1000
        status, retry = batch_answer(accepted, counts, flush_s, batch.retry_after)
        headers = {"Retry-After": retry} if retry else None
        if status in (429, 503):
            return error(
                status, "lines refused for now; retry later: " + refused_lines(batch), headers
            )
        if not accepted and device and dict(counts).get(UNAUTHORIZED, 0) == rejected:
            return self._unauthorized(count=False)
        return error(400, "partial write: " + refused_lines(batch), headers)

    def _unauthorized(self, count: bool = True) -> Response:
        why = detail(UNAUTHORIZED, credential=CREDENTIAL)
        if count:
            self.gw.pipeline.refuse(UNAUTHORIZED, why)
        return self.answer(UNAUTHORIZED, why)

    def _unavailable(self) -> Response:
        why = detail(UNAVAILABLE)
        self.gw.pipeline.refuse(UNAVAILABLE, why)
        return self.answer(UNAVAILABLE, why)

    async def _sites_of(self, tenant: str, devices: list[str]) -> dict[str, str] | None:
        """device -> site of the active ones among `devices`; None when the registry cannot
        answer within its timeout."""
        try:
            async with asyncio.timeout(self.cfg.registry_timeout_s):
                return await self.gw.services.sites.of(tenant, devices)
        except Exception as exc:
            if db_down(exc) or isinstance(exc, TimeoutError):
                return None
            raise
