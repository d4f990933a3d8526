"""The registry's change feed: every process hears that a device, a tenant key or a field's type
changed, so its caches drop the stale entry (or learn the new type) within a second instead of
at the end of the cache TTL (or at the next start).

The database itself records each change, with triggers on `devices`, `tenants` and
`field_types`, so every writer counts (the tenant API of any gateway, the CLI, a claim or a type
InfluxDB reported, an operator's SQL):
- PostgreSQL: the triggers `pg_notify` the channel below; each process LISTENs on a connection
  of its own (a lost connection is reconnected, and since notifications sent meanwhile are
  lost, the caches are then emptied).
- SQLite (one host): the triggers append to the `registry_changes` table (its last
  `KEEP_CHANGES` rows); each process polls it every `POLL_S` for rows past the last it saw
  (a gap means it fell behind the pruning: the caches are emptied).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from tidegate import logs

CHANNEL = "tidegate_registry"
POLL_S = 0.5
KEEP_CHANGES = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """One change heard: a device's row (`tenant` and `device`), a tenant's key (`tenant`
    alone), a field's type (`tenant` and `field_type` = `(measurement, field, type)`); or,
    nothing set (`MISSED`), changes that may have been missed: forget everything."""

    tenant: str | None = None
    device: str | None = None
    field_type: tuple[str, str, str] | None = None


MISSED = Change()

Changed = Callable[[Change], None]
"""What a process does with each change heard."""

PG_SCHEMA = f"""
CREATE OR REPLACE FUNCTION tidegate_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'devices' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_array(r.tenant_id, r.device_id)::text);
    ELSIF TG_TABLE_NAME = 'field_types' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_array(
            r.tenant_id, NULL, r.measurement, r.field, r.field_type)::text);
    ELSE
        PERFORM pg_notify('{CHANNEL}', json_build_array(r.tenant_id)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION tidegate_registry_changed();
CREATE OR REPLACE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tidegate_registry_changed();
CREATE OR REPLACE TRIGGER field_types_changed AFTER INSERT OR UPDATE ON field_types
    FOR EACH ROW EXECUTE FUNCTION tidegate_registry_changed();
"""


def _sqlite_trigger(table: str, event: str) -> str:
    row = "OLD" if event == "DELETE" else "NEW"
    device = f"{row}.device_id" if table == "devices" else "NULL"
    field = (
        f"json_array({row}.measurement, {row}.field, {row}.field_type)"
        if table == "field_types"
        else "NULL"
    )
    return f"""
CREATE TRIGGER IF NOT EXISTS {table}_changed_{event.lower()} AFTER {event} ON {table} BEGIN
    INSERT INTO registry_changes (tenant_id, device_id, field_type)
        VALUES ({row}.tenant_id, {device}, {field});
    DELETE FROM registry_changes WHERE seq <= last_insert_rowid() - {KEEP_CHANGES};
END;"""


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS registry_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    device_id TEXT,
    field_type TEXT
) STRICT;""" + "".join(
    _sqlite_trigger(table, event)
    for table, events in (
        ("devices", ("INSERT", "UPDATE", "DELETE")),
        ("tenants", ("INSERT", "UPDATE", "DELETE")),
        ("field_types", ("INSERT", "UPDATE")),
    )
    for event in events
)
"""`field_type`: `[measurement, field, type]` as JSON, for a field_types row."""
SQLITE_FIELD_TYPE_COLUMN = "ALTER TABLE registry_changes ADD COLUMN field_type TEXT;"
"""What a registry_changes table from before field types were in the feed lacks (its triggers
name their columns, so they keep working)."""


def encoded(change: Change) -> bytes:
    """A change as the feed carries it: a JSON array, as the PostgreSQL triggers send it."""
    ids: list[str | None] = [change.tenant]
    if change.device is not None:
        ids.append(change.device)
    elif change.field_type is not None:
        ids += [None, *change.field_type]
    return json.dumps(ids).encode()


def decoded(payload: str | bytes) -> Change:
    """The change a feed payload names; ValueError when it names none."""
    try:
        ids = json.loads(payload)
    except ValueError:
        ids = None
    if isinstance(ids, list) and all(i is None or isinstance(i, str) for i in ids):
        if len(ids) == 1 and ids[0] is not None:
            return Change(ids[0])
        if len(ids) == 2 and None not in ids:
            return Change(ids[0], ids[1])
        if len(ids) == 5 and ids[1] is None and None not in (ids[0], *ids[2:]):
            return Change(ids[0], field_type=(ids[2], ids[3], ids[4]))
    raise ValueError(f"not a registry change: {payload[:200]!r}")


def notified(changed: Changed, payload: str | bytes) -> None:
    """Pass one payload on; one that cannot be read empties the caches."""
    try:
        change = decoded(payload)
    except ValueError:
        logs.log("registry_change_unreadable", level="warning", payload=repr(payload[:200]))
        changed(MISSED)
        return
    changed(change)
