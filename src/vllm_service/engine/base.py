"""The engine contract: what every engine (embedded, upstream, managed process) provides.

Exception tree::

    EngineError                  the engine could not serve the request
     ├── InvalidRequestError     the request cannot be served as asked (400)
     │    └── ContextLengthExceededError
     ├── EngineUnavailableError  the engine cannot take work now (503)
     └── UpstreamProtocolError   an upstream's answer was malformed (502)
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "developer", "user", "assistant", "tool"]
EngineState = Literal["starting", "ready", "stopping", "unloaded", "failed"]


class FinishReason(enum.StrEnum):
    """Why a sequence ended, as OpenAI names it."""

    STOP = "stop"
    LENGTH = "length"
    #: The model called tools (an upstream's answer with tool_calls).
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    #: For an engine that passes tools through (an upstream): an assistant turn's calls (their
    #: OpenAI JSON) and the call a tool turn answers. The embedded engine gets them rendered
    #: into ``content`` instead.
    tool_calls_json: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens; every field maps to an OpenAI request parameter."""

    max_tokens: int | None = None
    # The knobs below are None when the request left them out: the engine then applies the
    # model's recommended value (engine/sampling_defaults.py), or OpenAI's neutral one.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    #: The request's seed, as sent (any 64-bit integer); each choice derives its own from it.
    seed: int | None = None
    #: Which of the request's choices this sequence is (n > 1): seeded choices differ.
    choice: int = 0
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    #: Multiplicative penalty on tokens already seen (vLLM's and llama.cpp's); 1 = off.
    repetition_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: None: no logprobs; 0..20: the chosen token's logprob plus that many alternatives.
    logprobs: int | None = None
    #: Score the prompt too: each prompt token's logprob given the ones before it, plus this
    #: many alternatives (None: off). The whole prompt is computed (no prefix-cache reuse).
    prompt_logprobs: int | None = None
    #: Constrain the output to one JSON object (OpenAI's JSON mode).
    json_object: bool = False
    #: Constrain the output to documents valid under this JSON schema (its JSON text).
    json_schema: str | None = None
    #: With json_schema: the output is either a JSON document under it or text that does not
    #: start with '{' (tool_choice "auto": a call, or a plain answer).
    json_optional: bool = False
    #: Generate past end-of-sequence until max_tokens (benchmarks with fixed output lengths).
    ignore_eos: bool = False


#: The sampling knobs a model may recommend values for (vLLM's generation-config set).
SAMPLING_KNOBS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


@dataclass(frozen=True, slots=True)
class SamplingDefault:
    """One knob's value when a request leaves it out, and where that value comes from."""

    value: float  # an int for top_k
    source: str


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """The values requests get for the knobs they leave out (knob name -> default)."""

    values: tuple[tuple[str, SamplingDefault], ...] = ()

    @classmethod
    def layered(cls, *layers: tuple[str, Mapping[str, float | None]]) -> SamplingDefaults:
        """Merge ``(source, {knob: value})`` layers; the first layer naming a knob wins."""
        chosen: dict[str, SamplingDefault] = {}
        for source, values in layers:
            for knob, value in values.items():
                if knob not in SAMPLING_KNOBS:
                    raise ValueError(f"unknown sampling knob {knob!r}")
                if value is not None and knob not in chosen:
                    number = int(value) if knob == "top_k" else float(value)
                    chosen[knob] = SamplingDefault(number, source)
        return cls(tuple((k, chosen[k]) for k in SAMPLING_KNOBS if k in chosen))

    def fill(self, params: SamplingParams) -> SamplingParams:
        """``params`` with every knob it left unset taken from these defaults."""
        missing: dict[str, Any] = {
            knob: default.value for knob, default in self.values if getattr(params, knob) is None
        }
        return dataclasses.replace(params, **missing) if missing else params

    def as_dict(self) -> dict[str, dict[str, float | str]]:
        return {knob: {"value": d.value, "source": d.source} for knob, d in self.values}


