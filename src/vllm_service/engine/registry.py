"""Engine kinds: the one place that lists what a model entry's ``engine:`` may name.

A kind is its options model (what config.py validates a model entry's ``options`` against),
how a model entry without ``engine:`` is recognised as this kind, and how its engine is built.
Adding a kind is its options model and its engine module, plus one line in ``ENGINE_KINDS``.
Engines are imported when built, so loading a config never imports llama.cpp or aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vllm_service.engine.base import Engine
from vllm_service.engine.llamacpp.options import LlamaCppOptions
from vllm_service.engine.options import (
    EngineOptions,
    ProcessOptions,
    SamplingDefaultsConfig,
    UpstreamOptions,
)

Factory = Callable[[str, EngineOptions, SamplingDefaultsConfig], Engine]


@dataclass(frozen=True, slots=True)
class EngineKind:
    """One kind of engine a model may be served by."""

    name: str
    options: type[EngineOptions]
    #: An options key only this kind has: an entry without ``engine:`` holding it is this
    #: kind. None for the default kind (the embedded engine), chosen when no marker is present.
    marker: str | None
    #: What this kind's options must hold, for the error when ``engine:`` and options disagree.
    needs: str
    build: Factory
    #: Holds its model here (in this process, or a process it runs): loaded and unloaded on
    #: demand within loading.max_loaded_models and loading.memory_budget. An upstream is not.
    resident: bool


def _llamacpp(name: str, options: EngineOptions, defaults: SamplingDefaultsConfig) -> Engine:
    from vllm_service.engine.llamacpp.engine import LlamaCppEngine

    assert isinstance(options, LlamaCppOptions)
    return LlamaCppEngine(name, options, defaults)


def _upstream(name: str, options: EngineOptions, defaults: SamplingDefaultsConfig) -> Engine:
    from vllm_service.engine.upstream import UpstreamEngine

    assert isinstance(options, UpstreamOptions)
    return UpstreamEngine(name, options, defaults)


def _process(name: str, options: EngineOptions, defaults: SamplingDefaultsConfig) -> Engine:
    from vllm_service.engine.process import ProcessEngine

    assert isinstance(options, ProcessOptions)
    return ProcessEngine(name, options, defaults)


#: Every engine kind. Kinds with a marker come first; the default kind (no marker) last.
ENGINE_KINDS: tuple[EngineKind, ...] = (
    EngineKind(
        "upstream",
        UpstreamOptions,
        "base_url",
        "options.base_url and options.model",
        _upstream,
        False,
    ),
    EngineKind(
        "process", ProcessOptions, "kind", "options.kind and options.served_model", _process, True
    ),
    EngineKind(
        "llamacpp", LlamaCppOptions, None, "llama.cpp options (e.g. options.model)", _llamacpp, True
    ),
)
DEFAULT_KIND = ENGINE_KINDS[-1]


class UnknownEngineKindError(ValueError):
    """A model entry names an engine kind that is not registered."""


def kind_named(name: str) -> EngineKind:
    """The kind registered under ``name``."""
    for kind in ENGINE_KINDS:
        if kind.name == name:
            return kind
    names = ", ".join(k.name for k in ENGINE_KINDS)
    raise UnknownEngineKindError(f"unknown engine {name!r} (one of: {names})")


def kind_of_options(value: object) -> EngineKind:
    """The kind a model entry's options belong to: by their model, or by a marker key."""
    for kind in ENGINE_KINDS:
        if isinstance(value, kind.options):
            return kind
        if isinstance(value, Mapping) and kind.marker is not None and kind.marker in value:
            return kind
    return DEFAULT_KIND
