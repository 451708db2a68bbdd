"""What the layers above report to accounting: typed snapshots that metrics and /health read.

The manager fills these in (accounting only observes, it never reaches up into the manager);
metrics read their attributes, so renaming one is a type error, not a metric silently gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vllm_service.engine.base import EngineHealth

#: A circuit breaker's states, in the order of the vllm_circuit_breaker_state gauge's values.
BREAKER_STATES = ("closed", "half_open", "open")


@dataclass(frozen=True, slots=True)
class ResidencyStats:
    """Where a deployment that holds its model here stands in memory (manager/residency.py)."""

    #: unloaded, loading, loaded, draining, unloading or failed.
    state: str
    #: Why its last load failed.
    reason: str | None
    preload: bool
    users: int
    waiting: int
    loads: int
    failures: int
    #: Unloads by cause: lru, admin.
    unloads: Mapping[str, int]
    load_seconds: float | None
    unload_seconds: float | None
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class DeploymentStats:
    """One deployment: its engine's health, its circuit breaker and its routing counters."""

    model: str
    engine: EngineHealth
    #: closed, half_open or open (BREAKER_STATES).
    breaker: str
    breaker_opened: int
    in_flight: int
    #: Attempts sent to it by outcome: success, failure, overloaded, client_error, cancelled,
    #: rejected (by its breaker).
    attempts: Mapping[str, int] = field(default_factory=dict)
    #: For an engine that holds its model here; None for an upstream.
    residency: ResidencyStats | None = None

    @property
    def ready(self) -> bool:
        """Can serve: loaded and ready, or loadable on demand. A model loaded at start counts
        as ready once its first load succeeded; a failed load counts against it only then."""
        r = self.residency
        if r is None or r.state == "loaded":
            return self.engine.ready
        if r.preload:
            return r.loads > 0 and r.state != "failed"
        return True

    @property
    def failed(self) -> bool:
        """Failed and not ready (a model loaded on demand whose load failed is neither)."""
        return not self.ready and (
            self.engine.state == "failed"
            or (self.residency is not None and self.residency.state == "failed")
        )


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The response cache's counters."""

    #: (model, outcome) → sequences; outcomes: hit, semantic_hit, stale_hit, miss, refresh,
    #: bypass.
    lookups: Mapping[tuple[str, str], int]
    #: Failed store calls by operation (get, put, delete, ...).
    errors: Mapping[str, int]
    stores: int
    single_flight_waits: int
    #: The store is failing: requests go uncached until it answers again.
    degraded: bool
    #: What the store holds, where this process can know it (memory; not a shared Redis).
    store: StoreStats | None = None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What a cache store held by this process holds, and what it dropped."""

    entries: int
    bytes: int
    evictions: int
    expirations: int
