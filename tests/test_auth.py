"""Auth verdicts for a batch's device groups, against a real SQLite registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from tidegate.auth import Authenticator, Group
from tidegate.config import Config
from tidegate.ratelimit import RateLimiter
from tidegate.store import open_registry
from tidegate.store.registry import Registry

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_with_registry(tmp_path: Path, body: Callable[[Registry], Awaitable[T]]) -> T:
    async def main() -> T:
        reg = await open_registry(Config(data_dir=tmp_path))
        try:
            await reg.migrate()
            await reg.add_tenant("t1")
            await reg.add_tenant("t2")
            await reg.add_device("t1", "d1", "s1", token="tok1")
            await reg.add_device("t1", "d2", "s1", token="tok2", rps=1.0, burst=2)
            await reg.add_device("t2", "d9", "s9", token="tok9")
            return await body(reg)
        finally:
            await reg.close()

    return asyncio.run(main())


def authenticator(reg: Registry, clock: Clock, max_entries: int = 1000) -> Authenticator:
    return Authenticator(
        reg,
        RateLimiter(10.0, 100),
        ttl_s=60.0,
        negative_ttl_s=5.0,
        max_entries=max_entries,
        clock=clock,
    )


def test_verdicts_per_group_in_order(tmp_path: Path) -> None:
    groups: list[Group] = [
        ("t1", "d1", "s1", "tok1", 3),  # ok
        ("t1", "d1", "s1", "wrong", 1),  # wrong token
        ("t1", "nope", "s1", "tok1", 1),  # unknown device
        ("t2", "d1", "s1", "tok1", 1),  # d1 exists in t1, not t2: cross-tenant
        ("t1", "d1", "elsewhere", "tok1", 2),  # right token, wrong site
        ("t1", "d2", "s1", "tok2", 5),  # burst 2 of 5
    ]

    async def body(reg: Registry) -> None:
        auth = authenticator(reg, Clock())
        verdicts, retry_after = await auth.decide(groups)
        assert verdicts == [
            (3, None),
            (0, "UNAUTHORIZED"),
            (0, "UNAUTHORIZED"),
            (0, "UNAUTHORIZED"),
            (0, "SITE_MISMATCH"),
            (2, "RATE_LIMITED"),
        ]
        assert retry_after == 1.0
        assert reg.queries == 1

    run_with_registry(tmp_path, body)


def test_cache_misses_of_a_batch_cost_one_query_and_hits_none(tmp_path: Path) -> None:
    async def body(reg: Registry) -> None:
        auth = authenticator(reg, Clock())
        groups: list[Group] = [("t1", "d1", "s1", "tok1", 1), ("t2", "d9", "s9", "tok9", 1)]
        await auth.decide(groups)
        await auth.decide(groups)
        await auth.decide([("t1", "unknown", "s1", "x", 1)])
        await auth.decide([("t1", "unknown", "s1", "x", 1)])
        assert reg.queries == 2
        assert (auth.hits, auth.misses) == (3, 3)

    run_with_registry(tmp_path, body)


def test_revocation_takes_effect_when_the_positive_ttl_expires(tmp_path: Path) -> None:
    async def body(reg: Registry) -> None:
        clock = Clock()
        auth = authenticator(reg, clock)
        group: list[Group] = [("t1", "d1", "s1", "tok1", 1)]
        assert (await auth.decide(group))[0] == [(1, None)]
        await reg.revoke_device("t1", "d1")
        clock.now += 59.0
        assert (await auth.decide(group))[0] == [(1, None)]
        clock.now += 1.0
        assert (await auth.decide(group))[0] == [(0, "UNAUTHORIZED")]

    run_with_registry(tmp_path, body)


def test_a_new_device_is_seen_when_the_negative_ttl_expires(tmp_path: Path) -> None:
    async def body(reg: Registry) -> None:
        clock = Clock()
        auth = authenticator(reg, clock)
        group: list[Group] = [("t1", "late", "s1", "tokL", 1)]
        assert (await auth.decide(group))[0] == [(0, "UNAUTHORIZED")]
        await reg.add_device("t1", "late", "s1", token="tokL")
        clock.now += 4.9
        assert (await auth.decide(group))[0] == [(0, "UNAUTHORIZED")]
        clock.now += 0.1
        assert (await auth.decide(group))[0] == [(1, None)]

    run_with_registry(tmp_path, body)


def test_the_cache_stays_within_its_size(tmp_path: Path) -> None:
    async def body(reg: Registry) -> None:
        auth = authenticator(reg, Clock(), max_entries=10)
        for i in range(100):
            await auth.decide([("t1", f"x{i}", "s1", "t", 1)])
        assert len(auth) <= 10

    run_with_registry(tmp_path, body)


def test_limits_name_the_device_limit_or_the_defaults(tmp_path: Path) -> None:
    async def body(reg: Registry) -> None:
        auth = authenticator(reg, Clock())
        await auth.decide([("t1", "d2", "s1", "tok2", 1), ("t1", "d1", "s1", "tok1", 1)])
        assert auth.limits(("t1", "d2")) == (1.0, 2)
        assert auth.limits(("t1", "d1")) == (10.0, 100)

    run_with_registry(tmp_path, body)
