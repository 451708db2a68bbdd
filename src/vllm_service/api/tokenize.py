"""/tokenize and /detokenize (vLLM's extension of the OpenAI API): a prompt's token ids as
generation would see them, chat template applied, and token ids back to text."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator, model_validator

from vllm_service.api.errors import InvalidRequest
from vllm_service.api.protocol import MAX_STRING_CHARS, ChatMessageIn, OpenAIBaseModel, check_text
from vllm_service.api.responses import ERROR_RESPONSES
from vllm_service.api.serving import Manager, resolve_model
from vllm_service.auth import Permission, requires
from vllm_service.engine import GenerationRequest, SamplingParams
from vllm_service.engine.base import ChatMessage, Engine
from vllm_service.engine.capabilities import Tokenizing

router = APIRouter(tags=["tokenize"])

#: Most token ids one /detokenize request may send.
MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeRequest(OpenAIBaseModel):
    """Either ``prompt`` (raw text) or ``messages`` (rendered with the model's chat template,
    the generation prompt included, as a chat request is)."""

    model: str = Field(min_length=1)
    prompt: Annotated[str, Field(max_length=MAX_STRING_CHARS)] | None = None
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)] | None = None
    add_special_tokens: StrictBool = Field(
        default=True, description="For a raw prompt: add BOS as the model wants it."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        return v if v is None else check_text(v)

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(OpenAIBaseModel):
    model: str = Field(min_length=1)
    tokens: Annotated[
        list[Annotated[StrictInt, Field(ge=0)]], Field(max_length=MAX_DETOKENIZE_TOKENS)
    ]


class DetokenizeResponse(BaseModel):
    prompt: str


def _tokenizing(engine: Engine, model: str) -> Tokenizing:
    if not isinstance(engine, Tokenizing):
        raise InvalidRequest(
            f"The model '{model}' is served by another server: tokenize through that server.",
            param="model",
        )
    return engine


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
@requires(Permission.INFERENCE)
async def tokenize(body: TokenizeRequest, request: Request, manager: Manager) -> TokenizeResponse:
    served = resolve_model(request, manager, body.model)
    engine = _tokenizing(served.engine, body.model)
    messages = None
    if body.messages is not None:
        messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in body.messages)
    req = GenerationRequest(
        request_id="tokenize", sampling=SamplingParams(), messages=messages, prompt=body.prompt
    )
    async with manager.using(served):  # a model loaded on demand is loaded for it
        tokens = await engine.tokenize(req, add_special=body.add_special_tokens)
    cards = served.engine.models()
    return TokenizeResponse(count=len(tokens), max_model_len=cards[0].max_model_len, tokens=tokens)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
@requires(Permission.INFERENCE)
async def detokenize(
    body: DetokenizeRequest, request: Request, manager: Manager
) -> DetokenizeResponse:
    served = resolve_model(request, manager, body.model)
    engine = _tokenizing(served.engine, body.model)
    async with manager.using(served):
        return DetokenizeResponse(prompt=await engine.detokenize(list(body.tokens)))
