"""The core's tenant and id rules (`valid_tenant`, `valid_id`) as the shell checks them and
words them in errors: the registry, the configuration and the CLI all use these."""

from __future__ import annotations

from tidegate._core import MAX_ID_BYTES, TENANT_PATTERN, valid_id, valid_tenant

TENANT_RULE = "must match " + TENANT_PATTERN.removeprefix("^").removesuffix("$")
ID_RULE = f"1..{MAX_ID_BYTES} bytes, no control character, no backslash"
# The single route takes the device id from the URL path and the token from a header: a `/`
# cannot be addressed there, and HTTP strips a header value's surrounding spaces.
DEVICE_RULE = ID_RULE + ", no '/'"
TOKEN_RULE = ID_RULE + ", no leading or trailing space"


def check_tenant(value: str) -> str:
    """`value` if it is a valid tenant id, else ValueError naming the rule."""
    if not valid_tenant(value):
        raise ValueError(f"invalid tenant id {value!r}: {TENANT_RULE}")
    return value


def check_id(kind: str, value: str) -> str:
    """`value` if it is a valid device or site id, else ValueError naming `kind` and the rule."""
    if not valid_id(value):
        raise ValueError(f"invalid {kind} {value!r}: {ID_RULE}")
    return value


def check_device(value: str) -> str:
    """`value` if it is a device id both ingest routes can address, else ValueError."""
    if not valid_id(value) or "/" in value:
        raise ValueError(f"invalid device id {value!r}: {DEVICE_RULE}")
    return value


def check_token(value: str) -> str:
    """`value` if both ingest routes can present it as a provision token, else ValueError
    (the token itself is not echoed)."""
    if not valid_id(value) or value != value.strip(" "):
        raise ValueError(f"invalid token: {TOKEN_RULE}")
    return value
