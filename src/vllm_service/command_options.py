"""What the `db`, `cost`, `keys` and `audit` commands share: the config option, loading it,
and durations and times as a user writes them (30d, 12h, an ISO date)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from vllm_service.config import ConfigError, Settings, load_settings

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (as for serve).")
]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def load_config(config: Path | None) -> Settings:
    """The settings, or exit 2 with the configuration error."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def duration(value: str) -> float | None:
    """Seconds of a duration like 90d, 12h, 30m or 10s; None if it is not one."""
    match = _DURATION.match(value)
    return float(match[1]) * _SECONDS[match[2]] if match else None


def seconds(value: str) -> float:
    """A duration's seconds, or a usage error."""
    found = duration(value)
    if found is None:
        raise typer.BadParameter(f"{value!r}: give a duration like 90d, 12h or 30m")
    return found


def parse_time(value: str, now: float) -> float:
    """A duration before ``now``, or an ISO 8601 date/time (UTC unless it says)."""
    ago = duration(value)
    if ago is not None:
        return now - ago
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: give 30d, 12h, or an ISO date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
