"""A request's token usage, added up over its choices."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_service.engine.base import Usage


@dataclass
class UsageTally:
    """Usage of a request's choices: the choices of one prompt share its prompt tokens
    (counted once per prompt, as OpenAI bills them), completion tokens add up.

    Choice ``k`` belongs to prompt ``k // choices_per_prompt`` (the order of /v1/completions:
    every prompt's ``n`` choices together); unset, every choice shares one prompt (chat).
    """

    choices_per_prompt: int | None = None
    completion_tokens: int = 0
    #: Some choice's usage was estimated, not counted (an upstream that sent none).
    estimated: bool = False
    #: Per prompt: its prompt tokens, and the most of them any of its choices found cached.
    _prompts: dict[int, tuple[int, int]] = field(default_factory=dict)

    def add(self, choice: int, usage: Usage) -> None:
        group = 0 if self.choices_per_prompt is None else choice // self.choices_per_prompt
        prompt, cached = self._prompts.get(group, (0, 0))
        self._prompts[group] = (max(prompt, usage.prompt_tokens), max(cached, usage.cached_tokens))
        self.completion_tokens += usage.completion_tokens
        self.estimated = self.estimated or usage.estimated

    @property
    def prompt_tokens(self) -> int:
        return sum(prompt for prompt, _ in self._prompts.values())

    @property
    def cached_tokens(self) -> int:
        return sum(cached for _, cached in self._prompts.values())
