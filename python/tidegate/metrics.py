"""Prometheus metrics and the counters behind GET /ingest/v1/stats."""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from math import inf
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Request latency buckets: the gateway answers in well under a millisecond when healthy.
_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FLUSH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# `*_created` series double the exposition and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream

# The numeric keys of the stats sources (sink, write-ahead log, gateway or worker extras) that
# count events since the process started, by exported name without `tidegate_`: they are
# counters (`<name>_total`), so `rate()` and `increase()` work on them. Every other numeric key
# is a level (a gauge) and listed in LEVELS; tests/test_metrics_kinds.py holds every key a
# running gateway or worker reports to exactly one of the two.
COUNTS = frozenset(
    {
        "sink_writes_ok",
        "sink_writes_err",
        "sink_writes_uncertain",
        "sink_flushes",
        "sink_retries",
        "sink_dead_lettered",
        "sink_spilled",
        "sink_logged",
        "sink_lost",
        "wal_fsyncs",
        "wal_synced_records",
        "wal_appended_records",
        "wal_groups",
        "wal_checkpoints",
        "wal_deleted_segments",
        "wal_recycled_segments",
        "wal_compacted_records",
        "wal_replayed_segments",
        "wal_replayed_records",
        "wal_replayed_lines",
        "wal_skipped_delivered",
        "wal_corrupt_records",
        "wal_truncated_bytes",
        "wal_quarantined_files",
        "registry_queries",
        "auth_cache_hits",
        "auth_cache_misses",
        "auth_lookup_budget_refusals",
        "auth_unavailable",
        "field_types_untracked",
        "device_state_upserts",
        "device_state_failures",
        "tenant_key_cache_hits",
        "tenant_key_cache_misses",
        "tenant_key_budget_refusals",
        "auth_stale_lookups",
        "field_type_claims",
        "field_type_claims_failed",
        "nats_reconnects",
        "nats_published",
        "control_told",
        "control_heard",
        "control_tell_failed",
        "nats_duplicates",
        "nats_publish_retries",
        "nats_publish_failed",
        "nats_requests_published",
        "worker_fetched",
        "worker_acked",
        "worker_naked",
        "worker_terminated",
        "worker_lp_messages",
        "worker_envelope_messages",
        "worker_mqtt_messages",
        "worker_rejected_published",
        "worker_rejected_publish_failed",
        "worker_fetch_errors",
    }
)
LEVELS = frozenset(
    {
        "sink_retry_queue_depth",
        "sink_retry_tenants",
        "sink_in_flight_tenants",
        "sink_failing",
        "wal_bytes",
        "wal_max_bytes",
        "wal_segments",
        "wal_records_per_fsync",
        "wal_failed",
        "auth_cache_entries",
        "auth_cache_negative_entries",
        "auth_lookup_budgets",
        "rate_limit_buckets",
        "registry_unavailable",
        "field_types",
        "telemetry_latest_devices",
        "draining",
        "nats_connected",
        "worker_in_progress",
        "worker_held",
        "rate_limit_processes",
    }
)
# Per-tenant message counters: the first TENANT_SERIES tenants with an accepted message get a
# series of their own, for the life of the process; everything else (later tenants, items
# rejected before their tenant was known) counts under tenant="other". First come rather than
# the current top N: a tenant never moves between series, so every series only grows and
# `rate()` stays right; only an accepted (so authenticated) tenant takes a slot, so clients
# sending made-up tenant ids cannot use the slots up.
TENANT_SERIES = 50
OTHER_TENANT = "other"


class Buffers(Protocol):
    """What metrics reads of the core's TenantBuffers."""

    def depth(self) -> dict[str, tuple[int, int]]: ...
    def tenant_bytes(self) -> dict[str, int]: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def tenant_max_bytes(self) -> int: ...


class TenantCounts(Protocol):
    """What metrics reads of a resolved Batch to count its messages per tenant."""

    def tenant_counts(self) -> list[tuple[str, int, int]]: ...


