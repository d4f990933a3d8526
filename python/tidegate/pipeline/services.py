"""What the pipeline's steps work on, built once per process at start: the same for the
gateway (http/) and the NATS worker (nats/)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidegate.config import Config
from tidegate.core import Core
from tidegate.durable import Accept
from tidegate.latest import LatestWriter
from tidegate.pipeline.admission import Admitter
from tidegate.pipeline.field_claims import FieldClaims
from tidegate.pipeline.peers import Peers
from tidegate.pipeline.sites import DeviceSites
from tidegate.sink.scheduler import Sink
from tidegate.sink.target import FlushHook
from tidegate.store import open_registry
from tidegate.store.changes import Change, Changed
from tidegate.store.registry import Registry
from tidegate.tenant_keys import TenantKeys

if TYPE_CHECKING:
    from tidegate._core import FieldTypes, Latest, TenantBuffers


@dataclass(frozen=True, slots=True)
class Services:
    """A started process's registry, buffers, sink and the per-message state."""

    registry: Registry
    buffers: TenantBuffers
    accept: Accept
    field_types: FieldTypes
    sink: Sink
    admitter: Admitter
    latest: Latest
    latest_writer: LatestWriter
    tenant_keys: TenantKeys
    peers: Peers
    field_claims: FieldClaims
    sites: DeviceSites
    hear: Changed
    """What this process does with a change heard (the registry's feed, NATS's control
    subject): its caches drop the entry, or learn the field's type."""
    relays: list[Changed]
    """Who else is told of the changes this process makes (NATS mode: the control subject)."""

    def changed(self, change: Change) -> None:
        """A change this process made (the tenant API's revoke or rotate): its own caches take
        it now, and each relay passes it on."""
        self.hear(change)
        for relay in self.relays:
            relay(change)

    def stats(self) -> dict[str, int]:
        """The shared part of /stats: registry, auth cache, field types, telemetry_latest."""
        return {
            "registry_queries": self.registry.queries,
            **self.admitter.stats(),
            "field_types": len(self.field_types),
            "field_types_untracked": self.field_types.untracked,
            "field_type_claims": self.field_claims.claims,
            "field_type_claims_failed": self.field_claims.claims_failed,
            "telemetry_latest_devices": len(self.latest),
            "device_state_upserts": self.latest_writer.upserts,
            "device_state_failures": self.latest_writer.failures,
            "tenant_key_cache_hits": self.tenant_keys.hits,
            "tenant_key_cache_misses": self.tenant_keys.misses,
            "tenant_key_budget_refusals": self.tenant_keys.budget_refusals,
            "rate_limit_processes": self.peers.count,
        }

    async def stop(self) -> None:
        """Flush and stop the sink, write telemetry_latest, close the log (not the registry:
        the caller reads the sink's figures and closes it after)."""
        await self.peers.stop()
        await self.sink.stop()
        await self.latest_writer.stop()
        await self.accept.close()


async def open_services(
    cfg: Config, core: Core, on_flush: FlushHook, *, upstream_keeps_lines: bool = False
) -> Services:
    """Open and migrate the registry, create the buffers, open the write-ahead log (its
    undelivered records back into the buffers before anything is served), start the sink and
    the telemetry_latest writer. `upstream_keeps_lines` (the NATS worker: JetStream keeps a
    message until it is acked): no log and no spill files, whatever is configured."""
    registry = await open_registry(cfg)
    await registry.migrate()
    buffers = core.TenantBuffers(
        cfg.influx_batch_size,
        cfg.buffer_flush_bytes,
        cfg.buffer_max_bytes,
        cfg.buffer_tenant_max_bytes,
    )
    accept = Accept(cfg, buffers, logged=not upstream_keeps_lines)
    await accept.start()
    field_types = core.FieldTypes(cfg.field_types_max_per_tenant)
    relays: list[Changed] = []
    field_claims = FieldClaims(field_types, registry, relays)
    await field_claims.load()
    sink = Sink(
        cfg,
        buffers,
        on_flush=on_flush,
        spill=not (accept.durable or upstream_keeps_lines),
        field_types=field_claims,
    )
    await sink.start()
    latest = core.Latest()
    latest_writer = LatestWriter(latest, registry.device_state, cfg.influx_flush_interval_ms / 1000)
    latest_writer.start()
    tenant_keys = TenantKeys(
        registry.tenant_for_api_key,
        cfg.auth_cache_ttl_s,
        cfg.auth_cache_negative_ttl_s,
        cfg.auth_cache_max_entries,
        cfg.auth_lookups_per_s,
        registry.has_tenants,
    )
    admitter = Admitter.from_config(core, cfg, registry)
    sites = DeviceSites(registry, cfg.auth_cache_ttl_s, cfg.auth_cache_max_entries)
    # Edges share HTTP traffic, workers the stream's: each role divides the limits apart.
    peers = Peers(registry, admitter, "worker" if upstream_keeps_lines else "gateway")
    hear = functools.partial(_hear, peers.admitters, tenant_keys, sites, field_claims)
    await registry.watch(hear)
    peers.start()
    return Services(
        registry,
        buffers,
        accept,
        field_types,
        sink,
        admitter,
        latest,
        latest_writer,
        tenant_keys,
        peers,
        field_claims,
        sites,
        hear,
        relays,
    )


def _hear(
    admitters: list[Admitter],
    tenant_keys: TenantKeys,
    sites: DeviceSites,
    field_claims: FieldClaims,
    change: Change,
) -> None:
    """What the registry's change feed says changed leaves this process's caches (or, for a
    field's type, is learned)."""
    tenant, device = change.tenant, change.device
    if tenant is None:
        for admitter in admitters:
            admitter.invalidate_all()
        tenant_keys.invalidate_all()
        sites.forget_all()
        field_claims.reload()
    elif change.field_type is not None:
        field_claims.heard(tenant, *change.field_type)
    elif device is not None:
        for admitter in admitters:
            admitter.invalidate(tenant, device)
        sites.forget(tenant, device)
    else:
        tenant_keys.forget_tenant(tenant)
