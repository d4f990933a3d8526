"""Registry behaviour, identical on SQLite (embedded default) and real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import asyncpg
import pytest
from tidegate.config import Config
from tidegate.store import changes, field_types, open_registry
from tidegate.store.changes import Change
from tidegate.store.postgres import PostgresRegistry
from tidegate.store.registry import AlreadyExists, Device, Registry
from tidegate.store.secrets import secret_matches
from tidegate.store.sqlite import SqliteRegistry

T = TypeVar("T")
Body = Callable[[Registry], Awaitable[T]]


@pytest.fixture(params=["sqlite", "postgresql"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A config for each backend: SQLite under tmp_path, or a fresh PostgreSQL database."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return Config(database_url=url, data_dir=tmp_path / "data")


def run(cfg: Config, body: Body[T], migrate: bool = True) -> T:
    """Open a registry, (migrate,) run `body`, close."""

    async def main() -> T:
        reg = await open_registry(cfg)
        try:
            if migrate:
                await reg.migrate()
            return await body(reg)
        finally:
            await reg.close()

    return asyncio.run(main())


async def raw_rows(cfg: Config, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` read straight from the database, bypassing the registry."""
    if cfg.database_url:
        conn = await asyncpg.connect(cfg.database_url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    async with aiosqlite.connect(cfg.data_dir / "registry.sqlite3", isolation_level=None) as db:
        return [tuple(r) for r in await db.execute_fetchall(sql)]


def test_open_without_database_url_uses_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path / "nested" / "data")

    async def body(reg: Registry) -> str:
        return reg.backend

    assert run(cfg, body) == "sqlite"
    assert (tmp_path / "nested" / "data" / "registry.sqlite3").is_file()


def test_migrate_is_idempotent_and_keeps_data(cfg: Config) -> None:
    async def body(reg: Registry) -> dict[tuple[str, str], Device]:
        await reg.add_device("acme", "d1", "s1")
        await reg.migrate()
        await reg.migrate()
        return await reg.devices([("acme", "d1")])

    assert list(run(cfg, body)) == [("acme", "d1")]


def test_migrate_creates_power_logs_with_partial_unique_index(cfg: Config) -> None:
    pg = cfg.database_url is not None
    ts = "now()" if pg else "0"
    insert = (
        "INSERT INTO power_logs (tenant_id, device_id, channel, power, timestamp, idempotency_key) "
        f"VALUES ('{{tenant}}', 'plug', 0, 1.5, {ts}, {{key}})"
    )

    async def body(reg: Registry) -> None:
        await reg.migrate()
        for tenant, key in [("a", "'k1'"), ("b", "'k1'"), ("a", "NULL"), ("a", "NULL")]:
            await raw_rows(cfg, insert.format(tenant=tenant, key=key))
        duplicate = asyncpg.UniqueViolationError if pg else sqlite3.IntegrityError
        with pytest.raises(duplicate):
            await raw_rows(cfg, insert.format(tenant="a", key="'k1'"))

    run(cfg, body)
    if pg:
        sql = "SELECT indexdef FROM pg_indexes WHERE tablename = 'power_logs' ORDER BY indexname"
    else:
        sql = "SELECT sql FROM sqlite_master WHERE tbl_name = 'power_logs' AND type = 'index' "
        sql += "ORDER BY name"
    defs = [r[0] for r in asyncio.run(raw_rows(cfg, sql))]
    unique = [d for d in defs if "UNIQUE" in d and "pkey" not in d]
    assert len(unique) == 1
    assert "(tenant_id, idempotency_key)" in unique[0]
    assert "idempotency_key IS NOT NULL" in unique[0]
    assert any("timestamp DESC" in d.replace('"', "") for d in defs)
    assert asyncio.run(raw_rows(cfg, "SELECT count(*) FROM power_logs")) == [(4,)]


def test_added_device_is_found_with_its_settings(cfg: Config) -> None:
    async def body(reg: Registry) -> tuple[str, dict[tuple[str, str], Device]]:
        token = await reg.add_device("acme", "d1", "site-1", rps=2.5, burst=7)
        await reg.add_device("acme", "d2", "site-2")
        return token, await reg.devices([("acme", "d1"), ("acme", "d2")])

    token, found = run(cfg, body)
    assert found[("acme", "d1")] == Device(
        tenant_id="acme",
        device_id="d1",
        site_id="site-1",
        token_hash=hashlib.sha256(token.encode()).digest(),
        rps=2.5,
        burst=7,
        status="active",
    )
    d2 = found[("acme", "d2")]
    assert (d2.site_id, d2.rps, d2.burst, d2.active) == ("site-2", None, None, True)