class Metrics:
    """Request and flush histograms plus plain counters read at scrape time.

    Message counts are plain ints bumped once per request per reason (O(reasons), no lock);
    the Prometheus collector and /stats both read them, so the two never disagree.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.request_seconds = Latencies(
            "tidegate_request_seconds", "HTTP request latency by route", "route", _REQUEST_BUCKETS
        )
        self.registry.register(self.request_seconds)
        self.flush_seconds = Latencies(
            "tidegate_flush_seconds", "Sink write latency by outcome", "outcome", _FLUSH_BUCKETS
        )
        self.registry.register(self.flush_seconds)
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        # tenant -> [accepted, rejected]; at most TENANT_SERIES tenants plus OTHER_TENANT.
        self.tenants: dict[str, list[int]] = {OTHER_TENANT: [0, 0]}
        self.responses: dict[tuple[str, int], int] = {}
        self.limits_hit: dict[str, int] = {}
        self.client_disconnects: dict[str, int] = {}
        self.flush_ok = 0
        self.flush_err = 0
        self.lines_flushed = 0
        self._buffers: Buffers | None = None
        self._sink_stats: Callable[[], Mapping[str, object]] | None = None
        self._extra: Callable[[], Mapping[str, int]] | None = None
        self._wal: Callable[[], Mapping[str, object] | None] | None = None
        self.registry.register(_Live(self))
        # process_resident_memory_bytes & co: RSS must stay flat under load.
        ProcessCollector(registry=self.registry)

    def bind(
        self,
        buffers: Buffers,
        sink_stats: Callable[[], Mapping[str, object]],
        extra: Callable[[], Mapping[str, int]],
        wal: Callable[[], Mapping[str, object] | None],
    ) -> None:
        """Attach what is read at scrape time: the buffers, the sink's stats, extra counters,
        the write-ahead log's stats (None without one)."""
        self._buffers = buffers
        self._sink_stats = sink_stats
        self._extra = extra
        self._wal = wal

    def count(
        self,
        accepted: int,
        reason_counts: Sequence[tuple[str, int]],
        batch: TenantCounts | None = None,
    ) -> None:
        """Record one request's outcome: accepted messages and rejected ones per reason, and
        per tenant from `batch` (without one, under tenant="other")."""
        self.accepted += accepted
        rejected = self.rejected
        for reason, n in reason_counts:
            rejected[reason] = rejected.get(reason, 0) + n
        if batch is None:
            other = self.tenants[OTHER_TENANT]
            other[0] += accepted
            other[1] += sum(n for _, n in reason_counts)
            return
        self._count_tenants(batch, reason_counts)

    def _count_tenants(self, batch: TenantCounts, reason_counts: Sequence[tuple[str, int]]) -> None:
        tenants = self.tenants
        # Items that failed validation have no tenant to count under but "other".
        unplaced = sum(n for _, n in reason_counts)
        for tenant, accepted, refused in batch.tenant_counts():
            unplaced -= refused
            counts = tenants.get(tenant)
            if counts is None:
                if accepted and len(tenants) <= TENANT_SERIES:
                    counts = tenants[tenant] = [0, 0]
                else:
                    counts = tenants[OTHER_TENANT]
            counts[0] += accepted
            counts[1] += refused
        tenants[OTHER_TENANT][1] += unplaced

    def response(self, route: str, status: int) -> None:
        """Count one response by route and status."""
        key = (route, status)
        self.responses[key] = self.responses.get(key, 0) + 1

    def limit_hit(self, limit: str) -> None:
        """Count one connection refused or cut by a connection limit (http/limits.py)."""
        self.limits_hit[limit] = self.limits_hit.get(limit, 0) + 1

    def client_disconnected(self, route: str) -> None:
        """Count one request whose client went away before its body was read."""
        self.client_disconnects[route] = self.client_disconnects.get(route, 0) + 1

    def on_flush(self, tenant: str, lines: int, seconds: float, ok: bool) -> None:
        """The sink's hook, called once per write attempt."""
        if ok:
            self.flush_ok += 1
            self.lines_flushed += lines
        else:
            self.flush_err += 1
        # An outcome's series appears with its first write, as a labelled Histogram's does.
        self.flush_seconds.observer("ok" if ok else "error")(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)

    def stats(self) -> dict[str, object]:
        """GET /ingest/v1/stats: JSON-ready counters, buffer depth and the sink's own numbers."""
        sink = dict(self._sink_stats()) if self._sink_stats else {}
        depth = self._buffers.depth() if self._buffers else {}
        counted = self._buffers.tenant_bytes() if self._buffers else {}
        out: dict[str, object] = {
            "writes_ok": sink.get("writes_ok", self.flush_ok),
            "writes_err": sink.get("writes_err", self.flush_err),
            "flushes": sink.get("flushes", self.flush_ok + self.flush_err),
            "retry_queue_depth": sink.get("retry_queue_depth", 0),
            "buffer_depth": {
                "tenants": {
                    t: {"lines": lines, "bytes": nbytes} for t, (lines, nbytes) in depth.items()
                },
                # Per tenant, bytes against its share (buffered, put back, in flight).
                "tenants_counted_bytes": counted,
                "tenant_max_bytes": self._buffers.tenant_max_bytes if self._buffers else 0,
                "total": {
                    "lines": sum(lines for lines, _ in depth.values()),
                    "bytes": sum(nbytes for _, nbytes in depth.values()),
                },
                "bytes_counted": self._buffers.total_bytes if self._buffers else 0,
                "max_bytes": self._buffers.max_bytes if self._buffers else 0,
            },
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": sum(self.rejected.values()),
            "responses": {
                f"{route} {status}": n for (route, status), n in sorted(self.responses.items())
            },
            "limits_hit": dict(sorted(self.limits_hit.items())),
            "client_disconnects": dict(sorted(self.client_disconnects.items())),
            "lines_flushed": self.lines_flushed,
            "flush_attempts_ok": self.flush_ok,
            "flush_attempts_failed": self.flush_err,
            "sink": sink,
            "wal": dict(wal) if self._wal and (wal := self._wal()) is not None else None,
        }
        if self._extra:
            out.update(self._extra())
        return out


