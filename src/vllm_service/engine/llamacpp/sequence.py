"""A sequence as the scheduler tracks it, and the slots (KV streams) sequences run in."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from vllm_service.engine.base import PromptTokenLogprob, SamplingParams, Timing, TokenDelta
from vllm_service.engine.llamacpp.sampling import SamplerChain
from vllm_service.engine.llamacpp.text_output import TextOutput

#: Hands one item to a request's reader; called on the event loop's thread.
Deliver = Callable[[TokenDelta | BaseException], None]


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    """Length of the longest common prefix of two token lists (slice compares run in C)."""
    hi = min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    lo = 0  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(eq=False)
class Sequence:
    """One sequence being generated; touched only by the scheduler thread once submitted."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    sampler: SamplerChain
    deliver: Deliver
    text: TextOutput
    tokens: list[int] = field(default_factory=list)
    n_past: int = 0
    slot: Slot | None = None
    batch_index: int = -1
    # Written by the event loop's thread, read by the scheduler's: a plain bool is enough.
    aborted: bool = False
    cached_tokens: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    inter_token_times: list[float] = field(default_factory=list)
    #: Prompt scoring: batch rows whose logits score the next prompt token, and the scores.
    score_rows: list[tuple[int, int]] = field(default_factory=list)
    prompt_scores: list[PromptTokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def scoring(self) -> bool:
        return self.params.prompt_logprobs is not None

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    @property
    def pending(self) -> int:
        """Known tokens not yet in the KV cache."""
        return len(self.tokens) - self.n_past

    def timing(self) -> Timing:
        scheduled = self.scheduled_at if self.scheduled_at is not None else self.submitted_at
        first = self.first_token_at if self.first_token_at is not None else scheduled
        return Timing(
            queue_time=scheduled - self.submitted_at,
            time_to_first_token=first - self.submitted_at,
            inter_token_times=tuple(self.inter_token_times),
            submitted_at=self.submitted_at,
        )


@dataclass(eq=False)
class Slot:
    """One ``seq_id`` and its KV stream: a running sequence, or a prefix-cache entry."""

    seq_id: int
    #: Tokens whose KV the stream holds while the slot is idle.
    cached: list[int] = field(default_factory=list)
    seq: Sequence | None = None
    last_used: int = 0

    def kv_tokens(self) -> list[int]:
        if self.seq is not None:
            return self.seq.tokens[: self.seq.n_past]
        return self.cached
