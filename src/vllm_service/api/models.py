"""GET /v1/models and /v1/models/{id}: every name a model answers to."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from vllm_service.api.auth import principal_of
from vllm_service.api.errors import ModelNotFound
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager
from vllm_service.auth import Permission, Principal, requires
from vllm_service.manager import ModelManager

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
        for card in served.engine.models():
            for name in served.config.all_names:
                data.append(
                    ModelObject(
                        id=name,
                        created=card.created,
                        owned_by=card.owned_by,
                        root=served.config.name,
                        max_model_len=card.max_model_len,
                        sampling_defaults={
                            knob: SamplingDefaultOut(value=d.value, source=d.source)
                            for knob, d in card.sampling_defaults.values
                        },
                    )
                )
    return data


@router.get("/models", response_model=ModelList)
@requires(Permission.INFERENCE)
async def list_models(request: Request, manager: Manager) -> ModelList:
    return ModelList(data=_model_objects(manager, principal_of(request)))


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    responses={404: ERROR_RESPONSES[404]},
)
@requires(Permission.INFERENCE)
async def retrieve_model(model_id: str, request: Request, manager: Manager) -> ModelObject:
    """One model by its name or alias (OpenAI's models.retrieve); ids may contain '/'."""
    for model in _model_objects(manager, principal_of(request)):
        if model.id == model_id:
            return model
    raise ModelNotFound(model_id)
