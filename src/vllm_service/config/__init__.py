"""Settings: one YAML file plus ``VLLM_SERVICE_*`` environment overrides.

Precedence, highest first: environment variables (``VLLM_SERVICE_SERVER__PORT=9000``;
nested keys joined by ``__``, lists as JSON), then the YAML file, then the defaults below.
Every key is documented in ``examples/config.yaml``. A model's ``options`` are those of its
engine kind (engine/registry.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vllm_service.config.auth import AuditConfig, AuthConfig, JwtConfig, StaticKeyConfig
from vllm_service.config.embeddings import EmbeddingsConfig
from vllm_service.config.models import (
    DEFAULT_MODEL_NAME,
    BreakerConfig,
    LoadingConfig,
    ModelCacheConfig,
    ModelConfig,
    RetryConfig,
)
from vllm_service.config.quality import AbTestConfig, QualityConfig
from vllm_service.config.service import (
    DEFAULT_HOST,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    DEFAULT_PORT,
    CacheConfig,
    CostConfig,
    HardwareCostConfig,
    HostedPriceConfig,
    LedgerConfig,
    ObservabilityConfig,
    SemanticCacheConfig,
    ServerConfig,
)
from vllm_service.engine.registry import ENGINE_KINDS, kind_named

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_PORT",
    "AbTestConfig",
    "AuditConfig",
    "AuthConfig",
    "BreakerConfig",
    "CacheConfig",
    "ConfigError",
    "CostConfig",
    "EmbeddingsConfig",
    "HardwareCostConfig",
    "HostedPriceConfig",
    "JwtConfig",
    "LedgerConfig",
    "LoadingConfig",
    "ModelCacheConfig",
    "ModelConfig",
    "ObservabilityConfig",
    "QualityConfig",
    "RetryConfig",
    "SemanticCacheConfig",
    "ServerConfig",
    "Settings",
    "StaticKeyConfig",
    "load_settings",
]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key path and the reason."""


def _default_models() -> list[ModelConfig]:
    return [ModelConfig(name=DEFAULT_MODEL_NAME)]


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
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    ab_tests: list[AbTestConfig] = Field(
        default_factory=list, description="Public model names split between two models."
    )
    models: list[ModelConfig] = Field(default_factory=_default_models, min_length=1)
    loading: LoadingConfig = Field(default_factory=LoadingConfig)

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

    @model_validator(mode="after")
    def _quality_names(self) -> Settings:
        names = {name for m in self.models for name in m.all_names}
        shadow = self.quality.shadow
        if shadow.enabled and shadow.reference_model is None:
            raise ValueError("quality.shadow.reference_model: name the reference model")
        wanted = [*shadow.models] + ([shadow.reference_model] if shadow.reference_model else [])
        for name in wanted:
            if name not in names:
                raise ValueError(f"quality.shadow: {name!r} is not a configured model")
        seen: set[str] = set()
        for test in self.ab_tests:
            if test.name in names or test.name in seen:
                raise ValueError(f"ab_tests: {test.name!r} is already a model or a test name")
            seen.add(test.name)
            models = [arm.model for arm in test.arms]
            if len(set(models)) != len(models) or not set(models) <= names:
                raise ValueError(f"ab_tests.{test.name}: arms must be two different models")
        return self

    @model_validator(mode="after")
    def _loading_names(self) -> Settings:
        canonical = {name: m.name for m in self.models for name in m.all_names}
        preload = self.loading.preload
        for name in preload or []:
            if name not in canonical:
                raise ValueError(f"loading.preload: {name!r} is not a configured model")
        limit = self.loading.max_loaded_models
        if preload is not None and limit is not None:
            wanted = {canonical[name] for name in preload}
            resident = [
                m for m in self.models if m.name in wanted and kind_named(m.engine).resident
            ]
            if len(resident) > limit:
                raise ValueError(
                    f"loading.preload: {len(resident)} model deployments to load at start, more "
                    f"than loading.max_loaded_models ({limit})"
                )
        return self

    def preloaded(self) -> set[str]:
        """The models (names) loaded at start (loading.preload, or its default)."""
        canonical = {name: m.name for m in self.models for name in m.all_names}
        if self.loading.preload is not None:
            return {canonical[name] for name in self.loading.preload}
        names = list(dict.fromkeys(m.name for m in self.models))
        limit = self.loading.max_loaded_models
        if limit is None:
            return set(names)
        chosen: set[str] = set()
        count = 0
        for name in names:
            deployments = [m for m in self.models if m.name == name]
            resident = sum(kind_named(m.engine).resident for m in deployments)
            if count + resident <= limit:
                chosen.add(name)
                count += resident
        return chosen

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


_KIND_TAGS = {kind.name for kind in ENGINE_KINDS}


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors():
        # A model's options are a tagged union: the tag is not part of the user's key path.
        loc = [
            part
            for i, part in enumerate(item["loc"])
            if not (i and item["loc"][i - 1] == "options" and part in _KIND_TAGS)
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
