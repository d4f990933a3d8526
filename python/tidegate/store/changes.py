"""The registry's change feed: every process hears that a device or a tenant key changed, so
its caches drop the stale entry within a second instead of at the end of the cache TTL.

The database itself records each change, with triggers on `devices` and `tenants`, so every
writer counts (the tenant API of any gateway, the CLI, an operator's SQL):
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

from tidegate import logs

CHANNEL = "tidegate_registry"
POLL_S = 0.5
KEEP_CHANGES = 10_000

Changed = Callable[[str | None, str | None], None]
"""Called with `(tenant, device)` when a device's row changed, `(tenant, None)` when a tenant's
key changed, `(None, None)` when changes may have been missed (forget everything)."""

PG_SCHEMA = f"""
CREATE OR REPLACE FUNCTION tidegate_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'devices' THEN
        PERFORM pg_notify('{CHANNEL}', json_build_array(r.tenant_id, r.device_id)::text);
    ELSE
        PERFORM pg_notify('{CHANNEL}', json_build_array(r.tenant_id)::text);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION tidegate_registry_changed();
CREATE OR REPLACE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION tidegate_registry_changed();
"""


def _sqlite_trigger(table: str, event: str) -> str:
    row = "OLD" if event == "DELETE" else "NEW"
    device = f"{row}.device_id" if table == "devices" else "NULL"
    return f"""
CREATE TRIGGER IF NOT EXISTS {table}_changed_{event.lower()} AFTER {event} ON {table} BEGIN
    INSERT INTO registry_changes (tenant_id, device_id) VALUES ({row}.tenant_id, {device});
    DELETE FROM registry_changes WHERE seq <= last_insert_rowid() - {KEEP_CHANGES};
END;"""


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS registry_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    device_id TEXT
) STRICT;""" + "".join(
    _sqlite_trigger(table, event)
    for table in ("devices", "tenants")
    for event in ("INSERT", "UPDATE", "DELETE")
)


def notified(changed: Changed, payload: str) -> None:
    """Pass one PostgreSQL notification on; one that cannot be read empties the caches."""
    try:
        ids = json.loads(payload)
        tenant, device = str(ids[0]), (str(ids[1]) if len(ids) > 1 else None)
    except (ValueError, TypeError, IndexError, KeyError):
        logs.log("registry_change_unreadable", level="warning", payload=payload[:200])
        changed(None, None)
        return
    changed(tenant, device)
