"""The OpenAPI 3.1 description of every route (ingest.py, shelly.py, ops.py, api.py,
influx.py). The schemas are written here; the limits, patterns and reason codes in them come
from the compiled core, and every refusal's status, description, Retry-After and example from
the answer table (tidegate/answers.py)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from tidegate import __version__
from tidegate._core import (
    BUFFER_FULL,
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
from tidegate.answers import (
    ANSWERS,
    API_UNAUTHORIZED,
    BODY_INVALID,
    BODY_TOO_LARGE,
    CONTENT_LENGTH_INVALID,
    DATABASE_UNAVAILABLE,
    DRAINING,
    ENCODING_UNSUPPORTED,
    GZIP_INVALID,
    GZIP_TOO_LARGE,
    INTERNAL_ERROR,
    LIMITS,
    NATS_UNAVAILABLE,
    RETRYABLE,
    SHELLY_BODY_INVALID,
    SHELLY_NOT_CONFIGURED,
    SHELLY_UNAUTHORIZED,
    TOKEN_HEADER_CREDENTIAL,
    WAL_FULL,
    WAL_UNAVAILABLE,
    Retry,
    batch_answer,
    rate_limited_content,
)
from tidegate.config import Config
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

# -- Refusals, from the answer table ----------------------------------------------------------

# Every route, on both listeners: the connection limits and a bug.
_ANY = (*LIMITS, INTERNAL_ERROR)
# Routes that read a body.
_BODY = (CONTENT_LENGTH_INVALID, BODY_TOO_LARGE, GZIP_TOO_LARGE, GZIP_INVALID, ENCODING_UNSUPPORTED)
# Routes that take telemetry in: refused while draining or when the write-ahead log refuses.
_INGEST = (DRAINING, WAL_FULL, WAL_UNAVAILABLE)
_RETRYABLE = [code for code in REASONS if code in RETRYABLE]

_DEFAULTS = Config()
# Examples fill a detail's settings with their defaults, its request values with these.
_SAMPLES: dict[str, object] = {
    "device": "d1",
    "credential": TOKEN_HEADER_CREDENTIAL,
    "cap": _DEFAULTS.max_body_bytes,
}
# Samples of the error texts some details pass through (the core's BodyError, the log's).
_ERRORS = {
    BODY_INVALID: 'body must be a JSON object with a "messages" list',
    SHELLY_BODY_INVALID: "batch is empty",
    WAL_FULL: f"write-ahead log is at its cap of {_DEFAULTS.wal_max_bytes} bytes",
    WAL_UNAVAILABLE: "write-ahead log write failed: No space left on device (os error 28)",
}


def _example(key: str, samples: Mapping[str, object]) -> dict[str, object]:
    """The body of answer `key`, filled with samples and default settings."""
    if key == RATE_LIMITED:
        return rate_limited_content("d1", _DEFAULTS.default_rps, _DEFAULTS.default_burst, 0.1)
    spec = ANSWERS[key]
    values = {**_SAMPLES, "error": _ERRORS.get(key), **samples}
    fields = {f: values[f] if f in values else getattr(_DEFAULTS, f) for f in spec.fields}
    return spec.content(**fields)


def _line(name: str, detail: object, retry: Retry, what: str = "") -> str:
    after = "" if retry is Retry.NONE else f" ({retry.value})"
    return f"- `{name}`{what}: {detail}{after}"


def refusals(
    own: Mapping[str, Any],
    keys: Sequence[str],
    items: Sequence[str] = (),
    **samples: object,
) -> dict[str, Any]:
    """A route's responses: `own` (its successes and its own checks) with the answer table's
    `keys` (whole-request answers) and, for the batch route, the per-message reason codes
    `items` (a BatchResponse answered with the code's batch status when no message was
    accepted). Per status: a description naming each answer and its Retry-After rule, the
    Retry-After header when one of them retries, an example of each. `samples` fill the
    details' request values (a route's own body cap)."""
    out = copy.deepcopy(dict(own))
    for key in keys:
        spec = ANSWERS[key]
        body = _example(key, samples)
        schema = _ref("RateLimited") if key == RATE_LIMITED else DETAIL
        line = _line(key, body["detail"], spec.retry)
        _add(out, spec.status, key, schema, body, line, spec.retry is not Retry.NONE)
        for name, value in spec.headers.items():
            out[str(spec.status)].setdefault("headers", {})[name] = {
                "schema": {"type": "string", "const": value}
            }
    # A batch that mixes reasons carries the Retry-After of its retryable ones, whatever its
    # status.
    mixed = any(ANSWERS[code].retry is not Retry.NONE for code in items)
    for code in items:
        spec = ANSWERS[code]
        body = {
            "accepted": 0,
            "rejected": 1,
            "results": [{"index": 0, "status": "rejected", "reason": code, "device_id": "d1"}],
        }
        line = _line(code, _example(code, samples)["detail"], spec.retry, " (per message)")
        _add(out, _batch_status(code), code, _ref("BatchResponse"), body, line, mixed)
    return dict(sorted(out.items()))


_RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}


def _batch_status(code: str) -> int:
    """The status of a batch whose every message was rejected with `code`."""
    return batch_answer(0, [(code, 1)], 1.0, 1.0)[0]


def _add(
    out: dict[str, Any],
    status: int,
    name: str,
    schema: Any,
    body: object,
    line: str,
    retries: bool,
) -> None:
    """Merge one answer into the response of `status`."""
    response = out.setdefault(str(status), {"description": "", "content": {}})
    media = response["content"].setdefault("application/json", {"schema": schema})
    if media["schema"] != schema:
        alternatives = media["schema"].get("oneOf", [media["schema"]])
        if schema not in alternatives:
            media["schema"] = {"oneOf": [*alternatives, schema]}
    media.setdefault("examples", {})[name] = {"value": body}
    response["description"] = "\n".join(filter(None, (response["description"], line)))
    if retries:
        response.setdefault("headers", {}).update(_RETRY_AFTER)


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
                "202 when any message was accepted; when none was and every rejection is "
                f"retryable as is ({' / '.join(_RETRYABLE)}), the most severe of their "
                "statuses (503 over 429); 400 otherwise. Retry-After is set whenever a message "
                f"was rejected with one of {' / '.join(_RETRYABLE)}: the longest of their waits. "
                "UNAVAILABLE: the registry could not be reached, or in NATS mode JetStream did "
                "not acknowledge the tenant's publish. A 202 means the accepted messages are in "
                "the gateway's bounded in-memory buffer (direct mode) or stored by NATS JetStream "
                "(NATS mode)."
            ),
            "parameters": [_GZIP],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("BatchRequest")}},
            },
            "responses": refusals(
                {
                    "202": response_spec(
                        _ref("BatchResponse"), "At least one message accepted", True
                    )
                },
                (*_ANY, *_BODY, BODY_INVALID, *_INGEST),
                REASONS,
            ),
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
            "responses": refusals(
                {"202": response_spec(_ref("Status"), "Accepted into the buffer")},
                (*_ANY, *_BODY, BODY_INVALID, *_INGEST, *REASONS, NATS_UNAVAILABLE),
            ),
        }
    },
    "/health": {
        "get": {
            "summary": "Process alive",
            "responses": refusals({"200": response_spec(_ref("Status"), "Alive")}, _ANY),
        }
    },
    "/ready": {
        "get": {
            "summary": "Ready: the registry answers and the sink is neither failing nor full",
            "responses": refusals(
                {
                    "200": response_spec(_ref("Status"), "Ready"),
                    "503": response_spec(_ref("Status"), "Not ready; `reason` says why"),
                },
                _ANY,
            ),
        }
    },
    "/ingest/v1/stats": {
        "get": {
            "summary": "Counters, buffer depth and sink statistics (ops listener only)",
            "responses": refusals({"200": response_spec(_ref("Stats"), "Statistics")}, _ANY),
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (ops listener only)",
            "responses": refusals(
                {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                _ANY,
            ),
        }
    },
    "/ui": {
        "get": {
            "summary": "Live page of rates, buffers, sink, registry and NATS (ops listener only)",
            "responses": refusals(
                {
                    "200": {
                        "description": "A self-contained HTML page polling /ingest/v1/stats",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                _ANY,
            ),
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": refusals({"200": response_spec({"type": "object"}, "OpenAPI 3.1")}, _ANY),
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


def _shelly_responses(own: dict[str, Any], keys: Sequence[str] = ()) -> dict[str, Any]:
    """A route's own responses and answers plus those of the API key check."""
    return refusals(
        own,
        (*_ANY, SHELLY_UNAUTHORIZED, SHELLY_NOT_CONFIGURED, DATABASE_UNAVAILABLE, *keys),
        cap=_DEFAULTS.shelly_max_body_bytes,
    )


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
                {"200": response_spec(_SHELLY_RESPONSE, "Stored; counters of what happened")},
                (*_BODY, SHELLY_BODY_INVALID, *_INGEST, BUFFER_FULL),
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
            "responses": refusals(
                {
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
                        DETAIL, "Unknown resource_type or field names (listed in unknown_fields)"
                    ),
                    "422": response_spec(DETAIL, "ids/operations empty, over 100, or not a list"),
                },
                (*_ANY, *_BODY, BODY_INVALID, API_UNAUTHORIZED, DATABASE_UNAVAILABLE),
                error="body must be a JSON object",
            ),
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
            "responses": refusals(
                {
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
                },
                (*_ANY, API_UNAUTHORIZED),
            ),
        }
    },
}


