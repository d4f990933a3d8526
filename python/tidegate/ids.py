"""The core's tenant and id rules (`valid_tenant`, `valid_id`) as the shell checks them and
words them in errors: the registry, the configuration and the CLI all use these."""

from __future__ import annotations

from tidegate._core import MAX_ID_BYTES, TENANT_PATTERN, valid_id, valid_tenant

TENANT_RULE = "must match " + TENANT_PATTERN.removeprefix("^").removesuffix("$")
ID_RULE = f"1..{MAX_ID_BYTES} bytes, no control character, no backslash"


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
