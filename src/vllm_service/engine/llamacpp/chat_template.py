"""Rendering chat messages into a prompt with the model's own Jinja chat template."""

from __future__ import annotations

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
        rendered = [
            {
                "role": "system" if m.role == "developer" and not self._knows_developer else m.role,
                "content": m.content,
            }
            for m in messages
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
