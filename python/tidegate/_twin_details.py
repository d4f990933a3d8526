"""The twin's quoting of client text in details, and the details of refusals that are not a
message rule's (admission's, a full buffer's): shared by `_twin` and `_twin_admission`."""

from __future__ import annotations

import re
from typing import Final

QUOTED_CHARS: Final = 64
# Control, line separator and bidirectional formatting characters.
_ESCAPED: Final = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")

UNKNOWN_OR_WRONG_TOKEN: Final = "unknown device or wrong provision token"
NOT_REGISTERED: Final = "the device is not registered for this tenant"
REVOKED: Final = "the device is revoked"
REGISTRY_SILENT: Final = "the device registry did not answer; retry later"
BUFFER_FULL_DETAIL: Final = "the tenant's ingest buffer is full; retry later"


def quoted(s: str) -> str:
    """`s` in single quotes, cut to QUOTED_CHARS characters (then `…`), control and
    bidirectional formatting characters written as `\\uXXXX`."""
    body = _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", s[:QUOTED_CHARS])
    return f"'{body}…'" if len(s) > QUOTED_CHARS else f"'{body}'"


def short_number(x: float) -> str:
    """A rate or burst: at most three decimals, trailing zeros dropped."""
    return f"{x:.3f}".rstrip("0").rstrip(".")


def site_mismatch(site: str) -> str:
    """SITE_MISMATCH's detail: the site sent, not the registered one."""
    return f"site_id {quoted(site)} is not the device's registered site"


def rate_limited(rate: float, cap: float) -> str:
    """RATE_LIMITED's detail: the rate and burst enforced."""
    return (
        f"rate limit exceeded: the device may send {short_number(rate)} messages/s"
        f" with bursts of {short_number(cap)}"
    )


def lookups_spent(lookups_per_s: int) -> str:
    """UNAUTHORIZED's detail for a device its tenant's lookup budget could not look up."""
    return (
        f"the device could not be looked up: this tenant's registry lookups"
        f" ({lookups_per_s} per second) are used up"
    )
