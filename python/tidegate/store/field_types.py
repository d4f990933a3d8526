"""`field_types`: one row per tenant, measurement and field, the type every process writes it
with. A new field is claimed first-wins (`INSERT … ON CONFLICT DO NOTHING`, then read back: the
winner's type, whichever process claimed first); a type InfluxDB reports (a conflict error)
overrides the row, since InfluxDB is what refuses the line."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.store.statements import Statements

FieldRow = tuple[str, str, str, str]
"""`(tenant_id, measurement, field, field_type)`."""

PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS field_types (
    tenant_id text NOT NULL,
    measurement text NOT NULL,
    field text NOT NULL,
    field_type text NOT NULL,
    PRIMARY KEY (tenant_id, measurement, field)
);
"""
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS field_types (
    tenant_id TEXT NOT NULL,
    measurement TEXT NOT NULL,
    field TEXT NOT NULL,
    field_type TEXT NOT NULL,
    PRIMARY KEY (tenant_id, measurement, field)
) STRICT, WITHOUT ROWID;
"""
_INSERT = (
    "INSERT INTO field_types (tenant_id, measurement, field, field_type) VALUES ($1, $2, $3, $4) "
)
_CLAIM = _INSERT + "ON CONFLICT DO NOTHING"
_SET = (
    _INSERT + "ON CONFLICT (tenant_id, measurement, field) DO UPDATE SET field_type = "
    "excluded.field_type"
)
_TYPE = (
    "SELECT field_type FROM field_types WHERE tenant_id = $1 AND measurement = $2 AND field = $3"
)
_ALL = "SELECT tenant_id, measurement, field, field_type FROM field_types"


async def claim(tx: Statements, rows: Sequence[FieldRow]) -> list[FieldRow]:
    """Claim each field for its type unless another process has; the types that won, in order.
    Run in one transaction (new fields are rare: one statement pair per field)."""
    won = []
    for tenant, measurement, field, field_type in rows:
        await tx.value(_CLAIM, tenant, measurement, field, field_type)
        stored = await tx.value(_TYPE, tenant, measurement, field)
        won.append((tenant, measurement, field, str(stored)))
    return won


async def set_type(tx: Statements, row: FieldRow) -> None:
    """Record the type InfluxDB reports for a field, over any claim."""
    await tx.value(_SET, *row)


async def every(tx: Statements) -> list[FieldRow]:
    """Every field's type (loaded at start)."""
    return [(str(t), str(m), str(f), str(ty)) for t, m, f, ty in await tx.rows(_ALL)]
