"""The running gateway: the services the routes share, built at start and closed at stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidegate import core, logs
from tidegate.auth import Authenticator
from tidegate.config import Config
from tidegate.metrics import Metrics
from tidegate.ratelimit import RateLimiter, retry_after_header
from tidegate.sink.scheduler import Sink
from tidegate.store import open_registry
from tidegate.store.registry import Registry

if TYPE_CHECKING:
    from tidegate._core import FieldTypes, TenantBuffers


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes share once the gateway has started."""

    registry: Registry
    buffers: TenantBuffers
    field_types: FieldTypes
    sink: Sink
    auth: Authenticator


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
        self.shutdown_lost_lines = 0
        # BUFFER_FULL clears when the sink frees space; a flush interval is the soonest that is.
        self.buffer_retry_after = retry_after_header(cfg.influx_flush_interval_ms / 1000)

    async def start(self) -> None:
        """Open and migrate the registry, create the buffers, start the sink."""
        cfg = self.cfg
        registry = await open_registry(cfg)
        await registry.migrate()
        buffers = self.core.TenantBuffers(
            cfg.influx_batch_size, cfg.buffer_flush_bytes, cfg.buffer_max_bytes
        )
        field_types = self.core.FieldTypes(cfg.field_types_max_per_tenant)
        sink = Sink(cfg, buffers, on_flush=self.metrics.on_flush, field_types=field_types)
        await sink.start()
        auth = Authenticator(
            registry,
            RateLimiter(cfg.default_rps, cfg.default_burst, cfg.auth_cache_max_entries),
            cfg.auth_cache_ttl_s,
            cfg.auth_cache_negative_ttl_s,
            cfg.auth_cache_max_entries,
        )
        self.services = Services(registry, buffers, field_types, sink, auth)
        self.metrics.bind(buffers, sink.stats, self._extra_stats)
        logs.log(
            "gateway_started",
            core=cfg.core,
            registry=registry.backend,
            sink=cfg.influxdb_url or str(cfg.data_dir / "lp"),
        )

    async def stop(self) -> None:
        """Refuse new work, flush every buffer, close the registry. The sink keeps to
        `shutdown_deadline_s` itself and spills what it could not write to files that
        `tidegate replay` sends later; only lines it could not even spill count as lost."""
        self.draining = True
        services = self.services
        await services.sink.stop()
        sink_stats = services.sink.stats()
        self.shutdown_lost_lines = sink_stats["lost"]
        logs.log(
            "gateway_stopped",
            level="error" if self.shutdown_lost_lines else "info",
            spilled_lines=sink_stats["spilled"],
            lost_lines=self.shutdown_lost_lines,
        )
        await services.registry.close()

    def _extra_stats(self) -> dict[str, int]:
        s = self.services
        return {
            "registry_queries": s.registry.queries,
            "auth_cache_entries": len(s.auth),
            "auth_cache_hits": s.auth.hits,
            "auth_cache_misses": s.auth.misses,
            "rate_limit_buckets": len(s.auth.limiter),
            "field_types": len(s.field_types),
            "field_types_untracked": s.field_types.untracked,
            "draining": int(self.draining),
        }
