"""GET /v1/models and /v1/models/{id}: every name a model answers to, and whether it is in
memory (a model loaded on demand may be unloaded: its first request loads it)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vllm_service.api.auth import principal_of
from vllm_service.api.errors import ModelNotFound
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager
from vllm_service.auth import Permission, Principal, requires
from vllm_service.config import EmbeddingsConfig
from vllm_service.manager import ModelManager
from vllm_service.manager.semantic import MODEL_ID

router = APIRouter(prefix="/v1", tags=["openai"])


class SamplingDefaultOut(BaseModel):
    value: int | float
    source: str


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    max_model_len: int
    state: Literal["loaded", "loading", "unloaded", "draining", "unloading", "failed"] = Field(
        default="loaded",
        description="Extension: whether the model is in memory (an upstream's is 'loaded'). "
        "An unloaded model loads on its first request.",
    )
    state_reason: str | None = Field(
        default=None, description="Extension: why its last load failed (state 'failed')."
    )
    sampling_defaults: dict[str, SamplingDefaultOut] = Field(
        default_factory=dict,
        description="Extension: the value a request gets for each sampling knob it leaves out, "
        "and its source (config, gguf metadata, a model card, openai default). A knob not "
        "listed is left to the upstream.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _model_objects(manager: ModelManager, principal: Principal) -> list[ModelObject]:
    """Every name a model answers to (its own and its aliases), as OpenAI lists models; only
    the models the caller's key may use."""
    data: list[ModelObject] = []
    for served in manager.served:
        if not principal.may_use(served.config.name):
            continue
        residency = served.deployments[0].residency
        for card in served.engine.models():
            for name in served.config.all_names:
                data.append(
                    ModelObject(
                        id=name,
                        created=card.created,
                        owned_by=card.owned_by,
                        root=served.config.name,
                        max_model_len=card.max_model_len,
                        state=residency.state.value if residency else "loaded",
                        state_reason=residency.reason if residency else None,
                        sampling_defaults={
                            knob: SamplingDefaultOut(value=d.value, source=d.source)
                            for knob, d in card.sampling_defaults.values
                        },
                    )
                )
    return data


def _embedding_model(request: Request) -> ModelObject | None:
    """The shipped embedding model, when it is served and the caller may use it."""
    if not request.app.state.embeddings_available or not principal_of(request).may_use(MODEL_ID):
        return None
    config: EmbeddingsConfig = request.app.state.embeddings
    return ModelObject(
        id=MODEL_ID,
        created=0,
        owned_by="vllm-service",
        root=MODEL_ID,
        max_model_len=config.max_input_tokens,
    )


@router.get("/models", response_model=ModelList)
@requires(Permission.INFERENCE)
async def list_models(request: Request, manager: Manager) -> ModelList:
    data = _model_objects(manager, principal_of(request))
    embedding = _embedding_model(request)
    return ModelList(data=[*data, *([embedding] if embedding else [])])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    responses={404: ERROR_RESPONSES[404]},
)
@requires(Permission.INFERENCE)
async def retrieve_model(model_id: str, request: Request, manager: Manager) -> ModelObject:
    """One model by its name or alias (OpenAI's models.retrieve); ids may contain '/'."""
    embedding = _embedding_model(request)
    for model in [*_model_objects(manager, principal_of(request)), embedding]:
        if model is not None and model.id == model_id:
            return model
    raise ModelNotFound(model_id)
