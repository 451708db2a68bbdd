"""Metrics read at scrape time: the deployments' engines and breakers, and the response cache.

Each metric is read from an attribute of a typed snapshot (accounting/stats.py,
engine/base.py's SchedulerStats), so renaming a field is a type error, not a metric gone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_service.accounting.ledger import Ledger
from vllm_service.accounting.stats import BREAKER_STATES, CacheStats, DeploymentStats
from vllm_service.engine.base import SchedulerStats

if TYPE_CHECKING:
    from vllm_service.accounting.metrics import Metrics

Read = Callable[[SchedulerStats], int | float]

#: Scheduler counters, exported as vllm_engine_<name>_total.
SCHEDULER_COUNTERS: tuple[tuple[str, str, Read], ...] = (
    (
        "prefix_cache_hit_tokens",
        "Prompt tokens served from the prefix cache.",
        lambda s: s.prefix_cache_hit_tokens,
    ),
    (
        "prefix_cache_host_hit_tokens",
        "Of the prefix-cache hit tokens, those restored from the host-RAM tier.",
        lambda s: s.prefix_cache_host_hit_tokens,
    ),
    (
        "prefix_cache_host_evictions",
        "Entries dropped from the prefix cache's host-RAM tier to stay within its budget.",
        lambda s: s.host_cache_evictions,
    ),
    ("steps", "Engine steps (one llama_decode each).", lambda s: s.steps),
    (
        "step_seq_runs",
        "Runs of consecutive sequence ids in the steps' batches, each its own forward pass "
        "(steps_total when the running sequences sit side by side).",
        lambda s: s.step_seq_runs,
    ),
    ("prompt_tokens", "Prompt tokens of sequences the engine admitted.", lambda s: s.prompt_tokens),
    (
        "preemptions",
        "Sequences preempted (recomputed later) for lack of KV cache.",
        lambda s: s.preemptions,
    ),
    ("submitted", "Sequences the engine accepted into its queue.", lambda s: s.submitted),
    ("completed", "Sequences that ran to a finish reason (stop or length).", lambda s: s.completed),
    ("aborted", "Sequences aborted because their client went away.", lambda s: s.aborted),
    (
        "queue_timeouts",
        "Requests that waited longer than queue_timeout for a slot.",
        lambda s: s.queue_timeouts,
    ),
    ("rejected", "Requests refused because the waiting queue was full.", lambda s: s.rejected),
)
#: Scheduler gauges, by their metric names.
SCHEDULER_GAUGES: tuple[tuple[str, str, Read], ...] = (
    ("vllm_num_requests_running", "Sequences generating now.", lambda s: s.running),
    ("vllm_num_requests_waiting", "Sequences waiting for a slot.", lambda s: s.waiting),
    (
        "vllm_num_waiting_prompt_tokens",
        "Prompt tokens waiting for a slot.",
        lambda s: s.waiting_tokens,
    ),
    ("vllm_kv_cache_cells_used", "KV cache cells holding data.", lambda s: s.kv_cells_used),
    (
        "vllm_kv_cache_cells_cached",
        "KV cells kept only for prefix reuse.",
        lambda s: s.kv_cells_cached,
    ),
    ("vllm_kv_cache_cells_total", "KV cache cells in all.", lambda s: s.kv_cells_total),
    (
        "vllm_prefix_cache_host_bytes",
        "Bytes of KV held in the prefix cache's host-RAM tier.",
        lambda s: s.host_cache_bytes,
    ),
    (
        "vllm_prefix_cache_host_entries",
        "Prefixes held in the prefix cache's host-RAM tier.",
        lambda s: s.host_cache_entries,
    ),
)


class DeploymentCollector(Collector):
    """Reads the deployments' stats as last refreshed by ``Metrics.refresh_engines``."""

    def __init__(self) -> None:
        self.snapshot: Mapping[str, DeploymentStats] = {}

    def collect(self) -> Iterable[Metric]:
        yield from self._routing()
        yield from self._engines()
        yield from self._residency()

    def _residency(self) -> Iterable[Metric]:
        labels = ["deployment"]
        loaded = GaugeMetricFamily(
            "vllm_model_loaded", "1 when a model held here is loaded, else 0.", labels=labels
        )
        memory = GaugeMetricFamily(
            "vllm_model_memory_bytes",
            "Bytes a model held here takes when loaded (its file, plus its KV cache and "
            "prefix-cache host-RAM budget once known).",
            labels=labels,
        )
        loads = CounterMetricFamily(
            "vllm_model_loads",
            "Loads of a model held here, by outcome.",
            labels=[*labels, "outcome"],
        )
        unloads = CounterMetricFamily(
            "vllm_model_unloads",
            "Unloads of a model held here, by cause (lru: to make room; admin).",
            labels=[*labels, "cause"],
        )
        seconds = GaugeMetricFamily(
            "vllm_model_load_seconds", "Seconds the last load of a model took.", labels=labels
        )
        for deployment, stats in self.snapshot.items():
            r = stats.residency
            if r is None:
                continue
            loaded.add_metric([deployment], 1.0 if r.state in ("loaded", "draining") else 0.0)
            memory.add_metric([deployment], float(r.memory_bytes))
            loads.add_metric([deployment, "success"], r.loads)
            loads.add_metric([deployment, "failure"], r.failures)
            for cause in ("lru", "admin"):
                unloads.add_metric([deployment, cause], r.unloads.get(cause, 0))
            if r.load_seconds is not None:
                seconds.add_metric([deployment], r.load_seconds)
        yield from (loaded, memory, loads, unloads, seconds)

    def _routing(self) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "vllm_circuit_breaker_state",
            "Circuit breaker of a deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        opened = CounterMetricFamily(
            "vllm_circuit_breaker_open",
            "Times a deployment's circuit breaker opened.",
            labels=["deployment"],
        )
        attempts = CounterMetricFamily(
            "vllm_upstream_attempts",
            "Attempts sent to a deployment, by outcome (success, failure, overloaded, "
            "client_error, cancelled, rejected by its breaker).",
            labels=["deployment", "outcome"],
        )
        for deployment, stats in self.snapshot.items():
            state.add_metric([deployment], BREAKER_STATES.index(stats.breaker))
            opened.add_metric([deployment], stats.breaker_opened)
            for outcome, count in sorted(stats.attempts.items()):
                attempts.add_metric([deployment, outcome], count)
        yield from (state, opened, attempts)

    def _engines(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("vllm_engine_up", "1 when the engine is ready.", labels=["model"])
        usage = GaugeMetricFamily(
            "vllm_kv_cache_usage_ratio",
            "Share of KV cells used by running sequences (cached prefixes excluded).",
            labels=["model"],
        )
        gauges = [
            (GaugeMetricFamily(name, doc, labels=["model"]), read)
            for name, doc, read in SCHEDULER_GAUGES
        ]
        counters = [
            (CounterMetricFamily(f"vllm_engine_{name}", doc, labels=["model"]), read)
            for name, doc, read in SCHEDULER_COUNTERS
        ]
        for model, stats in self.snapshot.items():
            up.add_metric([model], 1.0 if stats.ready else 0.0)
            scheduler = stats.engine.scheduler
            if scheduler is None:
                continue
            for gauge, read in gauges:
                gauge.add_metric([model], float(read(scheduler)))
            for counter, read in counters:
                counter.add_metric([model], float(read(scheduler)))
            if scheduler.kv_cells_total:
                live = scheduler.kv_cells_used - scheduler.kv_cells_cached
                usage.add_metric([model], live / scheduler.kv_cells_total)
        yield from (up, usage)
        yield from (family for family, _ in gauges)
        yield from (family for family, _ in counters)


class CacheCollector(Collector):
    """Reads the response cache's counters at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self.stats()
        lookups = CounterMetricFamily(
            "vllm_cache_lookups",
            "Response-cache outcomes per sequence: hit, semantic_hit, stale_hit, miss, refresh "
            "(client sent no-cache), bypass (not cacheable, or no-store).",
            labels=["model", "outcome"],
        )
        for (model, outcome), count in sorted(stats.lookups.items()):
            lookups.add_metric([model, outcome], count)
        errors = CounterMetricFamily(
            "vllm_cache_errors",
            "Failed cache-store calls (each served uncached), by operation.",
            labels=["operation"],
        )
        for op, count in sorted(stats.errors.items()):
            errors.add_metric([op], count)
        yield from (lookups, errors)
        yield CounterMetricFamily(
            "vllm_cache_stores", "Answers written to the cache.", value=stats.stores
        )
        yield CounterMetricFamily(
            "vllm_cache_single_flight_waits",
            "Requests that waited for an identical one already generating.",
            value=stats.single_flight_waits,
        )
        yield GaugeMetricFamily(
            "vllm_cache_up",
            "1 when the cache store answers; 0 while it is failing (requests go uncached).",
            value=0.0 if stats.degraded else 1.0,
        )
        store = stats.store
        if store is not None:
            yield GaugeMetricFamily(
                "vllm_cache_entries", "Answers held in memory.", value=store.entries
            )
            yield GaugeMetricFamily(
                "vllm_cache_bytes", "Bytes of answers held in memory.", value=store.bytes
            )
            yield CounterMetricFamily(
                "vllm_cache_evictions",
                "Answers evicted to stay within max_entries / max_bytes.",
                value=store.evictions,
            )


class LedgerCollector(Collector):
    """The ledger's journal and writer, read at scrape time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterable[Metric]:
        ledger = self.ledger
        journal = ledger.journal
        yield CounterMetricFamily(
            "vllm_ledger_rows",
            "Ledger rows committed to the database by this process.",
            value=ledger.committed,
        )
        yield CounterMetricFamily(
            "vllm_ledger_write_errors",
            "Failed ledger writes (each retried; the rows wait in the journal).",
            value=ledger.write_errors,
        )
        yield CounterMetricFamily(
            "vllm_ledger_dropped",
            "Ledger rows dropped because the journal was full. Must stay 0.",
            value=journal.dropped if journal is not None else 0,
        )
        yield GaugeMetricFamily(
            "vllm_ledger_journal_bytes",
            "Bytes of ledger rows waiting in the journal for the database.",
            value=journal.bytes if journal is not None else 0,
        )


class SavingsCollector(Collector):
    """Savings and return on investment per hosted reference, since this process started."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        hours = m.hours()
        hardware = m.hardware.per_hour * hours
        savings = GaugeMetricFamily(
            "vllm_cost_savings_by_reference_usd",
            "Since this process started, per hosted reference: its price for the tokens "
            "answered minus the hardware's (fully loaded) cost over the time.",
            labels=["reference"],
        )
        roi = GaugeMetricFamily(
            "vllm_cost_roi_annual",
            "Per hosted reference: savings at this process's rate, annualized, over the "
            "hardware's purchase price; NaN when not owned (no purchase price) or no time yet.",
            labels=["reference"],
        )
        price = m.hardware.purchase_price
        for ref, hosted in m.hosted_by_reference.items():
            saved = hosted - hardware
            savings.add_metric([ref], saved)
            yearly = saved * 24 * 365 / hours if hours > 0 else math.nan
            roi.add_metric([ref], yearly / price if price > 0 else math.nan)
        yield from (savings, roi)
