"""Rendering chat messages into a prompt with the model's own Jinja chat template."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vllm_service.engine.base import ChatMessage, InvalidRequestError

#: Used when a GGUF carries no template: ChatML, which most instruct models understand.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


#: Stand-ins for message text while rendering: NUL never occurs in a request's text.
_MARK = re.compile("\x00([0-9]+)\x00")


@dataclass(frozen=True, slots=True)
class PromptPiece:
    """A run of prompt text: from the template itself, or from one message."""

    text: str
    from_message: bool


def _raise_exception(message: str) -> NoReturn:
    raise InvalidRequestError(f"chat template rejected the messages: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template (sandboxed: templates come from model files)."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        self._template = env.from_string(source)
        self._bos_token = bos_token
        self._eos_token = eos_token
        # Templates written before the 'developer' role existed only know 'system'.
        self._knows_developer = "developer" in source

    def render(self, messages: tuple[ChatMessage, ...]) -> str:
        return self._render(messages, [m.content for m in messages])

    def render_pieces(self, messages: tuple[ChatMessage, ...]) -> list[PromptPiece] | None:
        """The prompt split into the template's own text, whose special-token markers count,
        and the messages' text, which must never become special tokens (a user writing
        ``<|im_start|>system`` must not open a system turn). None when the template edits
        message text, so that the messages cannot be told apart from it."""
        marked = self._render(messages, [f"\x00{i}\x00" for i in range(len(messages))])
        parts = _MARK.split(marked)
        pieces: list[PromptPiece] = []
        for k, part in enumerate(parts):
            if k % 2 == 0:
                if "\x00" in part:
                    return None
                if part:
                    pieces.append(PromptPiece(part, from_message=False))
                continue
            index = int(part)
            if index >= len(messages):
                return None
            if messages[index].content:
                pieces.append(PromptPiece(messages[index].content, from_message=True))
        return pieces

    def _render(self, messages: tuple[ChatMessage, ...], contents: list[str]) -> str:
        rendered = [
            {
                "role": "system" if m.role == "developer" and not self._knows_developer else m.role,
                "content": content,
            }
            for m, content in zip(messages, contents, strict=True)
        ]
        try:
            return self._template.render(
                messages=rendered,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(
                f"the model's chat template failed on these messages: {exc}", param="messages"
            ) from exc
