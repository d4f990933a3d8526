"""The OpenAPI 3.1 description of every route (ingest.py, shelly.py, ops.py, api.py), by hand;
the limits, patterns and reason codes in it come from the compiled core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidegate import __version__
from tidegate._core import (
    MAX_BATCH_MESSAGES,
    MAX_ID_BYTES,
    MAX_METRICS,
    MAX_SHELLY_MESSAGES,
    MSG_TYPES,
    RATE_LIMITED,
    REASONS,
    SHELLY_REASONS,
    TENANT_PATTERN,
)
from tidegate.ids import ID_RULE


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def response_spec(
    schema: Mapping[str, Any], description: str, retry_after: bool = False
) -> dict[str, Any]:
    """An OpenAPI JSON response object."""
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": dict(schema)}},
    }
    if retry_after:
        out["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return out


DETAIL = _ref("Detail")
_TENANT: dict[str, Any] = {"type": "string", "pattern": TENANT_PATTERN}
# The limit is in UTF-8 bytes, which JSON Schema's maxLength (characters) cannot say.
_ID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "description": f"{ID_RULE}; the limit counts UTF-8 bytes, not characters",
}
_MSG_TYPE: dict[str, Any] = {"type": "string", "enum": list(MSG_TYPES)}
_GZIP = {
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "enum": ["gzip", "identity"]},
    "description": "gzip bodies are accepted; compressed and decompressed size are both capped.",
}

_SCHEMAS: dict[str, Any] = {
    "Detail": {
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {"type": "string"},
            "reason": {"type": "string", "enum": list(REASONS)},
        },
    },
    "RateLimited": {
        "type": "object",
        "required": ["detail", "reason", "limit"],
        "properties": {
            "detail": {"type": "string"},
            "reason": {"const": RATE_LIMITED},
            "limit": {
                "type": "object",
                "description": "The per-device token bucket that refused the message.",
                "properties": {
                    "name": {"const": "device_messages_per_second"},
                    "rps": {"type": "number"},
                    "burst": {"type": "integer"},
                },
            },
            "retry_after_s": {"type": "number"},
        },
    },
    "Message": {
        "type": "object",
        "required": ["tenant_id", "device_id", "msg_type", "provision_token", "site_id"],
        "properties": {
            "tenant_id": _TENANT,
            "device_id": _ID,
            "msg_type": _MSG_TYPE,
            "provision_token": _ID,
            "site_id": _ID,
            "ts": {"type": ["string", "null"], "format": "date-time"},
            "seq": {"type": ["integer", "null"], "minimum": 0},
            "metrics": {
                "type": ["object", "null"],
                "maxProperties": MAX_METRICS,
                "additionalProperties": {"type": ["number", "boolean"]},
            },
        },
    },
    "SingleMessage": {
        "type": "object",
        "required": ["site_id"],
        "properties": {
            "site_id": _ID,
            "ts": {"type": ["string", "null"], "format": "date-time"},
            "seq": {"type": ["integer", "null"], "minimum": 0},
            "metrics": {"type": ["object", "null"]},
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_BATCH_MESSAGES,
                "items": _ref("Message"),
            }
        },
    },
    "BatchResponse": {
        "type": "object",
        "required": ["accepted", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {
                "type": "array",
                "description": "One per message, in request order.",
                "items": {
                    "type": "object",
                    "required": ["index", "status"],
                    "properties": {
                        "index": {"type": "integer"},
                        "status": {"type": "string", "enum": ["accepted", "rejected"]},
                        "reason": {"type": "string", "enum": list(REASONS)},
                        "detail": {
                            "type": "string",
                            "description": (
                                "INVALID_METRICS for a field type conflict only: names the field"
                            ),
                        },
                        "device_id": {"type": "string"},
                    },
                },
            },
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
    },
    "Stats": {
        "type": "object",
        "properties": {
            "writes_ok": {"type": "integer"},
            "writes_err": {"type": "integer"},
            "flushes": {"type": "integer"},
            "retry_queue_depth": {"type": "integer"},
            "buffer_depth": {"type": "object"},
            "accepted": {"type": "integer"},
            "rejected": {"type": "object", "additionalProperties": {"type": "integer"}},
            "registry_queries": {"type": "integer"},
        },
    },
}

_PATHS: dict[str, Any] = {
    "/ingest/v1/batch": {
        "post": {
            "summary": f"Ingest 1 to {MAX_BATCH_MESSAGES} messages",
            "description": (
                "Each message is validated, authenticated and rate limited on its own. "
                "202 when any message was accepted; 429/503 when none was and every rejection "
                "is retryable (RATE_LIMITED / BUFFER_FULL / UNAVAILABLE); 400 otherwise. "
                "Retry-After is set whenever an item was RATE_LIMITED, BUFFER_FULL or "
                "UNAVAILABLE (registry unreachable, or in NATS mode a tenant whose publish "
                "JetStream did not acknowledge). A 202 means the accepted messages are in the "
                "gateway's bounded in-memory buffer (direct mode) or stored by NATS JetStream "
                "(NATS mode)."
            ),
            "parameters": [_GZIP],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchRequest")}},
            },
            "responses": {
                "202": response_spec(_ref("BatchResponse"), "At least one message accepted", True),
                "400": response_spec(
                    {"oneOf": [_ref("BatchResponse"), DETAIL]},
                    "No message accepted, or the body is unusable ({detail})",
                    True,
                ),
                "413": response_spec(DETAIL, "Body over the size cap"),
                "415": response_spec(DETAIL, "Unsupported Content-Encoding"),
                "429": response_spec(_ref("BatchResponse"), "Every message rate limited", True),
                "503": response_spec(
                    {"oneOf": [_ref("BatchResponse"), DETAIL]},
                    "Buffers full, registry or NATS unavailable, or shutting down",
                    True,
                ),
            },
        }
    },
    "/ingest/v1/tenant/{tenant}/device/{device}/{msg_type}": {
        "post": {
            "summary": "Ingest one message; identity from the URL and X-Provision-Token",
            "parameters": [
                {"name": "tenant", "in": "path", "required": True, "schema": _TENANT},
                {"name": "device", "in": "path", "required": True, "schema": _ID},
                {"name": "msg_type", "in": "path", "required": True, "schema": _MSG_TYPE},
                {"name": "X-Provision-Token", "in": "header", "required": True, "schema": _ID},
                _GZIP,
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("SingleMessage")}},
            },
            "responses": {
                "202": response_spec(_ref("Status"), "Accepted into the buffer"),
                "400": response_spec(
                    DETAIL, "Bad msg_type, JSON or schema; `reason` names the rule"
                ),
                "401": response_spec(
                    DETAIL, "Missing or invalid X-Provision-Token, or unknown device"
                ),
                "403": response_spec(DETAIL, "site_id differs from the device's registered site"),
                "413": response_spec(DETAIL, "Body or message over the size cap"),
                "415": response_spec(DETAIL, "Unsupported Content-Encoding"),
                "429": response_spec(
                    _ref("RateLimited"), "Device rate limit; the body names it", True
                ),
                "503": response_spec(
                    DETAIL,
                    "Buffers full (BUFFER_FULL), registry or NATS unavailable (UNAVAILABLE), "
                    "or shutting down",
                    True,
                ),
            },
        }
    },
    "/health": {
        "get": {
            "summary": "Process alive",
            "responses": {"200": response_spec(_ref("Status"), "Alive")},
        }
    },
    "/ready": {
        "get": {
            "summary": "Ready: the registry answers and the sink is neither failing nor full",
            "responses": {
                "200": response_spec(_ref("Status"), "Ready"),
                "503": response_spec(_ref("Status"), "Not ready; `reason` says why"),
            },
        }
    },
    "/ingest/v1/stats": {
        "get": {
            "summary": "Counters, buffer depth and sink statistics (ops listener only)",
            "responses": {"200": response_spec(_ref("Stats"), "Statistics")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (ops listener only)",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/ui": {
        "get": {
            "summary": "Live page of rates, buffers, sink, registry and NATS (ops listener only)",
            "responses": {
                "200": {
                    "description": "A self-contained HTML page polling /ingest/v1/stats",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": response_spec({"type": "object"}, "OpenAPI 3.1")},
        }
    },
}


_SHELLY_KEY: dict[str, Any] = {
    "name": "X-API-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "INGEST_API_KEY (the INGEST_TENANT tenant) or a tenant's API key.",
}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_SHELLY_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["src", "timestamp", "params"],
    "properties": {
        "src": {"type": "string", "description": f"Device id; trimmed, 1..{MAX_ID_BYTES} bytes"},
        "timestamp": {"type": "integer", "description": "Unix seconds, at most 1 day ahead"},
        "params": {
            "type": "object",
            "description": (
                "`switch:0`..`switch:3` objects with a numeric `apower` (and optional "
                "`voltage`, `current`) each give one reading; other keys are ignored."
            ),
        },
    },
}
_SHELLY_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": [
        "inserted",
        "duplicates",
        "errors",
        "total_messages",
        "devices",
        "processing_time",
        "error_details",
    ],
    "properties": {
        "inserted": {**_COUNT, "description": "New readings stored"},
        "duplicates": {
            **_COUNT,
            "description": "Readings whose key was already stored or repeated in the batch",
        },
        "errors": {**_COUNT, "description": "Invalid messages and readings (error_details)"},
        "total_messages": _COUNT,
        "devices": {**_COUNT, "description": "Distinct src among valid messages"},
        "processing_time": {"type": "number", "description": "Seconds"},
        "error_details": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "reason": {"type": "string", "enum": list(SHELLY_REASONS)},
                },
            },
        },
    },
}
_SHELLY_STATS: dict[str, Any] = {
    "type": "object",
    "required": ["period", "total_logs", "from_queue", "devices", "last_insert"],
    "properties": {
        "period": {"const": "24h"},
        "total_logs": _COUNT,
        "from_queue": _COUNT,
        "devices": _COUNT,
        "last_insert": {"type": ["string", "null"], "format": "date-time"},
    },
}


def _shelly_responses(own: dict[str, Any]) -> dict[str, Any]:
    """A route's own responses plus those of the API key check."""
    return {
        **own,
        "401": response_spec(DETAIL, "Missing or wrong X-API-Key"),
        "500": response_spec(DETAIL, "Neither INGEST_API_KEY nor any tenant API key is configured"),
        "503": response_spec(DETAIL, "Database unavailable, buffers full, or shutting down", True),
    }


