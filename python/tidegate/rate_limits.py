"""`GET /ingest/v1/metrics/rate-limits`: this process's rate-limit refusals per tenant, answered
alike by every process that admits messages: the gateway (a Bearer key's tenant on the public
listener; every tenant, or a key's, on the ops listener) and the NATS worker (its ops listener)."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from tidegate.answers import ANSWERS, API_UNAUTHORIZED
from tidegate.config import Config
from tidegate.pipeline.services import Services
from tidegate.refusals import DEFAULT_TOP, LIMITED_WINDOW_S, MAX_TOP, WINDOW_S, Refusals
from tidegate.serving import json_response

ROUTE = "/ingest/v1/metrics/rate-limits"


class Admits(Protocol):
    """A started process that runs the pipeline: the gateway or a NATS worker."""

    cfg: Config
    refusals: Refusals
    services: Services


async def answer(process: Admits, request: Request, *, key_required: bool) -> Response:
    """The refusals of the Bearer key's tenant, or (no Authorization and `key_required` False)
    of every tenant; 401 for a missing or unknown key where one is needed, 400 for a bad `top`."""
    tenant = None
    if key_required or "authorization" in request.headers:
        tenant = await process.services.tenant_keys.of_header(request.headers.get("authorization"))
        if tenant is None:
            refused = ANSWERS[API_UNAUTHORIZED]
            return json_response(refused.status, refused.content(), refused.headers)
    top = _top(request.query_params.get("top"))
    if top is None:
        return json_response(400, {"detail": f"top must be an integer from 1 to {MAX_TOP}"})
    cfg = process.cfg
    admission = process.services.admitter.admission
    return json_response(
        200,
        {
            "default_limits": {"rps": cfg.default_rps, "burst": cfg.default_burst},
            "window_s": WINDOW_S,
            "limited_window_s": LIMITED_WINDOW_S,
            "tenants": process.refusals.report(tenant, top, admission.limits),
        },
    )


def _top(raw: str | None) -> int | None:
    """The `top` query parameter, DEFAULT_TOP when absent, None when not 1 to MAX_TOP."""
    if raw is None:
        return DEFAULT_TOP
    try:
        top = int(raw)
    except ValueError:
        return None
    return top if 1 <= top <= MAX_TOP else None
