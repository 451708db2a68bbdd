"""Operational endpoints: /health, /ready, /metrics, /performance/latency, /admin/cache."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from vllm_service import __version__
from vllm_service.accounting.latency import LatencyWindow
from vllm_service.accounting.metrics import Metrics
from vllm_service.accounting.stats import DeploymentStats
from vllm_service.api.auth import AuthGate, principal_of
from vllm_service.api.connections import ConnectionGuard
from vllm_service.api.errors import error_body
from vllm_service.api.observe import record_of
from vllm_service.api.serving import Manager
from vllm_service.auth import Permission, requires
from vllm_service.auth.audit import record_action

router = APIRouter(tags=["ops"])


def _deployment_body(stats: DeploymentStats) -> dict[str, Any]:
    """One deployment in /health: its engine (state, device, what it is, its scheduler's
    counters), its breaker and its attempts by outcome."""
    engine = stats.engine
    body: dict[str, Any] = {"state": engine.state, "device": engine.device, **engine.info}
    if engine.scheduler is not None:
        body.update(dataclasses.asdict(engine.scheduler))
    body.update(
        model=stats.model,
        breaker=stats.breaker,
        breaker_opened=stats.breaker_opened,
        in_flight=stats.in_flight,
    )
    body.update({f"attempts_{outcome}": n for outcome, n in stats.attempts.items()})
    if stats.residency is not None:
        body["residency"] = dataclasses.asdict(stats.residency)
    return body


@router.get("/health")
@requires(Permission.OPEN)
async def health(request: Request, manager: Manager) -> JSONResponse:
    """Liveness: the process is up; reports each engine's state and device (503 if one failed)."""
    engines = await manager.health()
    failed = manager.startup_error is not None or any(s.failed for s in engines.values())
    body: dict[str, Any] = {
        "status": "failed" if failed else "ok",
        "version": __version__,
        "engines": {name: _deployment_body(stats) for name, stats in engines.items()},
    }
    for deployment in manager.deployments:
        cards = deployment.engine.models()
        if deployment.id in body["engines"] and cards:
            defaults = cards[0].sampling_defaults.as_dict()
            body["engines"][deployment.id]["sampling_defaults"] = defaults
    gate: AuthGate | None = request.app.state.auth
    if gate is not None:
        # Redis down with limits failing open: served, but without per-key limits.
        body["auth"] = {"limits": "degraded" if gate.limiter.degraded else "ok"}
    guard: ConnectionGuard | None = getattr(request.app.state, "connection_guard", None)
    if guard is not None:
        body["http"] = dict(guard.counts)
    if manager.cache is not None:
        await manager.cache.ping()
        body["cache"] = manager.cache.health()
    devices = sorted({s.engine.device for s in engines.values()})
    body["device"] = devices[0] if len(devices) == 1 else devices
    if manager.startup_error is not None:
        body["error"] = str(manager.startup_error)
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/ready")
@requires(Permission.OPEN)
async def ready(request: Request, manager: Manager) -> JSONResponse:
    """Readiness: every model is loaded and accepting work; 503 until then, and while draining."""
    if getattr(request.app.state, "draining", False):
        body = error_body(
            "the service is shutting down", "service_unavailable_error", None, "draining"
        )
        return JSONResponse({"status": "draining", **body}, status_code=503)
    engines = await manager.health()
    not_ready = sorted(name for name, stats in engines.items() if not stats.ready)
    if not_ready:
        message = f"models not ready: {', '.join(not_ready)}"
        body = error_body(message, "service_unavailable_error", None, "not_ready")
        return JSONResponse(
            {"status": "not_ready", "waiting_for": not_ready, **body},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready", "models": sorted(engines)})


@router.get("/metrics", response_class=Response)
@requires(Permission.READ_METRICS)
async def metrics(request: Request, manager: Manager) -> Response:
    """Prometheus metrics, text exposition format."""
    registry: Metrics = request.app.state.metrics
    registry.refresh_engines(await manager.health())
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/performance/latency")
@requires(Permission.READ_METRICS)
async def performance_latency(request: Request) -> JSONResponse:
    """Latency SLI per model over the rolling window: percentiles, targets met, budget burn."""
    window: LatencyWindow = request.app.state.latency
    return JSONResponse(window.report())


@router.delete("/admin/cache")
@requires(Permission.ADMIN)
async def purge_cache(request: Request, manager: Manager) -> JSONResponse:
    """Remove every cached answer."""
    removed = await manager.cache.purge() if manager.cache is not None else 0
    await audit(request, "cache.purge", None, {"removed": removed})
    return JSONResponse({"purged": removed})


@router.delete("/admin/cache/{key}")
@requires(Permission.ADMIN)
async def purge_cache_key(key: str, request: Request, manager: Manager) -> JSONResponse:
    """Remove one cached answer, by the key a response's x-cache-key header named."""
    removed = await manager.cache.purge(key) if manager.cache is not None else 0
    await audit(request, "cache.purge", key[:256], {"removed": removed})
    return JSONResponse({"purged": removed})


async def audit(request: Request, action: str, target: str | None, detail: dict[str, Any]) -> None:
    """Record an admin action in the audit trail (kept in the keys' database, auth on)."""
    gate: AuthGate | None = request.app.state.auth
    if gate is None:
        return
    rec = record_of(request)
    client = rec.client if rec is not None else None
    actor = principal_of(request).key_id
    await record_action(
        gate.keys.db, actor=actor, action=action, target=target, detail=detail, client=client
    )


class MetricsPortOnly:
    """ASGI middleware: on server.metrics_port, only GET /metrics is served (404 otherwise)."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (
            scope["type"] == "http"
            and server is not None
            and server[1] == self.port
            and scope.get("path") != "/metrics"
        ):
            body = json.dumps(
                error_body(
                    "Only /metrics is served on this port.",
                    "invalid_request_error",
                    code="not_found",
                )
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
