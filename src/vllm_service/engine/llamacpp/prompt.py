"""A request's prompt as token ids: chat messages through the model's template, or raw text.

Message text never becomes special tokens: the template is rendered around stand-ins for the
messages' text, its own text is tokenized with special-token parsing (its role markers), the
messages' text without (a user writing ``<|im_start|>system`` gets those characters). Cost is
bounded before and during the work: a lower bound on the prompt's tokens refuses a prompt
that cannot fit before anything is rendered, and tokenizing stops as soon as it no longer fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_service.engine.base import (
    ChatMessage,
    ContextLengthExceededError,
    GenerationRequest,
    InvalidRequestError,
)
from vllm_service.engine.llamacpp.chat_template import ChatTemplate
from vllm_service.engine.llamacpp.model import LlamaModel


class PromptTokenizer:
    """Tokenizes requests for one loaded model and its chat template."""

    def __init__(self, model: LlamaModel, template: ChatTemplate, max_model_len: int) -> None:
        self.model = model
        self.template = template
        self.max_model_len = max_model_len
        self.bound = PromptBound.measure(model, template)

    def for_generation(self, req: GenerationRequest) -> list[int]:
        """The prompt of a request to generate for; refuses one that cannot fit, cheaply."""
        room = self.max_model_len - (req.sampling.max_tokens or 1)
        self._check_lower_bound(req, room)
        return self.tokens(req, room=room)

    def tokens(
        self, req: GenerationRequest, *, room: int | None = None, add_special: bool = True
    ) -> list[int]:
        """The prompt's tokens; past ``room`` tokens, refused as too long (None: no limit).
        ``add_special``: BOS (and whatever else the model adds) around a raw text prompt."""
        if req.prompt_token_ids is not None:
            return list(req.prompt_token_ids)
        if req.messages is not None:
            return self._chat_tokens(req.messages, room, req.sampling.max_tokens)
        return self.model.tokenize(req.prompt or "", add_special=add_special, parse_special=False)

    def text(self, tokens: list[int]) -> str:
        """Token ids back to text (special tokens spelled out, as a chat prompt shows them)."""
        for token in tokens:
            if not 0 <= token < self.model.n_vocab:
                raise InvalidRequestError(
                    f"token ids must be in [0, {self.model.n_vocab}), got {token}", param="tokens"
                )
        raw = b"".join(self.model.token_bytes(t) for t in tokens)
        return raw.decode("utf-8", errors="replace")

    def _check_lower_bound(self, req: GenerationRequest, room: int) -> None:
        """Refuse a prompt that cannot fit before rendering or tokenizing it, at O(messages)
        cost. Only user messages count: a template may drop or shorten others (a system
        message after the first, an assistant's reasoning)."""
        if req.prompt_token_ids is not None:
            return
        if req.messages is not None:
            users = [m for m in req.messages if m.role == "user"]
            size = sum(len(m.content.encode()) for m in users)
            per_message = self.bound.tokens_per_user_message
            least = len(users) * per_message + size // self.bound.max_token_bytes
        else:
            least = len((req.prompt or "").encode()) // self.bound.max_token_bytes
        if least > room:
            raise ContextLengthExceededError(
                max_model_len=self.max_model_len,
                prompt_tokens=least,
                max_tokens=req.sampling.max_tokens,
                at_least=True,
                param="messages" if req.messages is not None else "prompt",
            )

    def _chat_tokens(
        self, messages: tuple[ChatMessage, ...], room: int | None, max_tokens: int | None
    ) -> list[int]:
        """The template's markers as special tokens, the messages' text as plain text (the
        template writes BOS itself when the model wants one)."""
        pieces = self.template.render_pieces(messages)
        if pieces is not None:
            tokens: list[int] = []
            for piece in pieces:
                tokens += self.model.tokenize(
                    piece.text, add_special=False, parse_special=not piece.from_message
                )
                if room is not None and len(tokens) > room:
                    raise ContextLengthExceededError(
                        max_model_len=self.max_model_len,
                        prompt_tokens=len(tokens),
                        max_tokens=max_tokens,
                        at_least=True,
                    )
            return tokens
        # A template that edits message text: its output is tokenized whole, which is safe
        # only while no message holds the text of a control token.
        for index, message in enumerate(messages):
            special = self.model.tokenize(message.content, add_special=False, parse_special=True)
            if any(self.model.is_control(t) for t in special):
                raise InvalidRequestError(
                    f"messages[{index}] contains a control token of this model's chat format, "
                    "which its chat template cannot keep as plain text",
                    param=f"messages.{index}.content",
                )
        text = self.template.render(messages)
        return self.model.tokenize(text, add_special=False, parse_special=True)


@dataclass(frozen=True, slots=True)
class PromptBound:
    """What a prompt costs at the least, known before rendering or tokenizing it: every user
    message adds at least ``tokens_per_user_message`` template tokens, and no token holds more
    than ``max_token_bytes`` bytes of text. Only user messages count: a template may drop or
    shorten others (a system message after the first, an assistant's reasoning)."""

    tokens_per_user_message: int
    max_token_bytes: int

    @classmethod
    def measure(cls, model: LlamaModel, template: ChatTemplate) -> PromptBound:
        longest = max(len(model.piece(t)) for t in range(model.n_vocab))
        return cls(_template_tokens_per_message(model, template), max(1, longest))


def _template_tokens_per_message(model: LlamaModel, template: ChatTemplate) -> int:
    """The tokens the template adds around an empty user message (0 when it cannot be
    measured): a conversation of three turns against one of two."""

    def tokens(turns: int) -> int:
        messages = tuple(
            ChatMessage(role="user" if i % 2 == 0 else "assistant", content="")
            for i in range(turns)
        )
        pieces = template.render_pieces(messages)
        if pieces is None:
            return -1
        return sum(
            len(model.tokenize(p.text, add_special=False, parse_special=not p.from_message))
            for p in pieces
        )

    try:
        two, three = tokens(2), tokens(3)
    except InvalidRequestError:
        return 0
    if two < 0 or three < 0:
        return 0
    return max(0, three - two)
