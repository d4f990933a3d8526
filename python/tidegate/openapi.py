"""The OpenAPI 3.1 description of the gateway's routes, written by hand to match app.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidegate import __version__
from tidegate._twin import REASONS  # the compiled core's codes too, in the same order


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def response_spec(
    schema: Mapping[str, Any], description: str, retry_after: bool = False
) -> dict[str, Any]:
    """An OpenAPI JSON response object (shelly.py describes its routes with it too)."""
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": dict(schema)}},
    }
    if retry_after:
        out["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return out


DETAIL = _ref("Detail")
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
            "reason": {"const": "RATE_LIMITED"},
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
            "tenant_id": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
            "device_id": {"type": "string", "maxLength": 128},
            "msg_type": {"type": "string", "enum": ["telemetry", "heartbeat"]},
            "provision_token": {"type": "string"},
            "site_id": {"type": "string", "maxLength": 128},
            "ts": {"type": ["string", "null"], "format": "date-time"},
            "seq": {"type": ["integer", "null"], "minimum": 0},
            "metrics": {
                "type": ["object", "null"],
                "maxProperties": 256,
                "additionalProperties": {"type": ["number", "boolean"]},
            },
        },
    },
    "SingleMessage": {
        "type": "object",
        "required": ["site_id"],
        "properties": {
            "site_id": {"type": "string"},
            "ts": {"type": ["string", "null"], "format": "date-time"},
            "seq": {"type": ["integer", "null"], "minimum": 0},
            "metrics": {"type": ["object", "null"]},
        },
    },
    "BatchRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "minItems": 1, "maxItems": 100, "items": _ref("Message")}
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
            "summary": "Ingest 1 to 100 messages",
            "description": (
                "Each message is validated, authenticated and rate limited on its own. "
                "202 when any message was accepted; 429/503 when none was and every rejection "
                "is retryable (RATE_LIMITED / BUFFER_FULL); 400 otherwise. Retry-After is set "
                "whenever an item was RATE_LIMITED or BUFFER_FULL. A 202 means the accepted "
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
                    "Buffers full, or shutting down",
                    True,
                ),
            },
        }
    },
    "/ingest/v1/tenant/{tenant}/device/{device}/{msg_type}": {
        "post": {
            "summary": "Ingest one message; identity from the URL and X-Provision-Token",
            "parameters": [
                {"name": "tenant", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "device", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "msg_type",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["telemetry", "heartbeat"]},
                },
                {
                    "name": "X-Provision-Token",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
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
                "503": response_spec(DETAIL, "Buffers full, or shutting down", True),
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
            "summary": "Counters, buffer depth and sink statistics",
            "responses": {"200": response_spec(_ref("Stats"), "Statistics")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
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


def spec(extra_paths: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI document, with any mounted add-on routes (Shelly) merged in."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidegate", "version": __version__},
        "paths": {**_PATHS, **(extra_paths or {})},
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
