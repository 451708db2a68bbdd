"""The ASGI application: built from Settings, with engines started in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from opentelemetry import trace
from starlette.middleware.cors import CORSMiddleware

from vllm_service import __version__
from vllm_service.accounting.cost import HardwareCost, HostedPrice, PriceTable
from vllm_service.accounting.latency import LatencyWindow
from vllm_service.accounting.ledger import Ledger, LedgerSettings
from vllm_service.accounting.metrics import Metrics
from vllm_service.accounting.request_log import configure_request_log
from vllm_service.accounting.tracing import TRACER_NAME
from vllm_service.api import cost, loading, openai, ops, quality, tokenize
from vllm_service.api.auth import AuthGate, authorize, build_gate, open_docs
from vllm_service.api.connections import ConnectionGuard
from vllm_service.api.embeddings import embeddings_available
from vllm_service.api.errors import BodySizeLimit, install_error_handlers
from vllm_service.api.observe import Observe
from vllm_service.api.quality import QualityState, build_quality
from vllm_service.auth import Permission, requires
from vllm_service.config import ConfigError, ModelConfig, ObservabilityConfig, Settings
from vllm_service.engine import Engine
from vllm_service.manager import ModelManager, ResponseCache, build_engine
from vllm_service.quality.ab import AbCollector
from vllm_service.quality.monitor import QualityCollector
from vllm_service.storage import DatabaseError

#: Every router of the app, in the order they are matched.
ROUTERS = (
    *openai.ROUTERS,
    ops.router,
    loading.router,
    tokenize.router,
    cost.router,
    quality.router,
)


def create_app(
    settings: Settings,
    engine_factory: Callable[[ModelConfig], Engine] = build_engine,
    telemetry: TelemetryConfig | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app; engines are constructed (and their config checked) here, loaded later.

    ``telemetry`` overrides FastAPI's OpenTelemetry settings (tests pass their own provider).
    ``on_fatal`` is called when no deployment at all could start: nothing could ever be
    served (`serve` then exits non-zero). With some deployments up, the failure stays on
    /health and /ready instead.
    """
    cache = ResponseCache(settings.cache) if settings.cache.enabled else None
    manager = ModelManager(
        settings.models,
        engine_factory,
        cache=cache,
        loading=settings.loading,
        preload=settings.preloaded(),
    )
    ledger = _ledger(settings)
    gate = build_gate(settings, ledger.db if ledger is not None else None)
    otel = _telemetry(settings.observability, telemetry)
    scoring = build_quality(settings, manager, ledger)
    app = _new_app(_lifespan(manager, ledger, gate, scoring, on_fatal), otel, gate)
    app.state.quality = scoring
    provider = otel.get("tracer_provider") or trace.get_tracer_provider()
    tracer = provider.get_tracer(TRACER_NAME, __version__)
    app.state.tracer = manager.tracer = tracer
    app.state.manager = manager
    app.state.ledger = ledger
    # The audit trail's database: the keys' (auth on), else the ledger's.
    app.state.audit_db = gate.keys.db if gate is not None else (ledger.db if ledger else None)
    app.state.audit_content = settings.audit.log_content
    app.state.prices = price_table(settings)
    app.state.response_cost_info = settings.cost.response_cost_info
    app.state.embeddings = settings.embeddings
    app.state.embeddings_available = embeddings_available(settings.embeddings)
    app.state.server_config = settings.server
    app.state.connection_guard = ConnectionGuard(
        header_timeout=settings.server.header_timeout,
        body_timeout=settings.server.body_timeout,
        max_connections=settings.server.max_connections,
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_request_body_bytes)
    _observe(app, settings, cache, tracer, ledger)
    app.state.metrics_port = settings.server.metrics_port
    if settings.server.metrics_port is not None:
        app.add_middleware(ops.MetricsPortOnly, port=settings.server.metrics_port)
    return app


