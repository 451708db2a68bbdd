"""What a step's sampled tokens become: each sequence's delta (text, logprobs, its end)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm_service.engine.base import (
    FinishReason,
    PromptTokenLogprob,
    TokenDelta,
    TokenLogprob,
    Usage,
)
from vllm_service.engine.llamacpp.model import LlamaModel
from vllm_service.engine.llamacpp.sampling import token_logprob
from vllm_service.engine.llamacpp.sequence import Sequence


def scored_prompt_delta(seq: Sequence) -> TokenDelta:
    """The one delta of a sequence that asked for no completion (max_tokens 0): its prompt's
    scores."""
    return TokenDelta(
        text="",
        finish_reason=FinishReason.LENGTH,
        usage=Usage(prompt_tokens=len(seq.prompt), completion_tokens=0),
        timing=seq.timing(),
        prompt_logprobs=tuple(seq.prompt_scores),
    )


class OutputWriter:
    """Turns sampled tokens into deltas, reading logprobs from the context's last logits."""

    def __init__(self, model: LlamaModel, ctx: Any) -> None:
        self._model = model
        self._ctx = ctx

    def score_prompt(self, seq: Sequence) -> None:
        """Each scored row's logits give the log-probability of the prompt token after it."""
        n_top = seq.params.prompt_logprobs or 0
        if not seq.prompt_scores:
            first = self._model.token_text(seq.prompt[0])
            seq.prompt_scores.append(PromptTokenLogprob(token=first, logprob=None))
        for row, position in seq.score_rows:
            if position + 1 < len(seq.prompt):
                lp = token_logprob(self._model, self._ctx, row, seq.prompt[position + 1], n_top)
                seq.prompt_scores.append(PromptTokenLogprob(lp.token, lp.logprob, lp.top))
        seq.score_rows.clear()

    def accept(self, seq: Sequence, token: int, now: float) -> TokenDelta:
        """Append a sampled token to its sequence; its delta, with a finish reason, usage and
        timing when this token ended it."""
        scores: tuple[PromptTokenLogprob, ...] = ()
        if seq.first_token_at is None:
            seq.first_token_at = now
            scores = tuple(seq.prompt_scores)
        else:
            seq.inter_token_times.append(now - seq.last_token_at)
        seq.last_token_at = now
        logprobs: tuple[TokenLogprob, ...] = ()
        if seq.params.logprobs is not None:
            logprobs = (
                token_logprob(self._model, self._ctx, seq.batch_index, token, seq.params.logprobs),
            )
        seq.tokens.append(token)
        text, finish = self._text(seq, token)
        if finish is None:
            return TokenDelta(
                text=text, token_ids=(token,), logprobs=logprobs, prompt_logprobs=scores
            )
        return TokenDelta(
            text=text,
            token_ids=(token,),
            logprobs=logprobs,
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.n_generated,
                cached_tokens=seq.cached_tokens,
            ),
            timing=seq.timing(),
            prompt_logprobs=scores,
        )

    def _text(self, seq: Sequence, token: int) -> tuple[str, FinishReason | None]:
        """The text the token adds (held back while it may begin a stop string), and whether
        it ended the sequence: end of generation, a stop string, or max_tokens."""
        if self._model.is_end_of_generation(token) and not seq.params.ignore_eos:
            return seq.text.finish(), FinishReason.STOP
        step = seq.text.push(self._model.piece(token))
        if step.stopped:
            return step.text, FinishReason.STOP
        if seq.n_generated >= seq.max_tokens:
            return step.text + seq.text.finish(), FinishReason.LENGTH
        return step.text, None


class Outbox:
    """The deltas of one step, handed to the event loop in order, in one callback (one wake-up
    per step instead of one per sequence)."""

    def __init__(self, post: Callable[[Callable[[], None]], object]) -> None:
        self._post = post
        self._items: list[tuple[Sequence, TokenDelta | BaseException]] = []

    def send(self, seq: Sequence, item: TokenDelta | BaseException) -> None:
        self._items.append((seq, item))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []

        def deliver() -> None:
            for seq, item in items:
                seq.deliver(item)

        try:
            self._post(deliver)
        except RuntimeError:
            # The event loop is gone (shutdown); nobody is left to read these.
            for seq, _ in items:
                seq.aborted = True
