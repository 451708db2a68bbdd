"""POST /admin/models/{id}/load and /unload: put a model in memory, or take it out, by hand.

Only models served here have a place in memory (the embedded engine, a managed process); an
upstream's is a 400. Loading waits for room as a request would (an idle model may be unloaded
for it); unloading a model with requests in flight is a 409. Both are admin actions, audited.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vllm_service.accounting.stats import ResidencyStats
from vllm_service.api.errors import APIError, InvalidRequest
from vllm_service.api.ops import audit
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager, resolve_model
from vllm_service.auth import Permission, requires
from vllm_service.engine import EngineUnavailableError
from vllm_service.manager import ModelManager
from vllm_service.manager.residency import ModelBusyError, Residency

router = APIRouter(prefix="/admin/models", tags=["admin"])

#: Seconds an admin load waits for room and for the load itself.
LOAD_WAIT = 600.0


def _residencies(request: Request, manager: ModelManager, model_id: str) -> list[Residency]:
    """The deployments of the model the id names that hold their model here."""
    served = resolve_model(request, manager, model_id)
    found = [d.residency for d in served.deployments if d.residency is not None]
    if not found:
        raise InvalidRequest(
            f"The model '{model_id}' is served by another server: nothing is loaded here.",
            param="model",
        )
    return found


class ModelResidency(BaseModel):
    id: str
    state: str = Field(description="loaded, loading, unloaded, draining, unloading or failed.")
    state_reason: str | None = Field(description="Why its last load failed.")
    unloaded: bool | None = Field(
        default=None, description="On /unload: whether it was loaded (false: nothing to do)."
    )
    deployments: dict[str, ResidencyStats]


def _body(model: str, found: list[Residency], unloaded: bool | None = None) -> ModelResidency:
    first = found[0].stats()
    return ModelResidency(
        id=model,
        state=first.state,
        state_reason=first.reason,
        unloaded=unloaded,
        deployments={res.name: res.stats() for res in found},
    )


@router.post("/{model_id:path}/load", response_model=ModelResidency, responses=ERROR_RESPONSES)
@requires(Permission.ADMIN)
async def load_model(model_id: str, request: Request, manager: Manager) -> ModelResidency:
    """Load a model now (one whose load failed is tried again at once); 503 with the reason
    when the load fails or does not finish within 10 minutes."""
    found = _residencies(request, manager, model_id)
    try:
        async with asyncio.timeout(LOAD_WAIT):
            for res in found:
                await manager.loader.load(res)
    except TimeoutError:
        raise EngineUnavailableError(
            f"model {model_id!r} was not loaded within {LOAD_WAIT:.0f} s", retry_after=1.0
        ) from None
    finally:
        await audit(request, "model.load", model_id, {"states": [r.state.value for r in found]})
    return _body(model_id, found)


@router.post(
    "/{model_id:path}/unload",
    response_model=ModelResidency,
    responses={409: {**ERROR_RESPONSES[400], "description": "Serving"}, **ERROR_RESPONSES},
)
@requires(Permission.ADMIN)
async def unload_model(model_id: str, request: Request, manager: Manager) -> ModelResidency:
    """Unload an idle model (its next request loads it again); 409 while it is serving."""
    found = _residencies(request, manager, model_id)
    unloaded = False
    try:
        for res in found:
            unloaded = await manager.loader.unload(res) or unloaded
    except ModelBusyError as exc:
        raise APIError(409, str(exc), type="invalid_request_error", code="model_busy") from None
    await audit(request, "model.unload", model_id, {"unloaded": unloaded})
    return _body(model_id, found, unloaded)
