"""The ``vllm-service`` command."""

from __future__ import annotations

import copy
import faulthandler
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
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
    data: dict[str, Any] = settings.model_dump()
    data["server"] = server.model_dump()
    data["models"] = [m.model_dump() for m in models]
    # Every other section (observability, cache, ...) is kept as the file and environment set it.
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
    from vllm_service.api.connections import GuardedHttpProtocol

    try:
        settings = _apply_cli(load_settings(config), host, port, model)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except Exception as exc:
        typer.echo(f"error: invalid configuration: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    _refuse_open_remote(settings)
    # Python's output goes to its own copy of stderr: the engine points descriptor 2 at a file
    # while llama.cpp loads a model (engine/llamacpp/native_log.py). Native crashes print a
    # stack there too, instead of dying without a word.
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    faulthandler.enable(file=sys.stderr)
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx2 (health checks of managed engine processes) logs every request at INFO.
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    fatal: list[BaseException] = []

    def stop_for_good(exc: BaseException) -> None:
        fatal.append(exc)
        server.should_exit = True

    try:
        application = create_app(settings, on_fatal=stop_for_good)
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    server = _DrainingServer(
        uvicorn.Config(
            application,
            host=settings.server.host,
            port=settings.server.port,
            log_level=settings.server.log_level,
            # The request log (observability.log_requests) already has a line per request.
            access_log=not (settings.observability.enabled and settings.observability.log_requests),
            timeout_graceful_shutdown=max(1, round(settings.server.shutdown_grace)),
            http=GuardedHttpProtocol.bound(application.state.connection_guard),
            timeout_keep_alive=settings.server.keep_alive_timeout,
            **_tls(settings),
        ),
        on_drain=lambda: setattr(application.state, "draining", True),
        drain_delay=settings.server.drain_delay,
    )
    # uvicorn re-raises SIGTERM once it has shut down gracefully; this handler makes that a
    # clean exit 0 rather than death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run(sockets=_sockets(server.config, settings.server.metrics_port))
    if fatal:
        typer.echo(f"error: no model could be loaded: {fatal[0]}", err=True)
        raise typer.Exit(code=1)


def _sockets(config: uvicorn.Config, metrics_port: int | None) -> list[socket.socket] | None:
    """The API's socket and server.metrics_port's (one app serves both), or None: uvicorn binds
    the API's port itself."""
    if metrics_port is None:
        return None
    metrics = copy.copy(config)
    metrics.port = metrics_port
    return [config.bind_socket(), metrics.bind_socket()]


def _tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: the certificate, and the oldest protocol version accepted."""
    tls = settings.server.tls
    if tls.certfile is None:
        return {}
    oldest = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2

    def context(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        made = default()
        made.minimum_version = oldest
        return made

    return {
        "ssl_certfile": str(tls.certfile),
        "ssl_keyfile": str(tls.keyfile),
        "ssl_context_factory": context,
    }


def _refuse_open_remote(settings: Settings) -> None:
    if not _safe_to_serve(settings):
        typer.echo(
            f"error: auth is off (auth.enabled) and {settings.server.host} is not a loopback "
            "address: anyone who reaches it could use every route. Turn auth on, bind "
            "127.0.0.1, or set auth.allow_unauthenticated_remote: true.",
            err=True,
        )
        raise typer.Exit(code=2)


def _safe_to_serve(settings: Settings) -> bool:
    """Auth is on, or the host is loopback, or an open remote service was asked for."""
    auth, host = settings.auth, settings.server.host
    if auth.enabled or auth.allow_unauthenticated_remote or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class _DrainingServer(uvicorn.Server):
    """On SIGTERM: mark the app draining (/ready → 503), wait ``drain_delay`` while still
    serving, then shut down gracefully (stop accepting, let in-flight requests finish)."""

    def __init__(
        self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_delay: float
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_delay = drain_delay
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining:
            self._draining = True
            self._on_drain()
            if self._drain_delay > 0:
                timer = threading.Timer(self._drain_delay, super().handle_exit, (sig, frame))
                timer.daemon = True
                timer.start()
                return
        super().handle_exit(sig, frame)


def _ledger_commands() -> None:
    from vllm_service.auth_commands import audit_app, keys_app
    from vllm_service.ledger_commands import cost_app, db_app

    app.add_typer(db_app, name="db")
    app.add_typer(cost_app, name="cost")
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")


_ledger_commands()


def _bench_command() -> None:
    from vllm_service.bench.command import bench

    app.command("bench")(bench)


_bench_command()


def _eval_command() -> None:
    from vllm_service.quality.command import eval_command

    app.command("eval")(eval_command)


_eval_command()
