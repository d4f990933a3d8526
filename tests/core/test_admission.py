"""Admission (auth cache, token check, site check, rate limit, lookup budget) in the compiled core
and the twin: examples against each, and a differential property over random sequences."""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages import CORES, RECEIVE_NS, batch_body, load_core, message

RUST = load_core("rust")
TWIN = load_core("python")

Row = tuple[str, str, str, bytes, float | None, int | None, str]


def row(
    tenant: str,
    device: str,
    site: str,
    token: str,
    rps: float | None = None,
    burst: int | None = None,
    status: str = "active",
) -> Row:
    return (tenant, device, site, hashlib.sha256(token.encode()).digest(), rps, burst, status)


def batch(core: ModuleType, *items: tuple[str, str, str, str]) -> Any:
    """A batch of one message per `(tenant, device, site, token)`."""
    messages = [
        message(tenant_id=t, device_id=d, site_id=s, provision_token=k) for t, d, s, k in items
    ]
    return core.parse_batch(batch_body(*messages), RECEIVE_NS)


REGISTRY = [
    row("t1", "d1", "s1", "tok1"),
    row("t1", "d2", "s1", "tok2", rps=1.0, burst=2),
    row("t1", "gone", "s1", "tokg", status="revoked"),
    row("t2", "d9", "s9", "tok9"),
]


def admit(
    admission: Any,
    b: Any,
    now: float,
    registry: list[Row] | None = REGISTRY,
    lookup_s: float = 0.0,
) -> list[Any]:
    """What a route does: admit, ONE lookup of the missing keys (taking `lookup_s`), install,
    admit again; returns the keys looked up. `registry=None`: the lookup fails."""
    keys: list[Any] = admission.admit(b, now)
    if keys:
        now += lookup_s
        if registry is not None:
            wanted = set(keys)
            admission.install(keys, [r for r in registry if (r[0], r[1]) in wanted], now)
        assert admission.admit(b, now) == []
    return keys


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return load_core(request.param)


def test_each_group_gets_its_verdict_and_misses_cost_one_lookup(core: ModuleType) -> None:
    a = core.Admission()
    b = batch(
        core,
        ("t1", "d1", "s1", "tok1"),
        ("t1", "d1", "s1", "wrong"),
        ("t1", "nope", "s1", "tok1"),
        ("t2", "d1", "s1", "tok1"),
        ("t1", "gone", "s1", "tokg"),
        ("t1", "d1", "elsewhere", "tok1"),
        *[("t1", "d2", "s1", "tok2")] * 5,
    )
    keys = admit(a, b, 100.0)
    assert keys == [("t1", "d1"), ("t1", "nope"), ("t2", "d1"), ("t1", "gone"), ("t1", "d2")]
    assert b.reasons() == [
        None,
        "UNAUTHORIZED",
        "UNAUTHORIZED",
        "UNAUTHORIZED",
        "UNAUTHORIZED",
        "SITE_MISMATCH",
        None,
        None,
        "RATE_LIMITED",
        "RATE_LIMITED",
        "RATE_LIMITED",
    ]
    assert b.retry_after == 1.0
    assert a.limits("t1", "d2") == (1.0, 2)
    assert a.limits("t1", "d1") == (10.0, 100)
    again = batch(core, ("t1", "d1", "s1", "tok1"), ("t1", "nope", "s1", "x"))
    assert admit(a, again, 101.0) == []
    assert again.reasons() == [None, "UNAUTHORIZED"]
    assert a.stats() == {
        "hits": 2,
        "misses": 5,
        "budget_refusals": 0,
        "unavailable": 0,
        "entries": 3,
        "negative_entries": 2,
        "buckets": 2,
        "budgets": 2,
    }


def test_a_failed_lookup_decides_cached_devices_and_leaves_the_rest_unavailable(
    core: ModuleType,
) -> None:
    a = core.Admission()
    admit(a, batch(core, ("t1", "d1", "s1", "tok1")), 0.0)
    b = batch(core, ("t1", "d1", "s1", "tok1"), ("t1", "d2", "s1", "tok2"))
    assert admit(a, b, 1.0, registry=None) == [("t1", "d2")]
    assert b.reasons() == [None, "UNAVAILABLE"]
    assert b.reason_counts() == [("UNAVAILABLE", 1)]
    assert a.stats()["unavailable"] == 1


