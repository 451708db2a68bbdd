"""Operational endpoints: /health (liveness) and /ready (readiness)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from vllm_service import __version__
from vllm_service.api.openai import Manager

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health(manager: Manager) -> JSONResponse:
    """Liveness: the process is up; reports each engine's state and device (503 if one failed)."""
    engines = await manager.health()
    failed = manager.startup_error is not None or any(h.state == "failed" for h in engines.values())
    body: dict[str, Any] = {
        "status": "failed" if failed else "ok",
        "version": __version__,
        "engines": {
            name: {"state": h.state, "device": h.device, **h.detail} for name, h in engines.items()
        },
    }
    devices = sorted({h.device for h in engines.values()})
    body["device"] = devices[0] if len(devices) == 1 else devices
    if manager.startup_error is not None:
        body["error"] = str(manager.startup_error)
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/ready")
async def ready(manager: Manager) -> JSONResponse:
    """Readiness: every model is loaded and accepting work; 503 until then."""
    engines = await manager.health()
    not_ready = sorted(name for name, h in engines.items() if not h.ready)
    if not_ready:
        return JSONResponse(
            {
                "status": "not_ready",
                "waiting_for": not_ready,
                "error": {
                    "message": f"models not ready: {', '.join(not_ready)}",
                    "type": "service_unavailable_error",
                    "param": None,
                    "code": "not_ready",
                },
            },
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready", "models": sorted(engines)})