def _new_app(
    lifespan: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]],
    otel: TelemetryConfig,
    gate: AuthGate | None,
) -> FastAPI:
    """The FastAPI app: authorization on every route, docs pages only with auth off."""
    # Swagger UI's assets come from the installed fastapi-offline package, not a CDN that an
    # air-gapped deployment cannot reach. With auth on there are no docs pages (a browser does
    # not send a key); the schema is at /openapi.json for a key with the inference permission.
    factory: Callable[..., FastAPI] = FastAPIOffline
    docs: dict[str, None] = {}
    if gate is not None:
        factory, docs = FastAPI, {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = factory(
        title="vllm-service",
        version=__version__,
        description="A self-hosted, OpenAI-compatible LLM service.",
        lifespan=lifespan,
        telemetry=otel,
        # Every route: the permission it declared, and the caller's key (deny by default).
        dependencies=[Depends(authorize)],
        # A path is served as written or not at all: no redirect built from a Host header.
        redirect_slashes=False,
        **docs,
    )
    app.state.auth = gate
    if gate is None:
        open_docs(app)
    else:
        _keyed_schema(app)
    return app


def price_table(settings: Settings) -> PriceTable:
    return PriceTable([HostedPrice(**h.model_dump()) for h in settings.cost.hosted])


def _ledger(settings: Settings) -> Ledger | None:
    """The cost ledger (None when off, or when observability is: it rides on the request
    observer); a URL it cannot use is a configuration error naming the key."""
    config = settings.ledger
    if not (config.enabled and settings.observability.enabled):
        return None
    ledger_settings = LedgerSettings(
        url=config.database_url(),
        journal_dir=config.data_dir / "journal",
        journal_max_bytes=config.journal_max_bytes,
        fsync=config.fsync,
        batch_rows=config.batch_rows,
        flush_interval=config.flush_interval,
        retention_days=config.retention_days,
        hash_users=config.hash_users,
        audit_retention_days=settings.audit.retention_days,
    )
    hardware = HardwareCost(**settings.cost.hardware.model_dump())
    try:
        return Ledger(ledger_settings, price_table(settings), hardware)
    except DatabaseError as exc:
        raise ConfigError(f"ledger.url: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"ledger.data_dir: {exc}") from None


def _keyed_schema(app: FastAPI) -> None:
    @app.get("/openapi.json", include_in_schema=False)
    @requires(Permission.INFERENCE)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())


def _lifespan(
    manager: ModelManager,
    ledger: Ledger | None,
    gate: AuthGate | None,
    scoring: QualityState,
    on_fatal: Callable[[BaseException], None] | None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The keys' database is the ledger's when the ledger runs (it migrates and closes it).
        own_db = gate is not None and (ledger is None or gate.keys.db is not ledger.db)
        if gate is not None and own_db:
            try:
                await gate.keys.db.upgrade()
            except DatabaseError as exc:
                raise ConfigError(f"ledger.url: {exc}") from None
        if ledger is not None:
            try:
                await ledger.start()
            except DatabaseError as exc:
                raise ConfigError(f"ledger.url: {exc}") from None
            except OSError as exc:
                raise ConfigError(f"ledger.data_dir: {exc}") from None

        async def load() -> None:
            await manager.start()
            if manager.startup_error is not None and on_fatal is not None:
                states = await manager.health()
                if not any(h.ready for h in states.values()):
                    on_fatal(manager.startup_error)

        # Load in the background so /health answers and /ready says 503 while weights load.
        loading = asyncio.create_task(load())
        if scoring.shadow is not None:
            scoring.shadow.start()
        try:
            yield
        finally:
            await loading
            if scoring.shadow is not None:
                await scoring.shadow.stop()
            await manager.stop()
            if ledger is not None:
                await ledger.stop()
            if gate is not None and own_db:
                await gate.keys.db.close()

    return lifespan


def _telemetry(obs: ObservabilityConfig, overrides: TelemetryConfig | None) -> TelemetryConfig:
    # Spans only: metrics are Prometheus', and the request log is ours. With tracing on,
    # FastAPI configures OTLP exporters from the standard OTEL_* environment variables.
    otel: TelemetryConfig = {
        "metrics": False,
        "logs": False,
        "tracing": obs.enabled,
        # Spans of FastAPI's own steps (dependencies, endpoint, serialization) are not ours
        # to show: the request span and the vllm.* spans say where a request's time went.
        "operation_spans": False,
        "auto_configure": obs.enabled and obs.tracing,
    }
    otel.update(overrides or {})
    return otel


def _observe(
    app: FastAPI,
    settings: Settings,
    cache: ResponseCache | None,
    tracer: trace.Tracer,
    ledger: Ledger | None,
) -> None:
    """Metrics, the latency window, and (unless observability is off) the middleware that
    feeds them every request."""
    obs = settings.observability
    prices = price_table(settings).on(datetime.now(UTC).date())
    app.state.metrics = metrics = Metrics(
        latency_target=obs.latency_target_ms / 1e3,
        cache=cache.stats if cache is not None else None,
        ledger=ledger,
        hosted=prices[0],
        references=prices,
        hardware=HardwareCost(**settings.cost.hardware.model_dump()),
    )
    app.state.latency = latency = LatencyWindow(
        window_seconds=obs.latency_window_seconds,
        latency_target=obs.latency_target_ms / 1e3,
        ttft_target=obs.ttft_target_ms / 1e3,
        slo=obs.slo,
        max_samples=obs.latency_samples_per_model,
    )
    scoring: QualityState = app.state.quality
    metrics.registry.register(QualityCollector(scoring.monitor))
    metrics.registry.register(AbCollector(scoring.ab))
    if not obs.enabled:
        return
    if obs.log_requests:
        configure_request_log()
    # Outermost of ours: it times everything, including the 413s of the body limit.
    app.add_middleware(
        Observe,
        metrics=metrics,
        latency=latency,
        routes=[r.path for rt in ROUTERS for r in rt.routes if isinstance(r, APIRoute)],
        log_requests=obs.log_requests,
        tracer=tracer,
        ledger=ledger,
        trusted_proxies=settings.server.trusted_proxies,
    )
