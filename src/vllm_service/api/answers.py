"""Pydantic schemas of what the OpenAI API answers, as this service sends them: responses,
stream chunks, usage, cost, logprobs. (What it accepts is in api/protocol.py.)"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from vllm_service.api.tools import ToolCallDelta, ToolCallOut


def _unset(value: object) -> bool:
    """Response fields left out when empty, as OpenAI leaves them out."""
    return value is None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CostInfo(BaseModel):
    """Extension: what this answer cost here (at the current rolling rate; the ledger's period
    apportionment is final) and at each hosted reference, with the savings."""

    tokens: int
    local_cost_usd: float | None = Field(description="null: no hardware cost is configured.")
    local_cost_basis: Literal["rolling_rate"] = "rolling_rate"
    hosted_cost_usd: dict[str, float]
    savings_usd: dict[str, float | None]


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None
    refusal: list[TokenLogprobOut] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=_unset)


FinishReasonOut = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonOut


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    cost_info: CostInfo | None = Field(default=None, exclude_if=_unset)


class ChatDelta(BaseModel):
    # Keys not sent are left out, as OpenAI does: the last chunk of a choice has `delta: {}`.
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_unset)
    content: str | None = Field(default=None, exclude_if=_unset)
    tool_calls: list[ToolCallDelta] | None = Field(default=None, exclude_if=_unset)


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReasonOut | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
    cost_info: CostInfo | None = Field(default=None, exclude_if=_unset)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReasonOut | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
    cost_info: CostInfo | None = Field(default=None, exclude_if=_unset)
