"""Per-tenant message counts (`tidegate_tenant_messages_total`): a series per tenant for the
first TENANT_SERIES tenants with an accepted message, the rest and every unplaced rejection
under "other"."""

from __future__ import annotations

from dataclasses import dataclass

from tidegate.metrics import OTHER_TENANT, TENANT_SERIES, Metrics


@dataclass
class Counts:
    """A resolved batch as metrics reads it."""

    per_tenant: list[tuple[str, int, int]]

    def tenant_counts(self) -> list[tuple[str, int, int]]:
        return self.per_tenant


def test_tenants_get_series_first_come_and_the_rest_count_as_other() -> None:
    m = Metrics()
    for i in range(TENANT_SERIES + 3):
        m.count(2, (("RATE_LIMITED", 1),), Counts([(f"t{i}", 2, 1)]))
    assert m.tenants["t0"] == [2, 1]
    assert f"t{TENANT_SERIES - 1}" in m.tenants
    assert f"t{TENANT_SERIES}" not in m.tenants
    assert m.tenants[OTHER_TENANT] == [2 * 3, 3]


def test_nothing_accepted_gets_no_series_and_unplaced_rejections_count_as_other() -> None:
    m = Metrics()
    m.count(0, (("UNAUTHORIZED", 4), ("INVALID_SCHEMA", 2)), Counts([("t", 0, 4)]))
    assert "t" not in m.tenants
    assert m.tenants[OTHER_TENANT] == [0, 6]
    m.count(3, (("INVALID_SCHEMA", 1),), Counts([("t", 3, 0)]))
    assert m.tenants["t"] == [3, 0]
    assert m.tenants[OTHER_TENANT] == [0, 7]
