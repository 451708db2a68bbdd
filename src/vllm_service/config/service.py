"""Service-wide settings: the HTTP server, observability, the response cache, cost prices."""

from __future__ import annotations

import ipaddress
import os
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from vllm_service.accounting.cost import KNOWN_PRICES, HardwareCost, HostedPrice
from vllm_service.config.models import _Strict

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/vllm-service, or ~/.local/share/vllm-service."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vllm-service"


class TlsConfig(_Strict):
    """HTTPS: a certificate and its key; TLS 1.3 at least unless 1.2 is allowed."""

    certfile: Path | None = Field(default=None, description="PEM certificate (chain); unset: HTTP.")
    keyfile: Path | None = Field(default=None, description="PEM private key.")
    min_version: Literal["1.3", "1.2"] = Field(
        default="1.3", description="Oldest TLS version accepted (1.2 for old clients)."
    )

    @model_validator(mode="after")
    def _both(self) -> TlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("give both certfile and keyfile, or neither")
        return self


class ServerConfig(_Strict):
    """HTTP server settings."""

    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve GET /metrics (and only it) on this port, without a key: a "
        "NetworkPolicy filters ports, not paths, so Prometheus gets a port of its own.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty = CORS off."
    )
    max_request_body_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BODY_BYTES, ge=1024, description="Larger bodies get 413."
    )
    max_n: int = Field(default=16, ge=1, le=128, description="Largest 'n' (choices) accepted.")
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers (then 408 and close).",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Longest gap, in seconds, between the bytes of a request body (then close).",
    )
    keep_alive_timeout: int = Field(
        default=75,
        ge=1,
        description="Seconds an idle keep-alive connection stays open. Keep it above the "
        "clients' own idle expiry (httpx, so the openai SDK: 5 s; load balancers: often "
        "60 s): a client reusing a connection as the server closes it gets a connection error.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open connections at most; one more is answered 503 and closed.",
    )
    drain_delay: float = Field(
        default=0.0,
        ge=0,
        description="After SIGTERM, seconds /ready answers 503 while still serving, so a load "
        "balancer stops sending traffic before the server stops accepting.",
    )
    shutdown_grace: float = Field(
        default=30.0, gt=0, description="Seconds in-flight requests get to finish after SIGTERM."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    tls: TlsConfig = Field(default_factory=TlsConfig)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (10.0.0.0/8) of proxies whose X-Forwarded-For is "
        "believed; from anyone else the header is ignored.",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerConfig:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            ipaddress.ip_network(value, strict=False)  # raises ValueError with the reason
        return values


class ObservabilityConfig(_Strict):
    """Metrics, the latency SLI and request logs."""

    latency_window_seconds: float = Field(
        default=300.0, gt=0, description="Rolling window of /performance/latency."
    )
    latency_target_ms: float = Field(
        default=50.0, gt=0, description="End-to-end latency a request should meet."
    )
    ttft_target_ms: float = Field(
        default=50.0, gt=0, description="Time to first token a request should meet."
    )
    slo: float = Field(
        default=0.95,
        gt=0,
        lt=1,
        description="Share of requests that should meet the end-to-end target (error budget).",
    )
    latency_samples_per_model: int = Field(
        default=10_000,
        ge=100,
        description="Most recent requests kept per model for the percentiles (bounds memory).",
    )
    enabled: bool = Field(
        default=True,
        description="Per-request metrics, the latency window, request logs and spans; off only "
        "to measure what they cost (the engine and cache gauges stay on /metrics).",
    )
    log_requests: bool = Field(default=True, description="One JSON log line per request.")
    tracing: bool = Field(
        default=False,
        description="Export OpenTelemetry traces over OTLP, configured by the OTEL_* "
        "environment variables (install the 'tracing' extra).",
    )


class SemanticCacheConfig(_Strict):
    """Semantic lookups: a reworded last message may hit an answer cached for another wording."""

    enabled: bool = Field(
        default=False,
        description="Off by default: a close wording is not always the same question.",
    )
    threshold: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Cosine similarity of the last message's embedding needed for a hit.",
    )
    max_neighbours: int = Field(
        default=1000,
        ge=1,
        description="Most embeddings kept per context (same model, parameters and earlier "
        "messages); the oldest are dropped first.",
    )


class CacheConfig(_Strict):
    """The response cache: answers to repeated requests, served without generating."""

    enabled: bool = Field(default=True, description="Cache reproducible answers.")
    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="memory: this process only; redis: shared by every replica.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="The Redis server (backend redis)."
    )
    redis_timeout: float = Field(
        default=0.25,
        gt=0,
        description="Seconds a Redis call may take; slower counts as Redis being down.",
    )
    redis_retry_interval: float = Field(
        default=1.0,
        gt=0,
        description="After a Redis failure, seconds served uncached before trying Redis again.",
    )
    key_prefix: str = Field(default="vllm-service:cache:", description="Redis key prefix.")
    ttl: float = Field(default=3600.0, gt=0, description="Seconds an answer stays fresh.")
    stale_if_error: float = Field(
        default=0.0,
        ge=0,
        description="Seconds past its TTL an answer may still serve when every deployment of "
        "the model fails (the cache step of the fallback chain); 0 = never.",
    )
    max_entries: int = Field(
        default=10_000, ge=1, description="Answers kept in memory; least recently used go first."
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Bytes of answers kept in memory."
    )
    cache_sampled: bool = Field(
        default=False,
        description="Also cache sampled answers (temperature > 0 without a seed), which a "
        "repeat would not reproduce.",
    )
    single_flight_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds an identical request waits for one already generating before it "
        "generates on its own.",
    )
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)


