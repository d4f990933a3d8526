"""The tenant API (`Authorization: Bearer <tenant api key>`): batch reads of devices and their
last message, bulk device admin, and the rate-limit state.

- `POST /api/v1/batch/get`: up to 100 ids of one resource type, optional field selection,
  a result per id in request order (partial success), totals, processed_at; ONE registry query.
- `POST /api/v1/batch/devices`: up to 100 create/update/revoke/rotate_token operations, the
  valid ones in one transaction (`store.devices`, which the CLI uses too).
- `GET /ingest/v1/metrics/rate-limits`: refusals per tenant: the Bearer key's on the public
  listener (a key is required there), every tenant's on the ops listener.

Every read and write is scoped to the key's tenant: another tenant's ids are 404 items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from tidegate import broker, logs, rate_limits
from tidegate._core import valid_id
from tidegate.answers import API_UNAUTHORIZED, BODY_INVALID, DATABASE_UNAVAILABLE, Refusal
from tidegate.http import cache
from tidegate.http.body import read_body
from tidegate.http.endpoint import answer, route
from tidegate.http.gateway import Gateway
from tidegate.ids import ID_RULE
from tidegate.serving import json_response
from tidegate.store import db_down
from tidegate.store import devices as device_ops
from tidegate.store.device_state import DeviceView, Snapshot

MAX_IDS = 100
DEVICES = "devices"
TELEMETRY_LATEST = "telemetry_latest"
FIELDS: dict[str, tuple[str, ...]] = {
    DEVICES: (
        "device_id",
        "site_id",
        "status",
        "rps",
        "burst",
        "created_at",
        "updated_at",
        "last_seen_at",
    ),
    TELEMETRY_LATEST: ("device_id", "msg_type", "ts", "seq", "metrics", "received_at"),
}
RESOURCE_TYPES = tuple(FIELDS)


class _Invalid(Exception):
    """A whole request refused: `status` with `{"detail", **extra}`."""

    def __init__(self, status: int, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"detail": detail, **extra}


def routes(gw: Gateway) -> list[BaseRoute]:
    """The public listener's: batch read, bulk admin, and the rate-limit state of the Bearer
    key's tenant (a key is required there: without one the state would name every tenant)."""
    api = Api(gw)
    return [
        route(gw, "/api/v1/batch/get", "POST", "batch_get", api.batch_get),
        route(gw, "/api/v1/batch/devices", "POST", "batch_devices", api.batch_devices),
        route(gw, rate_limits.ROUTE, "GET", "rate_limits", api.tenant_rate_limits),
    ]


def ops_routes(gw: Gateway) -> list[BaseRoute]:
    """The ops listener's: the rate-limit state of every tenant, or of a Bearer key's."""
    return [route(gw, rate_limits.ROUTE, "GET", "rate_limits_ops", Api(gw).rate_limits)]