def choice_seed(seed: int, choice: int) -> int:
    """A 63-bit seed for one choice of a seeded request, by hashing (seed, choice): equal
    requests get equal seeds, a request's choices get different ones, and distinct seeds
    collide only by chance (never by truncation: -1 and 2**32 - 1 differ)."""
    digest = hashlib.blake2b(f"{seed}/{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One sequence to generate: either chat messages or a raw prompt (text or token ids)."""

    request_id: str
    sampling: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    #: ``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the client sent them (a JSON
    #: object), for engines that pass tools through (an upstream); its calls come back as
    #: ``TokenDelta.tool_calls``.
    tools_json: str | None = None


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    token_bytes: bytes


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[TopLogprob, ...]


@dataclass(frozen=True, slots=True)
class PromptTokenLogprob:
    """A prompt token and its log-probability given the tokens before it (None for the
    first, which nothing precedes)."""

    token: str
    logprob: float | None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    #: Not counted by the engine's tokenizer but estimated from the text (an upstream that
    #: sent no usage).
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timing:
    """Where one sequence's time went, in seconds (monotonic clock)."""

    #: From submission until the scheduler gave it a slot; None where the engine cannot know
    #: (an upstream server queues out of sight).
    queue_time: float | None
    #: From submission until its first output token was sampled.
    time_to_first_token: float
    #: Gaps between consecutive output tokens.
    inter_token_times: tuple[float, ...] = ()
    #: When the engine received the sequence (``time.monotonic()`` seconds).
    submitted_at: float = 0.0

    @property
    def decode_time(self) -> float:
        return sum(self.inter_token_times)


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call, as OpenAI streams them: the call's index in the answer, its id
    and function name on its first piece, pieces of its JSON arguments after."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """New output of one sequence. The final delta carries finish_reason and usage."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    #: On a sequence's first delta, when the prompt was scored (SamplingParams.prompt_logprobs).
    prompt_logprobs: tuple[PromptTokenLogprob, ...] = ()
    #: Set on the final delta by engines that measure it.
    timing: Timing | None = None
    #: Pieces of tool calls (an upstream passing tools through).
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A batching engine's queue, KV cache and counters, as metrics and /health read them."""

    running: int
    waiting: int
    waiting_tokens: int
    #: Cells holding data in llama.cpp's KV cache (running sequences + prefix-cache entries).
    kv_cells_used: int
    #: Of those, cells kept only as prefix-cache entries (idle slots).
    kv_cells_cached: int
    kv_cells_total: int
    steps: int
    preemptions: int
    #: Sequences accepted into the queue, and those that ran to a finish reason: once nothing
    #: runs or waits, submitted = completed + aborted + queue_timeouts + failed ones.
    submitted: int
    completed: int
    aborted: int
    queue_timeouts: int
    rejected: int
    #: Prompt tokens of admitted sequences, and how many of them came from the prefix cache.
    prompt_tokens: int
    prefix_cache_hit_tokens: int
    prefix_cache_copies: int
    #: Seconds spent in llama_decode, and in sampling and detokenizing after it.
    decode_seconds: float
    sample_seconds: float
    #: The prefix cache's host-RAM tier: hit tokens restored from it, bytes and entries held.
    prefix_cache_host_hit_tokens: int = 0
    host_cache_bytes: int = 0
    host_cache_entries: int = 0
    host_cache_evictions: int = 0
    #: Runs of consecutive seq_ids in the steps' batches, each its own forward pass in
    #: llama.cpp: ``steps`` when the running sequences sit side by side.
    step_seq_runs: int = 0


@dataclass(frozen=True, slots=True)
class EngineHealth:
    state: EngineState
    device: str
    #: What the engine is (model file, URL, command) and its own counters: /health shows them.
    info: Mapping[str, int | float | str] = field(default_factory=dict)
    #: A batching engine's scheduler: what the engine metrics are read from.
    scheduler: SchedulerStats | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What an engine says of the model it serves (clients see it under the config's names)."""

    owned_by: str
    created: int
    max_model_len: int
    #: The sampling values a request gets for the knobs it leaves out, and where each comes from.
    sampling_defaults: SamplingDefaults = SamplingDefaults()


class Engine(Protocol):
    """What the manager needs from an engine."""

    def generate(self, req: GenerationRequest) -> AsyncIterator[TokenDelta]:
        """Stream the sequence's deltas; closing the iterator aborts the sequence."""
        ...

    async def health(self) -> EngineHealth: ...

    def models(self) -> list[ModelCard]: ...

    async def start(self) -> None:
        """Load weights and begin accepting work."""
        ...

    async def stop(self) -> None:
        """Finish or abort in-flight work and free resources."""
        ...


class EngineError(Exception):
    """The engine could not serve the request."""


class InvalidRequestError(EngineError):
    """The request cannot be served as asked (maps to HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus requested completion do not fit the model's context."""

    def __init__(
        self,
        *,
        max_model_len: int,
        prompt_tokens: int,
        max_tokens: int | None,
        at_least: bool = False,
        param: str = "messages",
    ):
        requested = prompt_tokens + (max_tokens or 0)
        # A prompt refused before it was tokenized has a lower bound, not a count.
        some = "at least " if at_least else ""
        if max_tokens is None:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"prompt has {some}{prompt_tokens} tokens, which leaves no room for a "
                "completion. Please reduce the length of the prompt."
            )
        else:
            message = (
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {some}{requested} tokens ({some}{prompt_tokens} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the length of the prompt or "
                "max_tokens."
            )
        super().__init__(message, param=param, code="context_length_exceeded")
        self.max_model_len = max_model_len
        self.prompt_tokens = prompt_tokens


class UpstreamProtocolError(EngineError):
    """An upstream answered with something that is not a valid OpenAI answer (HTTP 502)."""


class EngineUnavailableError(EngineError):
    """The engine cannot take work now (maps to HTTP 503)."""

    def __init__(self, message: str, *, retry_after: float | None = None, overloaded: bool = False):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        #: Busy rather than broken (a full queue): another replica may serve it, but it says
        #: nothing against this one's health.
        self.overloaded = overloaded