def test_revocation_and_new_devices_take_effect_within_their_ttl(core: ModuleType) -> None:
    a = core.Admission(ttl_s=60.0, negative_ttl_s=5.0)
    registry = list(REGISTRY)
    admit(a, batch(core, ("t1", "d1", "s1", "tok1"), ("t1", "late", "s1", "tokL")), 0.0, registry)
    registry[0] = row("t1", "d1", "s1", "tok1", status="revoked")
    registry.append(row("t1", "late", "s1", "tokL"))

    def reasons(now: float) -> list[str | None]:
        b = batch(core, ("t1", "d1", "s1", "tok1"), ("t1", "late", "s1", "tokL"))
        admit(a, b, now, registry)
        return list(b.reasons())

    assert reasons(4.9) == [None, "UNAUTHORIZED"]
    assert reasons(5.0) == [None, None]
    assert reasons(59.9) == [None, None]
    assert reasons(60.0) == ["UNAUTHORIZED", None]
    a.invalidate("t1", "late")
    registry.pop()
    assert reasons(60.0) == ["UNAUTHORIZED", "UNAUTHORIZED"]


def test_a_rotated_token_works_after_invalidate_all(core: ModuleType) -> None:
    a = core.Admission()
    admit(a, batch(core, ("t1", "d1", "s1", "tok1")), 0.0)
    rotated = [row("t1", "d1", "s1", "new")]
    b = batch(core, ("t1", "d1", "s1", "new"))
    admit(a, b, 1.0, rotated)
    assert b.reasons() == ["UNAUTHORIZED"]
    a.invalidate_all()
    b = batch(core, ("t1", "d1", "s1", "new"), ("t1", "d1", "s1", "tok1"))
    assert admit(a, b, 1.0, rotated) == [("t1", "d1")]
    assert b.reasons() == [None, "UNAUTHORIZED"]


def test_a_flood_of_unknown_ids_costs_bounded_lookups_and_evicts_no_known_device(
    core: ModuleType,
) -> None:
    a = core.Admission(max_entries=10, max_negative_entries=50, lookups_per_s=20)
    admit(a, batch(core, ("t1", "d1", "s1", "tok1")), 0.0)
    looked_up = 0
    for second in range(10):
        for n in range(10):
            flood = [("t1", f"x-{second}-{n}-{i}", "s1", "k") for i in range(100)]
            looked_up += len(admit(a, batch(core, *flood), second + n / 10))
    # The burst at 0, then 20 per second: 2 in each of the 99 later batches.
    assert looked_up == 20 + 99 * 2
    stats = a.stats()
    assert stats["budget_refusals"] == 100 * 100 - looked_up
    assert stats["negative_entries"] <= 50
    b = batch(core, ("t1", "d1", "s1", "tok1"))
    assert admit(a, b, 10.0) == []
    assert b.reasons() == [None]


def test_a_full_table_drops_expired_entries_first_then_the_oldest_tenth(core: ModuleType) -> None:
    a = core.Admission(ttl_s=10.0, max_entries=20)
    a.install([], [row("t", f"old{i}", "s", "k") for i in range(5)], 0.0)
    a.install([], [row("t", f"d{i}", "s", "k") for i in range(15)], 5.0)

    def cached(now: float) -> list[str]:
        names = [f"old{i}" for i in range(5)] + [f"d{i}" for i in range(15)] + ["new", "newer"]
        b = batch(core, *[("t", name, "s", "k") for name in names])
        asked = {device for _, device in a.admit(b, now)}
        return [name for name in names if name not in asked]

    # Full and nothing expired at 9: the two oldest (a tenth) make room.
    a.install([], [row("t", "new", "s", "k")], 9.0)
    assert cached(9.0) == [f"old{i}" for i in range(2, 5)] + [f"d{i}" for i in range(15)] + ["new"]
    a.install([], [row("t", "pad", "s", "k")], 9.0)
    # Full again at 10: the three left from 0 have expired, and only they go.
    a.install([], [row("t", "newer", "s", "k")], 10.0)
    assert cached(10.0) == [f"d{i}" for i in range(15)] + ["new", "newer"]
    assert a.stats()["entries"] == 18


def test_found_devices_give_their_lookup_back(core: ModuleType) -> None:
    a = core.Admission(lookups_per_s=1)
    registry = [row("t1", f"d{i}", "s1", "k") for i in range(50)]
    b = batch(core, *[("t1", f"d{i}", "s1", "k") for i in range(50)])
    assert admit(a, b, 0.0, registry) == [("t1", "d0")]
    assert b.reason_counts() == [("UNAUTHORIZED", 49)]
    for i in range(1, 50):
        assert admit(a, batch(core, ("t1", f"d{i}", "s1", "k")), 0.0, registry) == [("t1", f"d{i}")]