class Latencies(Collector):
    """A histogram by one label whose observations are plain ints and a float, read at scrape
    time. Every request (and every sink write) makes one observation: prometheus_client's
    Histogram takes a lock for the sum and one for the bucket, ~1.1 µs, against ~0.25 µs here.
    Observed and scraped on the event loop's thread only, so no lock is needed."""

    def __init__(self, name: str, doc: str, label: str, bounds: Sequence[float]) -> None:
        self._name = name
        self._doc = doc
        self._label = label
        self._bounds = (*bounds, inf)
        # The `le` labels as prometheus_client's Histogram spells them.
        self._les: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        # label value -> (observations per bucket, not cumulative; [sum of the values])
        self._series: dict[str, tuple[list[int], list[float]]] = {}
        self._observers: dict[str, Callable[[float], None]] = {}

    def observer(self, value: str) -> Callable[[float], None]:
        """The function that records one observation under label `value` (a series from the
        first call on, at zero until observed); the same function at every call."""
        observe = self._observers.get(value)
        if observe is None:
            observe = self._observers[value] = self._new_observer(value)
        return observe

    def _new_observer(self, value: str) -> Callable[[float], None]:
        counts, total = self._series[value] = ([0] * len(self._bounds), [0.0])
        bounds = self._bounds

        def observe(seconds: float) -> None:
            # The first bound >= seconds: Prometheus buckets include their upper bound.
            counts[bisect_left(bounds, seconds)] += 1
            total[0] += seconds

        return observe

    def collect(self) -> Iterable[Metric]:
        """One histogram family, its buckets cumulative as the exposition wants them."""
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        for value, (counts, total) in self._series.items():
            buckets = [
                (le, float(n))
                for le, n in zip(self._les, itertools.accumulate(counts), strict=True)
            ]
            family.add_metric([value], buckets, total[0])
        yield family


