"""The OpenAPI 3.1 description of every route (ingest.py, shelly.py, ops.py), written by hand;
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
                "UNAVAILABLE (registry unreachable). A 202 means the accepted "
                "messages are in the gateway's bounded in-memory buffer."
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
                    "Buffers full, registry unavailable, or shutting down",
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
                    DETAIL, "Buffers full, registry unavailable, or shutting down", True
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


def spec() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidegate", "version": __version__},
        "paths": {**_PATHS, **_SHELLY_PATHS},
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
