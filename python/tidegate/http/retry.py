"""Retry-After: the header's form, and the pause a database outage asks for."""

from __future__ import annotations

import math

# Retry-After while the database cannot be reached: a second, as a pool reconnects within it.
DB_RETRY_AFTER = "1"


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client never comes back too early."""
    return str(max(1, math.ceil(seconds)))
