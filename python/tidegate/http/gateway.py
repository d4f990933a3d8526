"""The running gateway: the services the routes share, built at start and closed at stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidegate import core, logs
from tidegate.config import Config
from tidegate.durable import Accept
from tidegate.http.admission import Admitter
from tidegate.latest import LatestWriter
from tidegate.metrics import Metrics
from tidegate.refusals import Refusals
from tidegate.sink.scheduler import Sink
from tidegate.store import open_registry
from tidegate.store.registry import Registry
from tidegate.tenant_keys import TenantKeys

if TYPE_CHECKING:
    from tidegate._core import FieldTypes, Latest, TenantBuffers
    from tidegate.nats.edge import Publisher


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes share once the gateway has started."""

    registry: Registry
    buffers: TenantBuffers
    accept: Accept
    field_types: FieldTypes
    sink: Sink
    admitter: Admitter
    latest: Latest
    latest_writer: LatestWriter
    tenant_keys: TenantKeys
    # NATS mode: the ingest routes publish to JetStream instead of appending to the buffers
    # (Shelly's readings keep the buffers and the sink in both modes).
    publisher: Publisher | None = None


class Gateway:
    """The gateway's lifecycle: `start()` builds the Services, `stop()` drains and closes them.

    What exists before start (config, core, metrics) is here for the routes to bind to; the
    `draining` flag is set on SIGTERM/SIGINT and at stop, and routes refuse new work with 503
    while it is.
    """

    services: Services

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.core = core.load(cfg.core)
        self.metrics = Metrics()
        self.draining = False
        self.refusals = Refusals(cfg.auth_cache_max_entries)
        self.shutdown_lost_lines = 0

    async def start(self) -> None:
        """Open and migrate the registry, create the buffers, open the write-ahead log (its
        undelivered records back into the buffers before anything is served), start the sink."""
        cfg = self.cfg
        registry = await open_registry(cfg)
        await registry.migrate()
        buffers = self.core.TenantBuffers(
            cfg.influx_batch_size,
            cfg.buffer_flush_bytes,
            cfg.buffer_max_bytes,
            cfg.buffer_tenant_max_bytes,
        )
        accept = Accept(cfg, buffers)
        await accept.start()
        field_types = self.core.FieldTypes(cfg.field_types_max_per_tenant)
        sink = Sink(
            cfg,
            buffers,
            on_flush=self.metrics.on_flush,
            spill=not accept.durable,
            field_types=field_types,
        )
        await sink.start()
        latest = self.core.Latest()
        latest_writer = LatestWriter(
            latest, registry.device_state, cfg.influx_flush_interval_ms / 1000
        )
        latest_writer.start()
        tenant_keys = TenantKeys(
            registry.tenant_for_api_key,
            cfg.auth_cache_ttl_s,
            cfg.auth_cache_negative_ttl_s,
            cfg.auth_cache_max_entries,
        )
        self.services = Services(
            registry,
            buffers,
            accept,
            field_types,
            sink,
            Admitter.from_config(self.core, cfg, registry),
            latest,
            latest_writer,
            tenant_keys,
            self._publisher(),
        )
        self.metrics.bind(buffers, sink.stats, self._extra_stats, accept.stats)
        logs.log(
            "gateway_started",
            mode=cfg.mode,
            core=cfg.core,
            registry=registry.backend,
            sink=cfg.influxdb_url or str(cfg.data_dir / "lp"),
            durability=cfg.durability,
        )

    async def stop(self) -> None:
        """Refuse new work, flush every buffer, close the log and the registry. The sink keeps
        to `shutdown_deadline_s` itself; what it could not write stays in the write-ahead log
        for the next start, or (memory mode) is spilled to files that `tidegate replay` sends
        later; only lines it could not even spill count as lost."""
        self.draining = True
        services = self.services
        await services.sink.stop()
        await services.latest_writer.stop()
        await services.accept.close()
        sink_stats = services.sink.stats()
        self.shutdown_lost_lines = sink_stats["lost"]
        logs.log(
            "gateway_stopped",
            level="error" if self.shutdown_lost_lines else "info",
            spilled_lines=sink_stats["spilled"],
            left_in_wal_lines=sink_stats["logged"],
            lost_lines=self.shutdown_lost_lines,
        )
        await services.registry.close()
        if services.publisher is not None:
            await services.publisher.link.close()

    def start_draining(self) -> None:
        """Refuse new work from now on (SIGTERM/SIGINT: at once, before the lifespan stops)."""
        self.draining = True

    def _publisher(self) -> Publisher | None:
        """NATS mode's publisher, connecting in the background (reconnecting forever)."""
        if self.cfg.mode != "nats":
            return None
        # Imported here: nats-py is needed in NATS mode only.
        from tidegate.nats.edge import Publisher
        from tidegate.nats.stream import Link

        link = Link(self.cfg.nats, "edge")
        link.start()
        return Publisher(link, self.cfg.nats)

    def _extra_stats(self) -> dict[str, int]:
        s = self.services
        return {
            "registry_queries": s.registry.queries,
            **s.admitter.stats(),
            "field_types": len(s.field_types),
            "field_types_untracked": s.field_types.untracked,
            "telemetry_latest_devices": len(s.latest),
            "device_state_upserts": s.latest_writer.upserts,
            "device_state_failures": s.latest_writer.failures,
            "tenant_key_cache_hits": s.tenant_keys.hits,
            "tenant_key_cache_misses": s.tenant_keys.misses,
            "draining": int(self.draining),
            **(s.publisher.counters() if s.publisher is not None else {}),
        }
