"""examples/config.yaml documents every configuration key, and stays valid."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, create_model

from vllm_service.config import ServerConfig, Settings, load_settings
from vllm_service.engine.options import ProcessOptions, UpstreamOptions

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"
#: Lines the example shows commented out as "#| ": an alternative a user enables by deleting
#: the marker (a managed process, which would start a server if it were live).
ALTERNATIVE = re.compile(r"^(\s*)#\| ?", re.MULTILINE)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model inside a type (through Annotated, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def schema_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted key paths of a config model; list items and union members share one path."""
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        for sub in _models_in(info.annotation):
            paths |= schema_paths(sub, f"{path}.")
    return paths


def document_paths(value: object, prefix: str = "") -> set[str]:
    """Dotted key paths present in a parsed YAML document (list items merged)."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= document_paths(item, f"{path}.")
    elif isinstance(value, list):
        for item in value:
            paths |= document_paths(item, prefix)
    return paths


def _example_with_alternatives() -> str:
    return ALTERNATIVE.sub(r"\1", EXAMPLE.read_text(encoding="utf-8"))


def test_the_example_documents_every_key() -> None:
    import yaml

    documented = document_paths(yaml.safe_load(_example_with_alternatives()))
    missing = schema_paths(Settings) - documented
    assert not missing, f"add these keys to examples/config.yaml: {sorted(missing)}"


def test_the_example_and_its_alternatives_are_valid_configurations(tmp_path: Path) -> None:
    live = load_settings(EXAMPLE)
    assert any(isinstance(m.options, UpstreamOptions) for m in live.models)
    enabled = tmp_path / "config.yaml"
    enabled.write_text(_example_with_alternatives(), encoding="utf-8")
    settings = load_settings(enabled)
    assert any(isinstance(m.options, ProcessOptions) for m in settings.models)


def test_a_key_added_to_the_model_is_reported_missing() -> None:
    import yaml

    grown_server = create_model("GrownServer", __base__=ServerConfig, new_knob=(int, 1))
    grown = create_model("GrownSettings", __base__=Settings, server=(grown_server, None))
    documented = document_paths(yaml.safe_load(_example_with_alternatives()))
    assert schema_paths(grown) - documented == {"server.new_knob"}