# The defaults of the cost model live with it (accounting/cost.py), once.
_HOSTED, _HARDWARE = HostedPrice(), HardwareCost()


class HostedPriceConfig(_Strict):
    """A hosted API this service replaces, at its list price from a date on. A name from the
    starting table (accounting/cost.py KNOWN_PRICES) may leave its prices and date out."""

    name: str = Field(default=_HOSTED.name, description="Shown in metrics and reports.")
    effective_from: date | None = Field(
        default=None,
        description="The day this price took effect. A new price is a new entry with the same "
        "name and a later date: the ledger keeps which one each request was costed at.",
    )
    input_per_million: float | None = Field(default=None, ge=0, description="$ per 1M prompt.")
    output_per_million: float | None = Field(
        default=None, ge=0, description="$ per 1M completion tokens."
    )

    @model_validator(mode="after")
    def _from_the_table(self) -> HostedPriceConfig:
        known = KNOWN_PRICES.get(self.name)
        if self.input_per_million is None or self.output_per_million is None:
            if known is None:
                names = ", ".join(KNOWN_PRICES)
                raise ValueError(
                    f"give input_per_million and output_per_million for {self.name!r} "
                    f"(prices known without them: {names})"
                )
            if self.input_per_million is None:
                self.input_per_million = known.input_per_million
            if self.output_per_million is None:
                self.output_per_million = known.output_per_million
        if self.effective_from is None:
            self.effective_from = known.effective_from if known else _HOSTED.effective_from
        return self


class HardwareCostConfig(_Strict):
    """What the machine running this process costs: rented by the hour, or owned."""

    hourly: float = Field(default=_HARDWARE.hourly, ge=0, description="Rent, $ per hour.")
    purchase_price: float = Field(
        default=_HARDWARE.purchase_price, ge=0, description="Owned: purchase price, $."
    )
    amortize_months: float = Field(
        default=_HARDWARE.amortize_months, gt=0, description="Months to spread it over."
    )
    power_watts: float = Field(
        default=_HARDWARE.power_watts, ge=0, description="Power drawn under load."
    )
    kwh_price: float = Field(
        default=_HARDWARE.kwh_price, ge=0, description="Electricity, $ per kWh."
    )
    ops_monthly: float = Field(
        default=_HARDWARE.ops_monthly, ge=0, description="Monitoring and operations, $/month."
    )
    development_monthly: float = Field(
        default=_HARDWARE.development_monthly,
        ge=0,
        description="Development and maintenance time, $/month.",
    )


class CostConfig(_Strict):
    """Prices for the savings metrics and the ledger: the hosted APIs' and this hardware's."""

    hosted: list[HostedPriceConfig] = Field(
        default_factory=lambda: [HostedPriceConfig()],
        min_length=1,
        description="The hosted references, the first one the metrics' (one mapping loads too).",
    )
    hardware: HardwareCostConfig = Field(default_factory=HardwareCostConfig)
    response_cost_info: bool = Field(
        default=True,
        description="Answers carry cost_info (body, the last usage chunk of a stream) and an "
        "x-vllm-service-cost header: tokens, local and hosted-equivalent cost, savings.",
    )

    @field_validator("hosted", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value


class LedgerConfig(_Strict):
    """The cost ledger: one row per answered request, in SQLite (default) or PostgreSQL."""

    enabled: bool = Field(default=True, description="Keep the ledger.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the SQLite file and the journal live (default: "
        "$XDG_DATA_HOME/vllm-service, or ~/.local/share/vllm-service).",
    )
    url: str | None = Field(
        default=None,
        description="A database URL: postgresql+asyncpg://user:pw@host/db for replicas; "
        "unset = sqlite+aiosqlite:///<data_dir>/ledger.db.",
    )
    retention_days: float = Field(default=400, gt=0, description="Rows older than this are purged.")
    hash_users: bool = Field(
        default=False, description="Store a hash of the request's 'user', not the value."
    )
    fsync: bool = Field(
        default=False,
        description="fsync the journal after every row (survives a power cut, not only a crash; "
        "costs a disk flush per request).",
    )
    journal_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=64 * 1024,
        description="Most bytes of rows waiting for the database; past it rows are dropped "
        "and counted (vllm_ledger_dropped_total).",
    )
    batch_rows: int = Field(default=1000, ge=1, description="Rows written per transaction.")
    flush_interval: float = Field(
        default=0.2, gt=0, description="Seconds between moves of the journal into the database."
    )

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    def database_url(self) -> str:
        return self.url or f"sqlite+aiosqlite:///{self.data_dir / 'ledger.db'}"