def test_generated_tokens_are_random_256_bit_values(cfg: Config) -> None:
    async def body(reg: Registry) -> list[str]:
        tokens = [await reg.add_device("acme", f"d{i}", "s") for i in range(3)]
        return [*tokens, await reg.add_tenant("acme")]

    secrets = run(cfg, body)
    assert len(set(secrets)) == 4
    for s in secrets:
        assert len(base64.urlsafe_b64decode(s + "=")) == 32


def test_given_token_is_kept(cfg: Config) -> None:
    async def body(reg: Registry) -> tuple[str, Device]:
        token = await reg.add_device("acme", "d1", "s", token="my-own-token")
        return token, (await reg.devices([("acme", "d1")]))[("acme", "d1")]

    token, device = run(cfg, body)
    assert token == "my-own-token"
    assert secret_matches("my-own-token", device.token_hash)
    assert not secret_matches("my-own-token ", device.token_hash)


def test_devices_runs_one_query_for_all_keys_and_omits_unknown(cfg: Config) -> None:
    statements: list[str] = []

    keys = [(f"t{i % 4}", f"dev-{i}") for i in range(40)]

    async def add(reg: Registry) -> None:
        for tenant, device in keys:
            await reg.add_device(tenant, device, "s")

    async def lookup() -> dict[tuple[str, str], Device]:
        reg = await _traced(cfg, statements)
        try:
            return await reg.devices(
                [*keys, ("t0", "unknown"), ("nobody", "dev-0"), ("t1", "dev-0"), *keys[:5]]
            )
        finally:
            assert reg.queries == 1
            await reg.close()

    run(cfg, add)
    found = asyncio.run(lookup())
    # asyncpg's pool resets a connection when it is released; that is not a lookup.
    assert [q for q in statements if not q.startswith("SELECT pg_advisory_unlock_all()")] == [
        statements[0]
    ]
    assert "devices" in statements[0]
    assert sorted(found) == sorted((f"t{i % 4}", f"dev-{i}") for i in range(40))
    assert all(key == (d.tenant_id, d.device_id) for key, d in found.items())


def test_devices_with_no_keys_runs_no_query(cfg: Config) -> None:
    async def body(reg: Registry) -> tuple[dict[tuple[str, str], Device], int]:
        return await reg.devices([]), reg.queries

    assert run(cfg, body) == ({}, 0)


def test_device_of_one_tenant_is_not_found_under_another(cfg: Config) -> None:
    async def body(reg: Registry) -> dict[tuple[str, str], Device]:
        await reg.add_device("tenant-a", "shared-name", "s")
        await reg.add_device("tenant-c", "shared-name", "s")
        return await reg.devices([("tenant-b", "shared-name"), ("tenant-a", "shared-name")])

    assert list(run(cfg, body)) == [("tenant-a", "shared-name")]


def test_revoke_marks_device_revoked_and_readd_reactivates_with_new_token(cfg: Config) -> None:
    async def body(reg: Registry) -> None:
        old = await reg.add_device("acme", "d1", "s1")
        assert await reg.revoke_device("acme", "d1") is True
        assert await reg.revoke_device("acme", "d1") is True
        assert await reg.revoke_device("acme", "nope") is False
        assert await reg.revoke_device("other", "d1") is False
        revoked = (await reg.devices([("acme", "d1")]))[("acme", "d1")]
        assert (revoked.status, revoked.active) == ("revoked", False)

        new = await reg.add_device("acme", "d1", "s2")
        again = (await reg.devices([("acme", "d1")]))[("acme", "d1")]
        assert (again.status, again.site_id) == ("active", "s2")
        assert secret_matches(new, again.token_hash)
        assert not secret_matches(old, again.token_hash)

    run(cfg, body)


