"""Pydantic schemas of the OpenAI API, as this service accepts and returns them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from vllm_service.api import tools as t

#: Longest single string accepted anywhere in a request (the body limit bounds the total).
MAX_STRING_CHARS = 1_000_000
MAX_STOP_SEQUENCES = 4

# Parameters of OpenAI's API that this service does not implement: sent with a value, they get
# a clear 400 instead of being silently ignored.
UNSUPPORTED_CHAT_PARAMS = (
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)


def check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if len(value) > MAX_STRING_CHARS:
        raise ValueError(f"is longer than {MAX_STRING_CHARS} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON allows "\ud800" escapes (and Python decodes raw ones so), but no UTF-8
            # text, tokenizer or model can hold half of a surrogate pair.
            raise ValueError("must not contain lone UTF-16 surrogates (invalid Unicode)") from None
    return value


class OpenAIBaseModel(BaseModel):
    """Base of request schemas: unknown fields are accepted and ignored, as OpenAI clients
    send newer parameters freely (logged at debug level); known-but-unsupported ones are
    rejected by name. Numbers are what JSON says they are: no NaN or infinity, and an integer
    parameter takes only integers (not "5", 5.0 or true), as OpenAI's API does."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


#: Content part types of OpenAI's API that a text-only model cannot take.
NON_TEXT_PARTS = frozenset({"image_url", "input_audio", "file"})


class TextContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind in NON_TEXT_PARTS:
            raise ValueError(
                f"content parts of type '{kind}' are not supported: the models of this "
                "server take text only"
            )
        return data

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextContentPart], Field(min_length=1)] | None = None
    name: str | None = None
    tool_calls: list[t.ToolCallIn] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)

    @field_validator("content")
    @classmethod
    def _content(cls, v: str | list[TextContentPart] | None) -> str | list[TextContentPart] | None:
        if isinstance(v, str):
            check_text(v)
        return v

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessageIn:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("'tool_call_id' belongs to 'tool' messages, which need one")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only 'assistant' messages carry 'tool_calls'")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


StopParam = Annotated[str, Field(min_length=1, max_length=1000)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(OpenAIBaseModel):
    """Parameters shared by chat and text completions."""

    model: str = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: StrictInt = Field(default=1, ge=1, le=128)
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: StopParam | list[StopParam] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        le=2.0,
        description="Extension (as vLLM): divides the logits of tokens already seen; 1 = off.",
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = Field(default=None, max_length=256)
    ignore_eos: StrictBool = Field(
        default=False,
        description="Extension (as vLLM): keep generating past end-of-sequence up to max_tokens.",
    )

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if len(v) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
            for s in v:
                check_text(s)
        elif isinstance(v, str):
            check_text(v)
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > 1024:
            raise ValueError("at most 1024 tokens may be biased")
        for key in v:
            # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
            if not (key.isascii() and key.isdigit()) or len(key) > 9:
                raise ValueError(f"keys must be token ids (non-negative integers), got {key!r}")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[t.ToolIn] | None = None
    tool_choice: t.ToolChoiceIn | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[t.FunctionDef] | None = None
    function_call: Literal["none", "auto"] | dict[str, str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        return self

    def completion_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: (
        Annotated[str, Field(max_length=MAX_STRING_CHARS)]
        | Annotated[list[str], Field(min_length=1, max_length=64)]
        | Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]],
            Field(min_length=1, max_length=64),
        ]
    )
    max_tokens: StrictInt | None = Field(
        default=16, ge=0, description="0 with echo: score the prompt without generating."
    )
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    best_of: StrictInt | None = Field(default=None, ge=1, le=128)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, str):
            check_text(v)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            for s in v:
                check_text(s)
        return v

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one per choice group."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        out: list[str | list[int]] = []
        ids: list[int] = []
        for item in p:
            if isinstance(item, int):
                ids.append(item)
            elif isinstance(item, str):
                out.append(item)
            else:
                out.append(list(item))
        return [ids] if ids else out


# -- responses ------------------------------------------------------------------------------