_SHELLY_PATHS: dict[str, Any] = {
    "/api/ingest/batch": {
        "post": {
            "summary": f"Store a batch of 1 to {MAX_SHELLY_MESSAGES} Shelly status messages",
            "description": (
                "Readings are stored in power_logs once per key `{src}_{channel}_{minute}`, in "
                "one statement, and the new ones are buffered for InfluxDB (measurement "
                "`power`). An invalid message or reading is counted and listed; the rest go in."
            ),
            "parameters": [_SHELLY_KEY],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["messages"],
                            "properties": {
                                "messages": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": MAX_SHELLY_MESSAGES,
                                    "items": _SHELLY_MESSAGE,
                                }
                            },
                        }
                    }
                },
            },
            "responses": _shelly_responses(
                {
                    "200": response_spec(_SHELLY_RESPONSE, "Stored; counters of what happened"),
                    "413": response_spec(DETAIL, "Body over TIDEGATE_SHELLY_MAX_BODY_BYTES"),
                    "422": response_spec(
                        DETAIL, f"Not JSON, no messages list, empty or over {MAX_SHELLY_MESSAGES}"
                    ),
                }
            ),
        }
    },
    "/api/stats/queue": {
        "get": {
            "summary": "The key's tenant's power logs of the last 24 hours",
            "parameters": [_SHELLY_KEY],
            "responses": _shelly_responses({"200": response_spec(_SHELLY_STATS, "Statistics")}),
        }
    },
}


