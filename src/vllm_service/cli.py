"""The ``vllm-service`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from vllm_service import __version__
from vllm_service.config import ConfigError, Settings, load_settings

app = typer.Typer(
    name="vllm-service",
    help="A self-hosted, OpenAI-compatible LLM service.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vllm-service {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """A self-hosted, OpenAI-compatible LLM service."""


def _apply_cli(
    settings: Settings, host: str | None, port: int | None, model: str | None
) -> Settings:
    server = settings.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    models = settings.models
    if model is not None:
        first = models[0]
        models = [
            first.model_copy(update={"options": first.options.model_copy(update={"model": model})}),
            *models[1:],
        ]
    data: dict[str, Any] = {
        "server": server.model_dump(),
        "models": [m.model_dump() for m in models],
    }
    # Re-validate so that CLI values get the same checks as the file's.
    return Settings.model_validate(data)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file (see examples/config.yaml); VLLM_SERVICE_* env vars override.",
            exists=False,
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on. [default: 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on. [default: 8090]")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="GGUF file for the first model, or 'smollm2' for the bundled "
            "SmolLM2-135M-Instruct. [default: from config, else smollm2]",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API (default: the bundled model on 127.0.0.1:8090)."""
    from vllm_service.api.app import create_app

    try:
        settings = _apply_cli(load_settings(config), host, port, model)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except Exception as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        application = create_app(settings)
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    uvicorn.run(
        application,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=10,
    )