class _Live(Collector):
    """Reads the plain counters, the buffers and the sink at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._m
        messages = CounterMetricFamily(
            "tidegate_messages", "Messages by outcome and reason", labels=["outcome", "reason"]
        )
        messages.add_metric(["accepted", ""], m.accepted)
        for reason, n in sorted(m.rejected.items()):
            messages.add_metric(["rejected", reason], n)
        yield messages
        responses = CounterMetricFamily(
            "tidegate_responses", "HTTP responses by route and status", labels=["route", "status"]
        )
        for (route, status), n in sorted(m.responses.items()):
            responses.add_metric([route, str(status)], n)
        yield responses
        yield _labelled_counter(
            "tidegate_connection_limit",
            "Connections refused or cut by a limit (431, 408, 503)",
            "limit",
            m.limits_hit,
        )
        yield _labelled_counter(
            "tidegate_client_disconnects",
            "Requests whose client disconnected before the body was read",
            "route",
            m.client_disconnects,
        )
        per_tenant = CounterMetricFamily(
            "tidegate_tenant_messages",
            f"Messages by tenant (the first {TENANT_SERIES} accepted ones; the rest: other)",
            labels=["tenant", "outcome"],
        )
        for tenant, (accepted, rejected) in sorted(m.tenants.items()):
            per_tenant.add_metric([tenant, "accepted"], accepted)
            per_tenant.add_metric([tenant, "rejected"], rejected)
        yield per_tenant
        errors = CounterMetricFamily("tidegate_sink_errors", "Failed sink write attempts")
        errors.add_metric([], m.flush_err)
        yield errors
        lines = CounterMetricFamily("tidegate_lines_flushed", "Lines written by the sink")
        lines.add_metric([], m.lines_flushed)
        yield lines
        if m._buffers is not None:
            yield from _buffer_metrics(m._buffers)
        if m._sink_stats is not None:
            yield from _stat_families("sink_", "Sink statistic", m._sink_stats())
        if m._extra is not None:
            yield from _stat_families("", "Gateway statistic", m._extra())
        wal = m._wal() if m._wal is not None else None
        if wal is not None:
            yield from _stat_families("wal_", "Write-ahead log statistic", wal)


def _labelled_counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    counter = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        counter.add_metric([key], n)
    return counter


def _buffer_metrics(buffers: Buffers) -> Iterable[Metric]:
    total = GaugeMetricFamily(
        "tidegate_buffer_bytes", "Bytes counted against the buffer cap (buffered and in flight)"
    )
    total.add_metric([], buffers.total_bytes)
    yield total
    cap = GaugeMetricFamily("tidegate_buffer_max_bytes", "The buffer cap")
    cap.add_metric([], buffers.max_bytes)
    yield cap
    share = GaugeMetricFamily("tidegate_buffer_tenant_max_bytes", "The per-tenant buffer cap")
    share.add_metric([], buffers.tenant_max_bytes)
    yield share
    counted = GaugeMetricFamily(
        "tidegate_buffer_tenant_counted_bytes",
        "Bytes counted against the per-tenant cap (buffered and in flight)",
        labels=["tenant"],
    )
    for tenant, n in sorted(buffers.tenant_bytes().items()):
        counted.add_metric([tenant], n)
    yield counted
    lines = GaugeMetricFamily(
        "tidegate_buffer_lines", "Lines waiting per tenant", labels=["tenant"]
    )
    nbytes = GaugeMetricFamily(
        "tidegate_buffer_tenant_bytes", "Bytes waiting per tenant", labels=["tenant"]
    )
    for tenant, (n, b) in sorted(buffers.depth().items()):
        lines.add_metric([tenant], n)
        nbytes.add_metric([tenant], b)
    yield lines
    yield nbytes


def _stat_families(prefix: str, doc: str, values: Mapping[str, object]) -> Sequence[Metric]:
    """One family per numeric stat: a counter if COUNTS names it, else a gauge. A flag named
    in LEVELS (a bool, or a failure text that is None when all is well) is a 0/1 gauge."""
    out: list[Metric] = []
    for key, value in sorted(values.items()):
        stem = prefix + key
        known = stem in COUNTS or stem in LEVELS
        if isinstance(value, bool) or (known and (value is None or isinstance(value, str))):
            number = float(bool(value))
        elif isinstance(value, int | float):
            number = float(value)
        else:
            continue
        family: Metric
        if stem in COUNTS:
            family = CounterMetricFamily("tidegate_" + stem, f"{doc}: {key}")
        else:
            family = GaugeMetricFamily("tidegate_" + stem, f"{doc}: {key}")
        family.add_metric([], number)
        out.append(family)
    return out
