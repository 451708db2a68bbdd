"""Prometheus metrics of the service: requests, tokens, latency, and the engines' own state.

Label sets are bounded: model names come from the configuration, routes from the app's route
table (anything else is "other"), statuses are HTTP codes. No request ids or user text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vllm_service.accounting.collectors import (
    CacheCollector,
    DeploymentCollector,
    LedgerCollector,
    SavingsCollector,
)
from vllm_service.accounting.cost import HardwareCost, HostedPrice
from vllm_service.accounting.ledger import Ledger
from vllm_service.accounting.request_log import RequestRecord
from vllm_service.accounting.stats import CacheStats, DeploymentStats

#: vllm_request_duration_seconds buckets: 5 ms ... 2 s, then +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0)
#: Time to first token and queue time reach seconds under load.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Inter-token latency and time per output token.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The service's metrics in their own registry (one per app, so tests can build many)."""

    def __init__(
        self,
        *,
        latency_target: float,
        cache: Callable[[], CacheStats] | None = None,
        ledger: Ledger | None = None,
        hosted: HostedPrice | None = None,
        references: list[HostedPrice] | None = None,
        hardware: HardwareCost | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.latency_target = latency_target
        self.hosted = hosted or HostedPrice()
        #: Every hosted reference at its current price; the first is ``hosted``.
        self.references = references or [self.hosted]
        #: Hosted-equivalent dollars of what was answered, per reference, since start.
        self.hosted_by_reference = dict.fromkeys((p.name for p in self.references), 0.0)
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
        self._token_metrics(r)
        self._latency_metrics(r)
        self._cost_metrics(r)
        self._engines = DeploymentCollector()
        r.register(self._engines)
        if cache is not None:
            r.register(CacheCollector(cache))
        if ledger is not None:
            r.register(LedgerCollector(ledger))
        r.register(SavingsCollector(self))

    def _token_metrics(self, r: CollectorRegistry) -> None:
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

    def _latency_metrics(self, r: CollectorRegistry) -> None:
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

    def _cost_metrics(self, r: CollectorRegistry) -> None:
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

    def hours(self) -> float:
        """Hours since this process started."""
        return (self._clock() - self._started) / 3600.0

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

    def refresh_engines(self, snapshot: Mapping[str, DeploymentStats]) -> None:
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
            hosted = self.hosted.cost(rec.prompt_tokens, rec.completion_tokens)
            for price in self.references:
                cost = (
                    hosted
                    if price is self.hosted
                    else price.cost(rec.prompt_tokens, rec.completion_tokens)
                )
                self.hosted_by_reference[price.name] += cost
            self.hosted_cost.labels(model).inc(hosted)
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