def test_misuse_and_bad_settings_raise_value_error(core: ModuleType) -> None:
    a = core.Admission()
    b = batch(core, ("t1", "d1", "s1", "tok1"))
    admit(a, b, 0.0)
    bad_hash = ("t", "d", "s", b"x", None, None, "active")
    calls: list[tuple[Any, str]] = [
        (lambda: a.admit(b, 0.0), "verdicts were already applied to this batch"),
        (lambda: a.install([], [bad_hash], 0.0), "token_hash must be 32 bytes (a SHA-256 digest)"),
        (
            lambda: a.install([], [row("t", "d", "s", "k", rps=0.0)], 0.0),
            "rps must be a positive number",
        ),
        (lambda: core.Admission(negative_ttl_s=-1.0), "negative_ttl_s must be a number >= 0"),
        (lambda: core.Admission(lookups_per_s=0), "lookups_per_s must be >= 1"),
    ]
    for call, detail in calls:
        with pytest.raises(ValueError) as raised:
            call()
        assert str(raised.value) == detail
    assert a.stats()["entries"] == 1


# -- differential ----------------------------------------------------------------------------

TENANTS = ["t1", "t2"]
DEVICES = ["d1", "d2", "d3", "d4", "d5", "d6", "d7"]
SITES = ["s1", "s2"]
TOKENS = ["k1", "k2"]
STEPS = [0.0, 0.0, 0.01, 0.25, 0.5, 1.0, 4.99, 5.0, 60.0]

keys_st = st.tuples(st.sampled_from(TENANTS), st.sampled_from(DEVICES))
record_st = st.builds(
    row,
    st.sampled_from(TENANTS),
    st.sampled_from(DEVICES),
    st.sampled_from(SITES),
    st.sampled_from(TOKENS),
    st.sampled_from([None, 0.5, 1.0, 3.0]),
    st.sampled_from([None, 1, 2, 5]),
    st.sampled_from(["active", "active", "revoked"]),
)
item_st = st.tuples(
    st.sampled_from(TENANTS),
    st.sampled_from(DEVICES),
    st.sampled_from(SITES),
    st.sampled_from(TOKENS),
)
op_st = st.one_of(
    st.tuples(
        st.just("batch"),
        st.lists(item_st, min_size=1, max_size=8),
        st.booleans(),
        st.sampled_from(STEPS),
    ),
    st.tuples(st.just("clock"), st.sampled_from(STEPS)),
    st.tuples(st.just("install"), st.lists(keys_st, max_size=6), st.lists(record_st, max_size=6)),
    st.tuples(st.just("registry"), record_st),
    st.tuples(st.just("forget"), keys_st),
    st.tuples(st.just("invalidate"), keys_st),
    st.tuples(st.just("invalidate_all")),
)
settings_st = st.fixed_dictionaries(
    {
        "ttl_s": st.sampled_from([0.0, 1.0, 60.0]),
        "negative_ttl_s": st.sampled_from([0.0, 0.5, 5.0]),
        # Ten and more: the oldest tenth is more than one entry.
        "max_entries": st.sampled_from([1, 2, 3, 10, 11]),
        "max_negative_entries": st.sampled_from([1, 2, 3, 10, 11]),
        "default_rps": st.sampled_from([0.5, 10.0]),
        "default_burst": st.sampled_from([1, 3, 100]),
        "lookups_per_s": st.integers(1, 4),
    }
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(settings_st, st.lists(op_st, max_size=40))
def test_core_and_twin_agree_on_every_sequence(
    config: dict[str, Any], ops: list[tuple[Any, ...]]
) -> None:
    rust, twin = RUST.Admission(**config), TWIN.Admission(**config)
    registry: dict[tuple[str, str], Row] = {}
    now = 1000.0
    for op in ops:
        kind = op[0]
        if kind == "batch":
            _, items, lookup_ok, lookup_s = op
            outcomes = []
            for core, a in ((RUST, rust), (TWIN, twin)):
                b = batch(core, *items)
                rows = list(registry.values()) if lookup_ok else None
                keys = admit(a, b, now, rows, lookup_s)
                outcomes.append(
                    (keys, b.reasons(), b.retry_after, b.response_json(), b.rejections())
                )
            assert outcomes[0] == outcomes[1]
            now += lookup_s if outcomes[0][0] else 0.0
        elif kind == "clock":
            now += op[1]
        elif kind == "install":
            for a in (rust, twin):
                a.install(op[1], op[2], now)
        elif kind == "registry":
            registry[(op[1][0], op[1][1])] = op[1]
        elif kind == "forget":
            registry.pop(op[1], None)
        elif kind == "invalidate":
            for a in (rust, twin):
                a.invalidate(*op[1])
        else:
            for a in (rust, twin):
                a.invalidate_all()
        assert rust.stats() == twin.stats()
        for key in registry:
            assert rust.limits(*key) == twin.limits(*key)
