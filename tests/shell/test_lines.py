"""pipeline/lines.py: an edge's line protocol judged again against the shared field types (the
registry on SQLite, the compiled core's FieldTypes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from tidegate import core
from tidegate.core import Core
from tidegate.pipeline.field_claims import FieldClaims
from tidegate.pipeline.lines import Judged, judge
from tidegate.store import field_types
from tidegate.store.sqlite import SqliteRegistry

LINE = b"telemetry,device_id=d1,site_id=s1 %s %d\n"
T = TypeVar("T")


def judged(tmp_path: Path, lines: bytes) -> tuple[Judged, list[field_types.FieldRow]]:
    """Judge `lines` of tenant t1 with `fa` claimed boolean; what the registry holds after."""

    async def main() -> tuple[Judged, list[field_types.FieldRow]]:
        registry = await SqliteRegistry.open(tmp_path)
        try:
            async with registry.transaction() as tx:
                await field_types.claim(tx, [("t1", "telemetry", "fa", "boolean")])
            rust = core.load("rust")
            claims = FieldClaims(rust.FieldTypes(100), registry, [])
            await claims.load()
            out = await judge(rust, claims, "t1", lines)
            async with registry.transaction() as tx:
                return out, sorted(await field_types.every(tx))
        finally:
            await registry.close()

    return asyncio.run(main())


def test_lines_that_agree_are_kept_as_the_edge_encoded_them_and_new_fields_claimed(
    tmp_path: Path,
) -> None:
    lines = LINE % (b"fa=true,n=1.5", 1) + LINE % (b'fa=false,s="x y"', 2)
    out, stored = judged(tmp_path, lines)
    assert out == Judged(lines, 2, b"", 0, "")
    assert stored == [
        ("t1", "telemetry", "fa", "boolean"),
        ("t1", "telemetry", "n", "float"),
        ("t1", "telemetry", "s", "string"),
    ]


def test_a_line_contradicting_the_shared_type_is_refused_and_named(tmp_path: Path) -> None:
    good, bad = LINE % (b"fa=true", 1), LINE % (b"fa=1.5", 2)
    out, _ = judged(tmp_path, good + bad + good)
    conflict = 'field type conflict: "fa" of telemetry is boolean, this message sends float'
    assert out == Judged(good + good, 2, bad, 1, f"line 2: INVALID_METRICS ({conflict})")


def test_a_line_the_rules_refuse_for_another_reason_is_kept_unjudged(tmp_path: Path) -> None:
    # `time` may not be a tag key in line protocol; the edge's encoder is the authority here.
    odd = b"telemetry,time=x fa=1.5 3\n"
    out, _ = judged(tmp_path, odd)
    assert out == Judged(odd, 1, b"", 0, "")


async def claiming(
    tmp_path: Path, judging: Callable[[Core, FieldClaims], Awaitable[T]]
) -> tuple[T, int, list[field_types.FieldRow]]:
    """`judging` with a FieldClaims on a fresh registry: what it returned, the claims made and
    the rows the registry holds after."""
    registry = await SqliteRegistry.open(tmp_path)
    try:
        rust = core.load("rust")
        claims = FieldClaims(rust.FieldTypes(100), registry, [])
        out = await judging(rust, claims)
        async with registry.transaction() as tx:
            return out, claims.claims, await field_types.every(tx)
    finally:
        await registry.close()


def test_a_burst_sending_a_new_field_claims_it_once_and_every_request_is_judged_by_it(
    tmp_path: Path,
) -> None:
    # Many connections' first requests at once: one registry claim per new field, and the
    # requests that waited for it judge their lines by the type it won.
    first = LINE % (b"n=1.5", 1)

    async def burst(rust: Core, claims: FieldClaims) -> list[Judged]:
        return await asyncio.gather(
            judge(rust, claims, "t1", first),
            *(judge(rust, claims, "t1", LINE % (b"n=%di" % i, i)) for i in range(2, 33)),
        )

    out, claimed, stored = asyncio.run(claiming(tmp_path, burst))
    assert claimed == 1
    assert stored == [("t1", "telemetry", "n", "float")]
    assert out[0] == Judged(first, 1, b"", 0, "")
    assert all(j.kept_count == 0 and j.refused_count == 1 for j in out[1:])


def test_a_claim_cancelled_with_its_request_is_made_by_a_request_that_waited_for_it(
    tmp_path: Path,
) -> None:
    async def cancelled(rust: Core, claims: FieldClaims) -> Judged:
        first = asyncio.create_task(judge(rust, claims, "t1", LINE % (b"n=1.5", 1)))
        while not claims._claiming:
            await asyncio.sleep(0)
        second = asyncio.create_task(judge(rust, claims, "t1", LINE % (b"n=2i", 2)))
        await asyncio.sleep(0)  # the second request is waiting for the first's claim
        first.cancel()
        return await second

    out, claimed, stored = asyncio.run(claiming(tmp_path, cancelled))
    assert claimed == 1
    assert stored == [("t1", "telemetry", "n", "integer")]
    assert out.kept_count == 1