# -- The tenant API (api.py) ------------------------------------------------------------------

_BEARER = {
    "name": "Authorization",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "pattern": "^Bearer .+$"},
    "description": "`Bearer <tenant api key>` (from `tidegate tenant add`): scopes every read "
    "and write to that tenant; another tenant's ids are answered as 404 items.",
}
_API_401 = response_spec(DETAIL, "Missing or invalid Bearer key (WWW-Authenticate: Bearer)")
_API_503 = response_spec(DETAIL, "The registry database cannot be reached", True)
_TIME = {"type": "string", "format": "date-time"}
_ITEM_RESULT = {
    "type": "object",
    "required": ["id", "status", "status_code"],
    "properties": {
        "id": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["success", "error"]},
        "status_code": {"type": "integer"},
        "data": {"type": "object"},
        "error": {"type": "string"},
    },
}
_TOTALS = {
    "total_requested": _COUNT,
    "total_succeeded": _COUNT,
    "total_failed": _COUNT,
    "processed_at": _TIME,
}
_LIMITS = {
    "type": "object",
    "properties": {"rps": {"type": "number"}, "burst": {"type": "integer"}},
}
_NULLABLE_NUMBER = {"type": ["number", "null"], "description": "null: the default applies"}
_NULLABLE_INT = {"type": ["integer", "null"], "description": "null: the default applies"}
_DEVICE_FIELDS = {
    "device_id": _ID,
    "site_id": _ID,
    "status": {"type": "string", "enum": ["active", "revoked"]},
    "rps": _NULLABLE_NUMBER,
    "burst": _NULLABLE_INT,
    "created_at": _TIME,
    "updated_at": _TIME,
    "last_seen_at": {**_TIME, "type": ["string", "null"]},
}
_LATEST_FIELDS = {
    "device_id": _ID,
    "msg_type": _MSG_TYPE,
    "ts": {**_TIME, "description": "the point's time, nanoseconds; receive time without ts"},
    "seq": {"type": "integer", "minimum": 0},
    "metrics": {"type": "object", "description": "as stored: numbers as floats, booleans"},
    "received_at": _TIME,
}
_OPERATION = {
    "type": "object",
    "required": ["op", "device_id"],
    "properties": {
        "op": {"type": "string", "enum": ["create", "update", "revoke", "rotate_token"]},
        "device_id": _ID,
        "site_id": {**_ID, "description": "create (required), update"},
        "rps": {**_NULLABLE_NUMBER, "description": "create, update; null: the default"},
        "burst": {**_NULLABLE_INT, "description": "create, update; null: the default"},
        "provision_token": {
            "type": "string",
            "description": "create, rotate_token; default: a random 256-bit token",
        },
    },
}


