"""Device admin, one implementation for the CLI and the bulk API: create, update, revoke and
rotate_token, each operation validated on its own and all valid ones applied in ONE transaction.

An operation is a JSON-like mapping `{"op", "device_id", ...}`. Its outcome carries an HTTP-like
status code: 201 created, 200 done, 404 no such device in the tenant, 409 conflicts with the
device's state, 422 invalid. A provision token appears only in the outcome of the create or
rotate_token that made it, never in an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tidegate.ids import check_device, check_id, check_token
from tidegate.store.registry import (
    ACTIVE,
    ADD_DEVICE,
    ENSURE_TENANT,
    REVOKE,
    REVOKED,
    Registry,
    check_limits,
    device_row,
)
from tidegate.store.secrets import hash_secret, new_secret
from tidegate.store.statements import Statements

CREATE = "create"
UPDATE = "update"
REVOKE_OP = "revoke"
ROTATE_TOKEN = "rotate_token"
OPS = (CREATE, UPDATE, REVOKE_OP, ROTATE_TOKEN)
MAX_OPERATIONS = 100

# Keys each operation takes besides "op" and "device_id".
_KEYS: dict[str, frozenset[str]] = {
    CREATE: frozenset({"site_id", "rps", "burst", "provision_token"}),
    UPDATE: frozenset({"site_id", "rps", "burst"}),
    REVOKE_OP: frozenset(),
    ROTATE_TOKEN: frozenset({"provision_token"}),
}
# A key absent leaves the column as it is; rps/burst given as null go back to the defaults.
# Placeholders in order of appearance: sqlite.py maps each `$n` to a positional `?`.
_UPDATE = (
    "UPDATE devices SET "
    "site_id = CASE WHEN CAST($1 AS boolean) THEN CAST($2 AS text) ELSE site_id END, "
    "rps = CASE WHEN CAST($3 AS boolean) THEN CAST($4 AS double precision) ELSE rps END, "
    "burst = CASE WHEN CAST($5 AS boolean) THEN CAST($6 AS integer) ELSE burst END, "
    "updated_at = now() WHERE tenant_id = $7 AND device_id = $8 "
    "RETURNING device_id, site_id, status, rps, burst"
)
# A revoked device keeps its old hash: it is provisioned again with create.
_ROTATE = (
    "UPDATE devices SET token_hash = CASE WHEN status = 'active' THEN $1 ELSE token_hash END, "
    "updated_at = CASE WHEN status = 'active' THEN now() ELSE updated_at END "
    "WHERE tenant_id = $2 AND device_id = $3 RETURNING status"
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one operation did: `status_code` and `data`, or `error`."""

    op: str | None
    device_id: str | None
    status_code: int
    data: dict[str, object] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True for 200 and 201."""
        return self.status_code < 300


@dataclass(frozen=True, slots=True)
class _Valid:
    op: str
    device_id: str
    fields: Mapping[str, Any]


async def apply(registry: Registry, tenant_id: str, operations: Sequence[object]) -> list[Outcome]:
    """One outcome per operation, in order. Invalid operations (422) are answered without
    touching the database; the valid ones run in order in one transaction."""
    checked = [_check(op) for op in operations]
    valid = [c for c in checked if isinstance(c, _Valid)]
    done: list[Outcome] = []
    if valid:
        async with registry.transaction() as tx:
            for v in valid:
                done.append(await _run(tx, tenant_id, v))
    results = iter(done)
    return [c if isinstance(c, Outcome) else next(results) for c in checked]


def _check(raw: object) -> _Valid | Outcome:
    if not isinstance(raw, Mapping):
        return Outcome(None, None, 422, error="an operation must be a JSON object")
    op, device_id = raw.get("op"), raw.get("device_id")
    shown_device = device_id if isinstance(device_id, str) else None
    shown_op = op if isinstance(op, str) else None
    if shown_op not in OPS:
        return Outcome(shown_op, shown_device, 422, error=f"op must be one of {', '.join(OPS)}")
    assert isinstance(op, str)
    try:
        if not isinstance(device_id, str):
            raise ValueError("device_id must be a string")
        # A new device must be addressable by both ingest routes; an existing one is found
        # by any id the registry ever accepted.
        check_device(device_id) if op == CREATE else check_id("device id", device_id)
        unknown = sorted(set(raw) - {"op", "device_id"} - _KEYS[op])
        if unknown:
            raise ValueError(f"unknown fields for {op}: {', '.join(map(str, unknown))}")
        fields = {k: raw[k] for k in _KEYS[op] if k in raw}
        _check_fields(op, fields)
    except ValueError as exc:
        return Outcome(op, shown_device, 422, error=str(exc))
    return _Valid(op, device_id, fields)


def _check_fields(op: str, fields: Mapping[str, Any]) -> None:
    site = fields.get("site_id")
    if op == CREATE and site is None:
        raise ValueError("create needs a site_id")
    if op == UPDATE and not fields:
        raise ValueError("update needs at least one of site_id, rps, burst")
    if "site_id" in fields:
        if not isinstance(site, str):
            raise ValueError("site_id must be a string")
        check_id("site id", site)
    rps, burst = fields.get("rps"), fields.get("burst")
    if rps is not None and (
        isinstance(rps, bool) or not isinstance(rps, int | float) or not math.isfinite(rps)
    ):
        raise ValueError("rps must be a positive number")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)):
        raise ValueError("burst must be a positive integer")
    check_limits(None if rps is None else float(rps), burst)
    token = fields.get("provision_token")
    if token is not None:
        if not isinstance(token, str):
            raise ValueError("provision_token must be a string")
        check_token(token)  # its error does not echo the token


async def _run(tx: Statements, tenant_id: str, v: _Valid) -> Outcome:
    f = v.fields
    device = v.device_id
    if v.op == CREATE:
        rps = None if f.get("rps") is None else float(f["rps"])
        row, token = device_row(
            tenant_id, device, f["site_id"], rps, f.get("burst"), f.get("provision_token")
        )
        await tx.rows(ENSURE_TENANT, tenant_id)
        if await tx.value(ADD_DEVICE, *row) is None:
            return _conflict(v, f"device {device!r} of tenant {tenant_id!r} is already active")
        data = {
            "device_id": device,
            "site_id": f["site_id"],
            "status": ACTIVE,
            "rps": rps,
            "burst": f.get("burst"),
            "provision_token": token,
        }
        return Outcome(v.op, device, 201, data)
    if v.op == UPDATE:
        found = await tx.rows(
            _UPDATE,
            "site_id" in f,
            f.get("site_id"),
            "rps" in f,
            None if f.get("rps") is None else float(f["rps"]),
            "burst" in f,
            f.get("burst"),
            tenant_id,
            device,
        )
        if not found:
            return _missing(v, tenant_id)
        d, site, status, rps, burst = found[0]
        data = {
            "device_id": d,
            "site_id": site,
            "status": status,
            "rps": None if rps is None else float(rps),
            "burst": burst,
        }
        return Outcome(v.op, device, 200, data)
    if v.op == REVOKE_OP:
        if await tx.value(REVOKE, tenant_id, device) is None:
            return _missing(v, tenant_id)
        return Outcome(v.op, device, 200, {"device_id": device, "status": REVOKED})
    token = f.get("provision_token") or new_secret()
    status = await tx.value(_ROTATE, hash_secret(token), tenant_id, device)
    if status is None:
        return _missing(v, tenant_id)
    if status != ACTIVE:
        return _conflict(v, f"device {device!r} is revoked: create it again instead")
    return Outcome(v.op, device, 200, {"device_id": device, "provision_token": token})


def _missing(v: _Valid, tenant_id: str) -> Outcome:
    return Outcome(
        v.op, v.device_id, 404, error=f"no device {v.device_id!r} in tenant {tenant_id!r}"
    )


def _conflict(v: _Valid, error: str) -> Outcome:
    return Outcome(v.op, v.device_id, 409, error=error)