_INFLUX_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}
_INFLUX_DESCRIPTION = (
    "InfluxDB line protocol (docs/line-protocol.md). Credentials: a device's "
    "`{device_id}:{provision token}`, or a tenant API key whose lines each carry a `device_id` "
    "tag naming an active device of the tenant. 204 when every line was accepted; 400 "
    '`{"code":"invalid","message":"partial write: line N: REASON (detail); …"}` naming each '
    "refused line (the accepted ones are kept); 429 when the rate limit (counted in lines) "
    "refused every line; 503 for BUFFER_FULL / UNAVAILABLE. Retry-After whenever a line was "
    "RATE_LIMITED, BUFFER_FULL or UNAVAILABLE."
)


def _influx_write(summary: str, db_param: str, auth: str, precisions: str) -> dict[str, Any]:
    """One of InfluxDB's write routes."""
    query = {"in": "query", "schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "description": f"{_INFLUX_DESCRIPTION} Authentication: {auth}.",
            "parameters": [
                {"name": db_param, "required": True, **query, "schema": _TENANT},
                {"name": "precision", "required": False, **query, "description": precisions},
                _GZIP,
            ],
            "requestBody": {"required": True, "content": {"text/plain": {"schema": {}}}},
            # The route's own answers in InfluxDB's shape; draining and the connection
            # limits are answered before it, in the table's `{"detail"}` shape.
            "responses": refusals(
                {
                    "204": {"description": "Every line accepted"},
                    "400": response_spec(_INFLUX_ERROR, "Partial write or unusable body", True),
                    "401": response_spec(_INFLUX_ERROR, "Missing or wrong credential"),
                    "403": response_spec(_INFLUX_ERROR, "A tenant key for another tenant"),
                    "413": response_spec(_INFLUX_ERROR, "Body over the size cap"),
                    "415": response_spec(_INFLUX_ERROR, "Unsupported Content-Encoding"),
                    "429": response_spec(_INFLUX_ERROR, "Rate limited", True),
                    "503": response_spec(
                        _INFLUX_ERROR, "Buffers full, registry, NATS or the log unavailable", True
                    ),
                },
                (*_ANY, DRAINING),
            ),
        }
    }


_INFLUX_PATHS: dict[str, Any] = {
    "/write": _influx_write(
        "InfluxDB 1.x write",
        "db",
        "`u`/`p` query parameters or HTTP Basic (user = device_id, password = token), or "
        "`Authorization: Token …`",
        "ns, us, µs, u, ms, s, m, h",
    ),
    "/api/v2/write": _influx_write(
        "InfluxDB 2.x write (`org` is ignored)",
        "bucket",
        "`Authorization: Token …`",
        "ns, us, µs, u, ms, s",
    ),
    "/api/v3/write_lp": _influx_write(
        "InfluxDB 3.x write",
        "db",
        "`Authorization: Bearer …` or `Token …`",
        "ns, us, µs, u, ms, s",
    ),
    "/ping": {
        "get": {
            "summary": "InfluxDB's liveness check",
            "responses": refusals(
                {
                    "204": {
                        "description": "The process answers",
                        "headers": {"X-Influxdb-Version": {"schema": {"type": "string"}}},
                    }
                },
                _ANY,
            ),
        }
    },
}


def spec() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidegate", "version": __version__},
        "paths": {**_PATHS, **_SHELLY_PATHS, **_API_PATHS, **_INFLUX_PATHS},
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
