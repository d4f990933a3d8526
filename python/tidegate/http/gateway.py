"""The running gateway: the services and the pipeline the routes share, built at start and
closed at stop."""

from __future__ import annotations

from collections.abc import Callable

from tidegate import core, logs
from tidegate.config import Config
from tidegate.metrics import Metrics
from tidegate.pipeline.rejection_log import RejectionLog
from tidegate.pipeline.services import Services, open_services
from tidegate.pipeline.steps import Pipeline, Publisher
from tidegate.refusals import Refusals

OpenPublisher = Callable[[Config, Services], Publisher]
"""NATS mode's publisher, opened at start on the started services (nats/edge.py's
`open_publisher`: it also relays the process's registry changes over NATS)."""


class Gateway:
    """The gateway's lifecycle: `start()` builds the Services and the Pipeline, `stop()` drains
    and closes them.

    What exists before start (config, core, metrics) is here for the routes to bind to; the
    `draining` flag is set on SIGTERM/SIGINT and at stop, and routes refuse new work with 503
    while it is. In NATS mode (`open_publisher` given) the ingest routes publish to JetStream
    instead of appending to the buffers (Shelly's readings keep the buffers and the sink in
    both modes).
    """

    services: Services
    pipeline: Pipeline

    def __init__(self, cfg: Config, open_publisher: OpenPublisher | None = None) -> None:
        self.cfg = cfg
        self.core = core.load(cfg.core)
        self.metrics = Metrics()
        self.draining = False
        self.refusals = Refusals(cfg.auth_cache_max_entries)
        self.shutdown_lost_lines = 0
        self.publisher: Publisher | None = None
        self._open_publisher = open_publisher

    async def start(self) -> None:
        """Open the services (registry, buffers, write-ahead log, sink); in NATS mode the
        publisher, connecting in the background (reconnecting forever)."""
        cfg = self.cfg
        if cfg.mode == "nats" and self._open_publisher is None:
            raise RuntimeError("NATS mode needs a publisher (tidegate serve wires it)")
        services = await open_services(cfg, self.core, self.metrics.on_flush)
        self.services = services
        if self._open_publisher is not None:
            self.publisher = self._open_publisher(cfg, services)
        rejection_log = RejectionLog(cfg.rejection_log_interval_s)
        self.pipeline = Pipeline(
            services, self.metrics, self.refusals, rejection_log, self.publisher
        )
        self.metrics.bind(
            services.buffers, services.sink.stats, self._extra_stats, services.accept.stats
        )
        logs.log(
            "gateway_started",
            mode=cfg.mode,
            core=cfg.core,
            registry=services.registry.backend,
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
        await services.stop()
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
        if self.publisher is not None:
            await self.publisher.close()

    def start_draining(self) -> None:
        """Refuse new work from now on (SIGTERM/SIGINT: at once, before the lifespan stops)."""
        self.draining = True

    def _extra_stats(self) -> dict[str, int]:
        return {
            **self.services.stats(),
            "draining": int(self.draining),
            **(self.publisher.counters() if self.publisher is not None else {}),
        }
