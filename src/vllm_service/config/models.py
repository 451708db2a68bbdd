"""A served model's configuration: its names, engine, deployments' breaker and retries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from vllm_service.engine.options import EngineOptions, SamplingDefaultsConfig
from vllm_service.engine.registry import (
    DEFAULT_KIND,
    ENGINE_KINDS,
    kind_named,
    kind_of_options,
)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


if TYPE_CHECKING:
    AnyEngineOptions = EngineOptions
else:
    # A tagged union of every registered kind's options, told apart by kind_of_options.
    AnyEngineOptions = Annotated[
        Union[tuple(Annotated[kind.options, Tag(kind.name)] for kind in ENGINE_KINDS)],  # noqa: UP007
        Discriminator(lambda value: kind_of_options(value).name),
    ]


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


class ModelConfig(_Strict):
    """One served model: its public name, aliases and engine."""

    name: str = Field(min_length=1, description="Name clients send as 'model'.")
    aliases: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Other names for this model, e.g. gpt-3.5-turbo."
    )
    engine: str = Field(
        default=DEFAULT_KIND.name,
        description="The engine kind (engine/registry.py); unset = told by the options.",
    )
    options: AnyEngineOptions = Field(default_factory=DEFAULT_KIND.options)
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

    @model_validator(mode="before")
    @classmethod
    def _engine_from_options(cls, data: Any) -> Any:
        # Files without `engine:` name the kind by their options (an upstream's have base_url).
        if isinstance(data, dict) and data.get("engine") is None:
            data = {**data, "engine": kind_of_options(data.get("options") or {}).name}
        return data

    @field_validator("engine")
    @classmethod
    def _engine_registered(cls, engine: str) -> str:
        return kind_named(engine).name

    @model_validator(mode="after")
    def _options_match_engine(self) -> ModelConfig:
        kind = kind_named(self.engine)
        if not isinstance(self.options, kind.options):
            other = kind_of_options(self.options).name
            raise ValueError(
                f"engine {kind.name!r} needs {kind.needs}; these options are for {other!r}"
            )
        return self

    @property
    def all_names(self) -> list[str]:
        return [self.name, *self.aliases]


class LoadingConfig(_Strict):
    """Which models are in memory: those with an engine of their own here (the embedded
    llama.cpp engine, a managed process). Upstreams are not counted."""

    preload: list[str] | None = Field(
        default=None,
        description="Models (names) loaded at start; the others load on their first request. "
        "Unset: every model, or the first max_loaded_models of them when that is set.",
    )
    max_loaded_models: int | None = Field(
        default=None,
        ge=1,
        description="Models loaded at once at most; loading another unloads the least "
        "recently used idle one (a busy one finishes its requests first). Unset: no limit.",
    )
    memory_budget: ByteSize | None = Field(
        default=None,
        description="Bytes the loaded models may hold together (e.g. 8GiB): a model's file "
        "plus its KV cache. A model larger than this alone is refused at start. Unset: no limit.",
    )
    retry_failed_after: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a model whose load failed answers 503 with the reason before a "
        "request tries to load it again (an admin load tries at once).",
    )
