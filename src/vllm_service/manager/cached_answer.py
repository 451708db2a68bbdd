"""What the response cache stores and how a request asks for it: a finished answer (encoded
compactly, replayed as one delta), where it lives, and the client's Cache-Control."""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from typing import Any

from vllm_service.engine import FinishReason, TokenDelta
from vllm_service.engine.base import TokenLogprob, TopLogprob, Usage


class CacheControl(enum.Enum):
    """What the client's ``Cache-Control`` header asks of the cache."""

    USE = "use"  # read, and store a miss
    REFRESH = "refresh"  # no-cache: do not read, store the new answer
    BYPASS = "bypass"  # no-store: neither read nor store

    @classmethod
    def from_header(cls, value: str | None) -> CacheControl:
        if not value:
            return cls.USE
        directives = {d.strip().lower() for d in value.split(",")}
        if "no-store" in directives:
            return cls.BYPASS
        if "no-cache" in directives or "max-age=0" in directives:
            return cls.REFRESH
        return cls.USE


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One finished sequence, as it is stored and replayed."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] = ()

    def delta(self) -> TokenDelta:
        """The whole answer as one final delta."""
        return TokenDelta(
            text=self.text,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            usage=self.usage,
        )

    def encode(self) -> bytes:
        u = self.usage
        body: dict[str, Any] = {
            "t": self.text,
            "f": self.finish_reason.value,
            "u": [u.prompt_tokens, u.completion_tokens, u.cached_tokens],
        }
        if self.logprobs:
            body["l"] = [
                [
                    lp.token,
                    lp.logprob,
                    _b64(lp.token_bytes),
                    [[t.token, t.logprob, _b64(t.token_bytes)] for t in lp.top],
                ]
                for lp in self.logprobs
            ]
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer:
        body = json.loads(raw)
        p, c, cached = body["u"]
        return cls(
            text=body["t"],
            finish_reason=FinishReason(body["f"]),
            usage=Usage(prompt_tokens=p, completion_tokens=c, cached_tokens=cached),
            logprobs=tuple(
                TokenLogprob(
                    token=token,
                    logprob=logprob,
                    token_bytes=base64.b64decode(raw_bytes),
                    top=tuple(TopLogprob(t, lp, base64.b64decode(b)) for t, lp, b in top),
                )
                for token, logprob, raw_bytes, top in body.get("l", [])
            ),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class AnswerRecorder:
    """Collects a sequence's deltas; ``answer`` is set once it finished normally."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self.answer: CachedAnswer | None = None

    def add(self, delta: TokenDelta) -> None:
        self._text.append(delta.text)
        self._logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None and delta.usage is not None:
            self.answer = CachedAnswer(
                text="".join(self._text),
                finish_reason=delta.finish_reason,
                usage=delta.usage,
                logprobs=tuple(self._logprobs),
            )


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """Where one sequence's answer lives in the cache."""

    model: str
    key: str
    ttl: float
    #: Semantic lookups: the context (everything but the last message) and the last message.
    context: str | None = None
    question: str | None = None