class Api:
    """The three endpoints."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def batch_get(self, request: Request) -> Response:
        """POST /api/v1/batch/get."""
        return await self._guarded("batch_get", self._batch_get(request))

    async def _batch_get(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        body = await self._json_object(request)
        resource, ids, fields = _get_request(body)
        views = await self.gw.services.registry.device_state.views(
            tenant, [i for i in dict.fromkeys(ids) if valid_id(i)]
        )
        latest = self._latest(tenant, views)
        results = [_get_result(i, views.get(i), latest.get(i), resource, fields) for i in ids]
        return json_response(200, {"resource_type": resource, **_totals(results)})

    async def batch_devices(self, request: Request) -> Response:
        """POST /api/v1/batch/devices."""
        return await self._guarded("batch_devices", self._batch_devices(request))

    async def _batch_devices(self, request: Request) -> Response:
        tenant = await self._tenant(request)
        body = await self._json_object(request)
        operations = body.get("operations")
        if not isinstance(operations, list) or not 1 <= len(operations) <= MAX_IDS:
            raise _Invalid(422, f"operations must be a list of 1 to {MAX_IDS} operations")
        outcomes = await device_ops.apply(self.gw.services.registry, tenant, operations)
        for o in outcomes:
            if o.ok and o.device_id is not None:
                cache.forget_device(self.gw, tenant, o.device_id)
        revoked = [
            o.device_id for o in outcomes if o.ok and o.op == device_ops.REVOKE_OP and o.device_id
        ]
        broker_dir = self.gw.cfg.nats.broker_dir
        if revoked and broker_dir is not None:
            # The broker's users follow the registry: a revoked device loses its MQTT access.
            await asyncio.to_thread(broker.remove_devices, broker_dir, tenant, revoked)
        results = [_admin_result(index, o) for index, o in enumerate(outcomes)]
        out = _totals(results)
        logs.log(
            "devices_admin",
            tenant=tenant,
            operations=len(outcomes),
            succeeded=out["total_succeeded"],
            failed=out["total_failed"],
        )
        return json_response(200, out)

    async def tenant_rate_limits(self, request: Request) -> Response:
        """GET /ingest/v1/metrics/rate-limits on the public listener: a key is required."""
        return await rate_limits.answer(self.gw, request, key_required=True)

    async def rate_limits(self, request: Request) -> Response:
        """GET /ingest/v1/metrics/rate-limits on the ops listener: a key scopes it."""
        return await rate_limits.answer(self.gw, request, key_required=False)

    async def _tenant(self, request: Request) -> str:
        tenant = await self.gw.services.tenant_keys.of_header(request.headers.get("authorization"))
        if tenant is None:
            raise Refusal(API_UNAUTHORIZED)
        return tenant

    async def _json_object(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, self.gw.cfg.max_body_bytes)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Refusal(BODY_INVALID, error="body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refusal(BODY_INVALID, error="body must be a JSON object")
        return body

    def _latest(self, tenant: str, views: Mapping[str, DeviceView]) -> dict[str, Snapshot]:
        """Each found device's last message: this process's when newer than the stored one
        (which other processes write, one flush interval behind)."""
        ids = list(views)
        here = self.gw.services.latest.get(tenant, ids)
        out = {}
        for device_id, mine in zip(ids, here, strict=True):
            stored = views[device_id].latest
            best = mine if stored is None or (mine is not None and mine[4] > stored[4]) else stored
            if best is not None:
                out[device_id] = best
        return out

    async def _guarded(self, route_name: str, work: Awaitable[Response]) -> Response:
        """`work`'s response; a refused request (_Invalid) answered as such, a database that
        cannot be reached as 503 + Retry-After (logged)."""
        try:
            return await work
        except _Invalid as exc:
            return _refused(exc)
        except Exception as exc:
            if not db_down(exc):
                raise
            logs.log(
                "api_db_unavailable", level="error", route=route_name, error=type(exc).__name__
            )
            return answer(DATABASE_UNAVAILABLE)


def _refused(exc: _Invalid) -> Response:
    return json_response(exc.status, exc.body)


def _get_request(body: Mapping[str, Any]) -> tuple[str, list[str], tuple[str, ...]]:
    """`(resource_type, ids, fields)` of a batch/get body, or _Invalid."""
    resource = body.get("resource_type")
    if resource not in FIELDS:
        raise _Invalid(400, f"resource_type must be one of {', '.join(RESOURCE_TYPES)}")
    assert isinstance(resource, str)
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _Invalid(422, "ids must be a list of strings")
    if not 1 <= len(ids) <= MAX_IDS:
        raise _Invalid(422, f"ids must hold 1 to {MAX_IDS} ids, not {len(ids)}")
    known = FIELDS[resource]
    fields = body.get("fields")
    if fields is None:
        return resource, ids, known
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise _Invalid(422, "fields must be a non-empty list of field names")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise _Invalid(
            400,
            f"unknown fields for {resource}: {', '.join(unknown)}",
            unknown_fields=unknown,
            known_fields=list(known),
        )
    return resource, ids, tuple(f for f in known if f in fields)


def _get_result(
    device_id: str,
    view: DeviceView | None,
    last: Snapshot | None,
    resource: str,
    fields: Sequence[str],
) -> dict[str, object]:
    if not valid_id(device_id):
        return _error(device_id, 422, f"invalid device id: {ID_RULE}")
    if view is None:
        return _error(device_id, 404, f"no device {device_id!r}")
    if resource == DEVICES:
        data = _device_data(view, last)
    elif last is None:
        return _error(device_id, 404, f"device {device_id!r} has sent no accepted message yet")
    else:
        data = _latest_data(view, last)
    return {
        "id": device_id,
        "status": "success",
        "status_code": 200,
        "data": {f: data[f] for f in fields},
    }


def _device_data(view: DeviceView, last: Snapshot | None) -> dict[str, object]:
    return {
        "device_id": view.device_id,
        "site_id": view.site_id,
        "status": view.status,
        "rps": view.rps,
        "burst": view.burst,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
        "last_seen_at": None if last is None else rfc3339_ns(last[4]),
    }


def _latest_data(view: DeviceView, last: Snapshot) -> dict[str, object]:
    msg_type, ts_ns, seq, metrics, received_ns = last
    return {
        "device_id": view.device_id,
        "msg_type": msg_type,
        "ts": rfc3339_ns(ts_ns),
        "seq": seq,
        # Already JSON (written by the core): embedded as is.
        "metrics": orjson.Fragment(metrics),
        "received_at": rfc3339_ns(received_ns),
    }


def _admin_result(index: int, o: device_ops.Outcome) -> dict[str, object]:
    out: dict[str, object] = {"index": index, "id": o.device_id, "op": o.op}
    if o.ok:
        out.update(status="success", status_code=o.status_code, data=o.data)
    else:
        out.update(status="error", status_code=o.status_code, error=o.error)
    return out


def _error(device_id: str, status: int, error: str) -> dict[str, object]:
    return {"id": device_id, "status": "error", "status_code": status, "error": error}


def _totals(results: list[dict[str, object]]) -> dict[str, Any]:
    succeeded = sum(1 for r in results if r["status"] == "success")
    return {
        "results": results,
        "total_requested": len(results),
        "total_succeeded": succeeded,
        "total_failed": len(results) - succeeded,
        "processed_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def rfc3339_ns(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with nine fraction digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{fraction:09d}Z"
