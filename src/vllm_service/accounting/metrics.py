"""Prometheus metrics of the service: requests, tokens, latency, and the engines' own state.

Label sets are bounded: model names come from the configuration, routes from the app's route
table (anything else is "other"), statuses are HTTP codes. No request ids or user text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_service.accounting.cost import HardwareCost, HostedPrice
from vllm_service.accounting.request_log import RequestRecord
from vllm_service.engine.base import EngineHealth
from vllm_service.manager.cache import ResponseCache
from vllm_service.manager.manager import BREAKER_STATE_VALUE

#: vllm_request_duration_seconds buckets: 5 ms ... 2 s, then +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0)
#: Time to first token and queue time reach seconds under load.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Inter-token latency and time per output token.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)

#: Engine stats (from /health's detail) exported as counters and gauges.
_ENGINE_COUNTERS = {
    "prefix_cache_hit_tokens": "Prompt tokens served from the prefix cache.",
    "prompt_tokens": "Prompt tokens of sequences the engine admitted.",
    "preemptions": "Sequences preempted (recomputed later) for lack of KV cache.",
    "submitted": "Sequences the engine accepted into its queue.",
    "completed": "Sequences that ran to a finish reason (stop or length).",
    "aborted": "Sequences aborted because their client went away.",
    "queue_timeouts": "Requests that waited longer than queue_timeout for a slot.",
    "rejected": "Requests refused because the waiting queue was full.",
}
_ENGINE_GAUGES = {
    "running": ("vllm_num_requests_running", "Sequences generating now."),
    "waiting": ("vllm_num_requests_waiting", "Sequences waiting for a slot."),
    "waiting_tokens": ("vllm_num_waiting_prompt_tokens", "Prompt tokens waiting for a slot."),
    "kv_cells_used": ("vllm_kv_cache_cells_used", "KV cache cells holding data."),
    "kv_cells_cached": ("vllm_kv_cache_cells_cached", "KV cells kept only for prefix reuse."),
    "kv_cells_total": ("vllm_kv_cache_cells_total", "KV cache cells in all."),
}


class _EngineCollector(Collector):
    """Reads the engines' stats as last refreshed by ``Metrics.refresh_engines``."""

    def __init__(self) -> None:
        self.snapshot: Mapping[str, EngineHealth] = {}

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("vllm_engine_up", "1 when the engine is ready.", labels=["model"])
        usage = GaugeMetricFamily(
            "vllm_kv_cache_usage_ratio",
            "Share of KV cells used by running sequences (cached prefixes excluded).",
            labels=["model"],
        )
        gauges = {
            key: GaugeMetricFamily(name, doc, labels=["model"])
            for key, (name, doc) in _ENGINE_GAUGES.items()
        }
        counters = {
            key: CounterMetricFamily(f"vllm_engine_{key}", doc, labels=["model"])
            for key, doc in _ENGINE_COUNTERS.items()
        }
        for model, health in self.snapshot.items():
            up.add_metric([model], 1.0 if health.ready else 0.0)
            detail = health.detail
            for key, gauge in gauges.items():
                if isinstance(detail.get(key), int | float):
                    gauge.add_metric([model], float(detail[key]))
            for key, counter in counters.items():
                if isinstance(detail.get(key), int | float):
                    counter.add_metric([model], float(detail[key]))
            total, used, cached = (
                detail.get(k) for k in ("kv_cells_total", "kv_cells_used", "kv_cells_cached")
            )
            if isinstance(total, int) and total and isinstance(used, int):
                live = used - (cached if isinstance(cached, int) else 0)
                usage.add_metric([model], live / total)
        breaker_state = GaugeMetricFamily(
            "vllm_circuit_breaker_state",
            "Circuit breaker of a deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        breaker_opened = CounterMetricFamily(
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
        for deployment, health in self.snapshot.items():
            detail = health.detail
            state = detail.get("breaker")
            if isinstance(state, str) and state in BREAKER_STATE_VALUE:
                breaker_state.add_metric([deployment], BREAKER_STATE_VALUE[state])
            opened = detail.get("breaker_opened")
            if isinstance(opened, int):
                breaker_opened.add_metric([deployment], opened)
            for key, count in detail.items():
                if key.startswith("attempts_") and isinstance(count, int):
                    attempts.add_metric([deployment, key.removeprefix("attempts_")], count)
        yield breaker_state
        yield breaker_opened
        yield attempts
        yield up
        yield usage
        yield from gauges.values()
        yield from counters.values()


class _CacheCollector(Collector):
    """Reads the response cache's counters at scrape time."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Metric]:
        cache = self.cache
        lookups = CounterMetricFamily(
            "vllm_cache_lookups",
            "Response-cache outcomes per sequence: hit, semantic_hit, stale_hit, miss, refresh "
            "(client sent no-cache), bypass (not cacheable, or no-store).",
            labels=["model", "outcome"],
        )
        for (model, outcome), count in sorted(cache.lookups.items()):
            lookups.add_metric([model, outcome], count)
        yield lookups
        errors = CounterMetricFamily(
            "vllm_cache_errors",
            "Failed cache-store calls (each served uncached), by operation.",
            labels=["operation"],
        )
        for op, count in sorted(cache.errors.items()):
            errors.add_metric([op], count)
        yield errors
        yield CounterMetricFamily(
            "vllm_cache_stores", "Answers written to the cache.", value=cache.stores
        )
        yield CounterMetricFamily(
            "vllm_cache_single_flight_waits",
            "Requests that waited for an identical one already generating.",
            value=cache.single_flight_waits,
        )
        yield GaugeMetricFamily(
            "vllm_cache_up",
            "1 when the cache store answers; 0 while it is failing (requests go uncached).",
            value=0.0 if cache.degraded else 1.0,
        )
        stats = cache.store.stats()
        if "entries" in stats:
            yield GaugeMetricFamily(
                "vllm_cache_entries", "Answers held in memory.", value=stats["entries"]
            )
            yield GaugeMetricFamily(
                "vllm_cache_bytes", "Bytes of answers held in memory.", value=stats["bytes"]
            )
            yield CounterMetricFamily(
                "vllm_cache_evictions",
                "Answers evicted to stay within max_entries / max_bytes.",
                value=stats["evictions"],
            )


class Metrics:
    """The service's metrics in their own registry (one per app, so tests can build many)."""

    def __init__(
        self,
        *,
        latency_target: float,
        cache: ResponseCache | None = None,
        hosted: HostedPrice | None = None,
        hardware: HardwareCost | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.latency_target = latency_target
        self.hosted = hosted or HostedPrice()
        self.hardware = hardware or HardwareCost()
        self._started = clock()
        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        labels = ["model", "route", "status"]
        self.request_duration = Histogram(
            "vllm_request_duration_seconds",
            "End-to-end request latency, from arrival to the response's last byte.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.requests = Counter("vllm_requests", "Requests answered.", labels, registry=r)
        self.latency_target_met = Counter(
            "vllm_latency_target_met",
            "Successful requests that met the end-to-end latency target.",
            ["model"],
            registry=r,
        )
        self.tokens_generated = Counter(
            "vllm_tokens_generated", "Completion tokens generated.", ["model"], registry=r
        )
        self.tokens_from_cache = Counter(
            "vllm_cache_completion_tokens",
            "Completion tokens answered from the response cache instead of generated.",
            ["model"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllm_prompt_tokens", "Prompt tokens received.", ["model"], registry=r
        )
        self.cached_prompt_tokens = Counter(
            "vllm_prompt_tokens_cached",
            "Prompt tokens whose KV came from the prefix cache.",
            ["model"],
            registry=r,
        )
        self.device_requests = Counter(
            "vllm_device_requests",
            "Generation requests by the device that served them (cpu, cuda, mps).",
            ["device"],
            registry=r,
        )
        self.ttft = Histogram(
            "vllm_time_to_first_token_seconds",
            "From arrival to the first output token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm_inter_token_latency_seconds",
            "Gap between consecutive output tokens, as the engine produced them.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vllm_time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vllm_request_queue_time_seconds",
            "Time a request waited for a sequence slot.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "vllm_requests_in_flight", "Requests being served now.", ["route"], registry=r
        )
        self.hosted_cost = Counter(
            "vllm_hosted_equivalent_cost_usd",
            "What the hosted API would have charged for the tokens answered (list price).",
            ["model"],
            registry=r,
        )
        Gauge(
            "vllm_hardware_cost_usd_per_hour",
            "What the hardware of this process costs per hour (cost.hardware).",
            registry=r,
        ).set(self.hardware.per_hour)
        Gauge(
            "vllm_cost_savings_usd",
            "Since this process started: the hosted API's price for the tokens answered, "
            "minus the hardware's cost over the time (negative while traffic is too low).",
            registry=r,
        ).set_function(self.savings)
        self._engines = _EngineCollector()
        r.register(self._engines)
        if cache is not None:
            r.register(_CacheCollector(cache))

    def savings(self) -> float:
        """Hosted-equivalent cost of what was answered, minus the hardware's cost so far."""
        hosted = sum(
            sample.value
            for metric in self.hosted_cost.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        hours = (self._clock() - self._started) / 3600.0
        return hosted - self.hardware.per_hour * hours

    def refresh_engines(self, snapshot: Mapping[str, EngineHealth]) -> None:
        self._engines.snapshot = snapshot

    def observe(self, rec: RequestRecord) -> None:
        model = rec.model or "none"
        status = str(rec.status)
        latency = rec.latency if rec.latency is not None else 0.0
        self.request_duration.labels(model, rec.route, status).observe(latency)
        self.requests.labels(model, rec.route, status).inc()
        if rec.model is None:
            return
        if rec.status < 400 and latency <= self.latency_target:
            self.latency_target_met.labels(model).inc()
        if rec.device is not None and rec.cache != "hit":
            self.device_requests.labels(rec.device).inc()
        if rec.status < 400:
            self.hosted_cost.labels(model).inc(
                self.hosted.cost(rec.prompt_tokens, rec.completion_tokens)
            )
        self.prompt_tokens.labels(model).inc(rec.prompt_tokens)
        self.cached_prompt_tokens.labels(model).inc(rec.cached_tokens)
        if rec.cache == "hit":
            self.tokens_from_cache.labels(model).inc(rec.completion_tokens)
        else:
            self.tokens_generated.labels(model).inc(rec.completion_tokens)
        if rec.ttft is not None:
            self.ttft.labels(model).observe(rec.ttft)
        if rec.queue_time is not None:
            self.queue_time.labels(model).observe(rec.queue_time)
        itl = self.itl.labels(model)
        for gap in rec.inter_token_times:
            itl.observe(gap)
        tpot = rec.time_per_output_token
        if tpot is not None:
            self.tpot.labels(model).observe(tpot)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