def test_adding_an_active_device_twice_is_refused_and_keeps_the_first_token(cfg: Config) -> None:
    async def body(reg: Registry) -> None:
        token = await reg.add_device("acme", "d1", "s1")
        with pytest.raises(AlreadyExists, match="already active"):
            await reg.add_device("acme", "d1", "s2", token="other")
        device = (await reg.devices([("acme", "d1")]))[("acme", "d1")]
        assert device.site_id == "s1"
        assert secret_matches(token, device.token_hash)

    run(cfg, body)


def test_tokens_and_api_keys_are_stored_only_as_sha256(cfg: Config) -> None:
    async def body(reg: Registry) -> tuple[str, str]:
        token = await reg.add_device("acme", "d1", "s1")
        return token, await reg.add_tenant("acme")

    token, api_key = run(cfg, body)
    devices = asyncio.run(raw_rows(cfg, "SELECT * FROM devices"))
    tenants = asyncio.run(raw_rows(cfg, "SELECT * FROM tenants"))
    stored = repr(devices + tenants)
    for secret in (token, api_key):
        assert secret not in stored
        assert secret.encode() not in [v for row in devices + tenants for v in row]
    token_hashes = [bytes(v) for row in devices for v in row if isinstance(v, bytes | memoryview)]
    key_hashes = [bytes(v) for row in tenants for v in row if isinstance(v, bytes | memoryview)]
    assert token_hashes == [hashlib.sha256(token.encode()).digest()]
    assert key_hashes == [hashlib.sha256(api_key.encode()).digest()]


def test_list_devices_shows_settings_but_no_token_material(cfg: Config) -> None:
    async def body(reg: Registry) -> list[dict[str, object]]:
        await reg.add_device("acme", "b", "s2", rps=1.0, burst=3)
        await reg.add_device("acme", "a", "s1")
        await reg.add_device("other", "c", "s1")
        await reg.revoke_device("acme", "b")
        return await reg.list_devices("acme")

    listed = run(cfg, body)
    assert [{k: v for k, v in d.items() if not k.endswith("_at")} for d in listed] == [
        {"tenant_id": "acme", "device_id": "a", "site_id": "s1", "rps": None, "burst": None,
         "status": "active"},
        {"tenant_id": "acme", "device_id": "b", "site_id": "s2", "rps": 1.0, "burst": 3,
         "status": "revoked"},
    ]  # fmt: skip
    for d in listed:
        assert str(d["created_at"]).endswith("Z")
        assert str(d["updated_at"]) >= str(d["created_at"])


