"""Load the core: the compiled `tidegate._core` or its pure-Python twin `tidegate._twin`."""

import importlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from tidegate import _core


class Core:
    """The static type of a loaded core: the API of `_core.pyi`, which the twin implements too
    (tests/core/test_core_exports.py checks its names and signatures). Never instantiated; it exists
    so that mypy checks every call into the core against the stub."""

    if TYPE_CHECKING:
        BUFFER_FULL = _core.BUFFER_FULL
        DEFAULT_MAX_FIELDS_PER_TENANT = _core.DEFAULT_MAX_FIELDS_PER_TENANT
        DEFAULT_MAX_PAYLOAD_BYTES = _core.DEFAULT_MAX_PAYLOAD_BYTES
        FieldTypes = _core.FieldTypes
        INVALID_METRICS = _core.INVALID_METRICS
        INVALID_MSG_TYPE = _core.INVALID_MSG_TYPE
        INVALID_SCHEMA = _core.INVALID_SCHEMA
        INVALID_TIMESTAMP = _core.INVALID_TIMESTAMP
        MAX_BATCH_MESSAGES = _core.MAX_BATCH_MESSAGES
        MAX_ID_BYTES = _core.MAX_ID_BYTES
        MAX_METRICS = _core.MAX_METRICS
        MAX_SHELLY_MESSAGES = _core.MAX_SHELLY_MESSAGES
        MAX_TENANT_CHARS = _core.MAX_TENANT_CHARS
        MSG_TYPES = _core.MSG_TYPES
        PAYLOAD_TOO_LARGE = _core.PAYLOAD_TOO_LARGE
        PanicException = _core.PanicException
        RATE_LIMITED = _core.RATE_LIMITED
        REASONS = _core.REASONS
        SHELLY_REASONS = _core.SHELLY_REASONS
        SITE_MISMATCH = _core.SITE_MISMATCH
        TENANT_PATTERN = _core.TENANT_PATTERN
        UNAUTHORIZED = _core.UNAUTHORIZED
        UNAVAILABLE = _core.UNAVAILABLE
        Admission = _core.Admission
        Batch = _core.Batch
        BodyError = _core.BodyError
        Latest = _core.Latest
        ShellyBatch = _core.ShellyBatch
        TenantBuffers = _core.TenantBuffers
        line_devices = staticmethod(_core.line_devices)
        parse_batch = staticmethod(_core.parse_batch)
        parse_lines = staticmethod(_core.parse_lines)
        parse_shelly = staticmethod(_core.parse_shelly)
        parse_single = staticmethod(_core.parse_single)
        reason_detail = staticmethod(_core.reason_detail)
        valid_id = staticmethod(_core.valid_id)
        valid_tenant = staticmethod(_core.valid_tenant)


def load(name: str) -> Core:
    """`rust` → tidegate._core, anything else → tidegate._twin."""
    module = importlib.import_module("tidegate._core" if name == "rust" else "tidegate._twin")
    return cast(Core, module)