def _api_post(summary: str, description: str, body: dict[str, Any], ok: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "parameters": [_BEARER, _GZIP],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": response_spec(
                    {
                        "type": "object",
                        "properties": {
                            "resource_type": {"type": "string"},
                            "results": {"type": "array", "items": _ITEM_RESULT},
                            **_TOTALS,
                        },
                    },
                    ok,
                ),
                "400": response_spec(
                    DETAIL,
                    "Not JSON, not an object, unknown resource_type "
                    "or field names (listed in unknown_fields)",
                ),
                "401": _API_401,
                "413": response_spec(DETAIL, "Body over TIDEGATE_MAX_BODY_BYTES"),
                "422": response_spec(DETAIL, "ids/operations empty, over 100, or not a list"),
                "503": _API_503,
            },
        }
    }


_API_PATHS: dict[str, Any] = {
    "/api/v1/batch/get": _api_post(
        "Read up to 100 devices or their last messages in one request",
        "One result per id in request order (duplicates answered at each position): 200 with "
        "`data` (only the `fields` asked for), 404 for an unknown id or another tenant's, 422 "
        "for an invalid id. One registry query per request. telemetry_latest is 404 for a "
        "device that has sent no accepted message yet.",
        {
            "type": "object",
            "required": ["resource_type", "ids"],
            "properties": {
                "resource_type": {"type": "string", "enum": ["devices", "telemetry_latest"]},
                "ids": {"type": "array", "minItems": 1, "maxItems": 100, "items": _ID},
                "fields": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "string",
                        "enum": sorted({*_DEVICE_FIELDS, *_LATEST_FIELDS}),
                    },
                    "description": f"devices: {', '.join(_DEVICE_FIELDS)}; telemetry_latest: "
                    f"{', '.join(_LATEST_FIELDS)}. Default: all of the type's fields.",
                },
            },
        },
        "Per id a result; totals; processed_at",
    ),
    "/api/v1/batch/devices": _api_post(
        "Create, update, revoke or rotate the token of up to 100 devices",
        "Per operation a result with `index`, `op` and status_code 201 (created: `data` holds "
        "the provision_token, shown once), 200, 404 (no such device in the tenant), 409 "
        "(already active; rotate of a revoked device) or 422 (invalid). The valid operations "
        "run in order in one transaction; invalid ones do not block them. revoke and "
        "rotate_token take effect on this node at once, on others within "
        "TIDEGATE_AUTH_CACHE_TTL_S.",
        {
            "type": "object",
            "required": ["operations"],
            "properties": {
                "operations": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 100,
                    "items": _OPERATION,
                }
            },
        },
        "Per operation a result; totals; processed_at",
    ),
    "/ingest/v1/metrics/rate-limits": {
        "get": {
            "summary": "Rate-limit refusals of this process, per tenant",
            "description": "Public listener: a Bearer tenant key is required and scopes it "
            "to that tenant. Ops listener: without Authorization every tenant with refusals, "
            "with a key that tenant only. limited_devices: devices refused within the last "
            "limited_window_s seconds. In NATS mode each worker serves its own.",
            "parameters": [
                {**_BEARER, "required": False, "description": "required on the public listener"},
                {
                    "name": "top",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                },
            ],
            "responses": {
                "200": response_spec(
                    {
                        "type": "object",
                        "properties": {
                            "default_limits": _LIMITS,
                            "window_s": {"const": 60},
                            "limited_window_s": {"const": 10},
                            "tenants": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "object",
                                    "properties": {
                                        "limited_devices": _COUNT,
                                        "refused_last_minute": _COUNT,
                                        "refused_total": _COUNT,
                                        "top_devices": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "device_id": _ID,
                                                    "refused_last_minute": _COUNT,
                                                    "refused_total": _COUNT,
                                                    "last_refused_at": _TIME,
                                                    "limit": _LIMITS,
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "Refusal counts",
                ),
                "400": response_spec(DETAIL, "top is not an integer 1..100"),
                "401": _API_401,
            },
        }
    },
}


def spec() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidegate", "version": __version__},
        "paths": {**_PATHS, **_SHELLY_PATHS, **_API_PATHS},
        "components": {
            "schemas": _SCHEMAS,
            "headers": {
                "RetryAfter": {
                    "description": "Seconds until a retry can succeed",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
    }