def test_api_key_lookup_compares_hashes_in_constant_time(
    cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def body(reg: Registry) -> tuple[bool, bool, str, str | None, str | None]:
        before = await reg.has_tenants()
        key = await reg.add_tenant("acme", api_key="k-acme")
        after = await reg.has_tenants()
        return (
            before,
            after,
            key,
            await reg.tenant_for_api_key(key),
            await reg.tenant_for_api_key("k-wrong"),
        )

    before, after, key, hit, miss = run(cfg, body)
    assert (before, after, key, hit, miss) == (False, True, "k-acme", "acme", None)
    digest = hashlib.sha256(b"k-acme").digest()
    assert compared == [(digest, digest)]


def test_tenant_api_keys_are_unique_and_set_once(cfg: Config) -> None:
    async def body(reg: Registry) -> None:
        await reg.add_device("acme", "d1", "s1")  # creates the tenant without a key
        assert not await reg.has_tenants()
        assert await reg.add_tenant("acme", "key-1") == "key-1"
        with pytest.raises(AlreadyExists, match="already has an api key"):
            await reg.add_tenant("acme", "key-2")
        with pytest.raises(AlreadyExists, match="already in use"):
            await reg.add_tenant("beta", "key-1")
        assert await reg.tenant_for_api_key("key-1") == "acme"
        assert await reg.tenant_for_api_key("key-2") is None

    run(cfg, body)


@pytest.mark.parametrize(
    ("tenant", "device", "site"),
    [
        ("Acme", "d", "s"),
        ("a" * 65, "d", "s"),
        ("", "d", "s"),
        ("acme", "", "s"),
        ("acme", "d" * 129, "s"),
        ("acme", "é" * 65, "s"),
        ("acme", "back\\slash", "s"),
        ("acme", "d", "trail\\"),
        ("acme", "tab\there", "s"),
        ("acme", "c1\x85", "s"),
        ("acme", "lone\ud800", "s"),
        ("acme", "slash/ed", "s"),
    ],
)
def test_invalid_ids_are_refused_before_touching_the_database(
    tmp_path: Path, tenant: str, device: str, site: str
) -> None:
    async def body(reg: Registry) -> None:
        with pytest.raises(ValueError, match="invalid"):
            await reg.add_device(tenant, device, site)

    run(Config(data_dir=tmp_path), body)
    assert asyncio.run(raw_rows(Config(data_dir=tmp_path), "SELECT * FROM devices")) == []


@pytest.mark.parametrize("token", ["t" * 129, "back\\slash", " lead", "trail ", "tab\there"])
def test_tokens_ingest_could_never_present_are_refused(tmp_path: Path, token: str) -> None:
    async def body(reg: Registry) -> None:
        with pytest.raises(ValueError, match="invalid token"):
            await reg.add_device("acme", "d1", "s1", token=token)

    run(Config(data_dir=tmp_path), body)
    assert asyncio.run(raw_rows(Config(data_dir=tmp_path), "SELECT * FROM devices")) == []


def test_longest_valid_ids_are_accepted(cfg: Config) -> None:
    tenant, device = "t" * 64, "é" * 64

    async def body(reg: Registry) -> dict[tuple[str, str], Device]:
        await reg.add_device(tenant, device, "s" * 128)
        return await reg.devices([(tenant, device)])

    assert (tenant, device) in run(cfg, body)


def test_ping_answers_when_database_is_up(cfg: Config) -> None:
    async def body(reg: Registry) -> None:
        await reg.ping()

    run(cfg, body, migrate=False)


async def _traced(cfg: Config, statements: list[str]) -> Registry:
    """A registry whose every statement, as the database receives it, lands in `statements`."""
    if cfg.database_url:

        async def init(conn: Any) -> None:
            conn.add_query_logger(lambda record: statements.append(record.query))

        return PostgresRegistry(
            await asyncpg.create_pool(cfg.database_url, init=init), cfg.database_url
        )
    db = await aiosqlite.connect(cfg.data_dir / "registry.sqlite3", isolation_level=None)
    await db.set_trace_callback(statements.append)
    return SqliteRegistry(db)


def test_every_field_type_row_written_is_heard_by_another_registry_within_2_s(
    cfg: Config,
) -> None:
    # Claims and the types InfluxDB reports reach every process's cache (pipeline/services.py).
    async def body(reg: Registry) -> list[Change]:
        heard: list[Change] = []
        other = await open_registry(cfg)
        try:
            await other.watch(heard.append)
            async with reg.transaction() as tx:
                await field_types.claim(tx, [("t1", "telemetry", "fx", "float")])
            async with reg.transaction() as tx:
                await field_types.set_type(tx, ("t1", "telemetry", "fx", "integer"))
            for _ in range(40):
                if len(heard) >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await other.close()
        return heard

    assert run(cfg, body) == [
        Change("t1", field_type=("telemetry", "fx", "float")),
        Change("t1", field_type=("telemetry", "fx", "integer")),
    ]


def test_a_change_feed_from_before_field_types_gains_their_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "registry.sqlite3") as db:
        db.execute(
            "CREATE TABLE registry_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "tenant_id TEXT NOT NULL, device_id TEXT) STRICT"
        )
    cfg = Config(data_dir=data)

    async def body(reg: Registry) -> None:
        await reg.migrate()  # a second time: nothing left to add

    run(cfg, body)
    columns = asyncio.run(raw_rows(cfg, "SELECT name FROM pragma_table_info('registry_changes')"))
    assert [c for (c,) in columns] == ["seq", "tenant_id", "device_id", "field_type"]


def test_feed_payloads_read_back_as_the_change_they_name() -> None:
    for change in (
        Change("t1"),
        Change("t1", "d1"),
        Change("t1", field_type=("telemetry", "fx", "float")),
    ):
        assert changes.decoded(changes.encoded(change)) == change
    for payload in ("", "[]", "[null]", '["t1", null]', '["t1", 2]', '{"t": 1}', "[1,2,3,4,5]"):
        with pytest.raises(ValueError, match="not a registry change"):
            changes.decoded(payload)
