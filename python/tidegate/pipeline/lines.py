"""Line-protocol batches: naming their refused lines (the InfluxDB write routes' answers), and
judging the lines an edge already validated against the shared field types (the NATS worker).

An edge claims its batch's new fields before its 202, so its lines agree with the registry —
unless its claim could not reach the registry (it decided alone), or the registry's type changed
since (InfluxDB reported another). The worker therefore judges every edge message again,
against the same FieldClaims as its own inputs: a line that contradicts the shared type is
refused (INVALID_METRICS, with the field named), never handed to InfluxDB to be dead-lettered;
a new field is claimed (taught) as on any other entrance.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidegate.core import Core
from tidegate.pipeline.field_claims import FieldClaims

if TYPE_CHECKING:
    from tidegate._core import Batch

# parse_lines re-encodes each line with its writer's device and site; only the fields are
# judged here and the edge's own lines are what is kept, so one stand-in writer serves every
# line (and no pass over the lines to find their devices is needed).
_ANY_WRITER = ("edge", "edge", "edge")


@dataclass(frozen=True, slots=True)
class Judged:
    """An edge message's lines, split: `kept` (as the edge encoded them, `kept_count` lines)
    go to the buffers; `refused` ones (`refused_count`) to the rejected subject, `detail`
    naming each and why (INVALID_METRICS)."""

    kept: bytes
    kept_count: int
    refused: bytes
    refused_count: int
    detail: str


def refused_lines(batch: Batch, only: Collection[int] | None = None) -> str:
    """`line N: REASON (detail); …` naming every refused line (or those of items `only`)."""
    numbers = batch.line_numbers()
    details = dict(batch.details())
    parts = []
    for index, reason in enumerate(batch.reasons()):
        if reason is None or (only is not None and index not in only):
            continue
        detail = details.get(index)
        part = f"line {numbers[index]}: {reason}"
        parts.append(f"{part} ({detail})" if detail else part)
    return "; ".join(parts)


async def judge(core: Core, claims: FieldClaims, tenant: str, lines: bytes) -> Judged:
    """Check one tenant's edge-encoded `lines` (each ending in a newline) against the shared
    field types, claiming their new fields first. A line the core's line-protocol rules refuse
    for another reason than its field types is kept as the edge validated it: the edge's
    encoder is the authority there, as before."""
    count = lines.count(b"\n")
    try:
        batch = core.parse_lines(lines, tenant, 0, "ns", len(lines), device=_ANY_WRITER)
    except core.BodyError:  # more lines than a body may hold: kept, as the edge validated them
        return Judged(lines, count, b"", 0, "")
    batch.resolve([(n, None) for *_, n in batch.groups()])
    unchecked = {i for i, reason in enumerate(batch.reasons()) if reason is not None}
    await claims.admit(batch)
    refused = [
        i for i, reason in enumerate(batch.reasons()) if reason is not None and i not in unchecked
    ]
    if not refused:
        return Judged(lines, count, b"", 0, "")
    numbers = batch.line_numbers()
    out = {numbers[i] for i in refused}
    split: tuple[list[bytes], list[bytes]] = ([], [])
    for number, line in enumerate(lines.split(b"\n")[:-1], start=1):
        split[number in out].append(line + b"\n")
    kept, gone = split
    detail = refused_lines(batch, set(refused))
    return Judged(b"".join(kept), len(kept), b"".join(gone), len(gone), detail)
