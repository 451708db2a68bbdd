"""Evaluation datasets: JSON Lines, one item per line.

Each line is an object with ``prompt`` (a string) or ``messages`` (OpenAI chat messages), and
optionally ``id``, ``reference`` (the expected answer; else a reference endpoint answers),
``class`` (viral_hook, technical, code, creative; else classified from the prompt),
``max_tokens`` and ``response_format``. Blank lines and lines starting with ``//`` are skipped.
A malformed line is an error that names it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vllm_service.config.quality import ContentClass

#: Items a dataset may hold (each is a request to every endpoint).
MAX_ITEMS = 10_000


class DatasetError(ValueError):
    """A dataset that cannot be evaluated; the message names the file and line."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1)
    content: str


class EvalItem(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str | None = Field(default=None, max_length=200)
    prompt: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    reference: str | None = None
    content_class: ContentClass | None = Field(default=None, alias="class")
    max_tokens: int = Field(default=256, ge=1, le=8192)
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> EvalItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        if self.reference is not None and not self.reference.strip():
            raise ValueError("'reference' is empty (leave it out to ask a reference endpoint)")
        return self

    @property
    def chat(self) -> list[dict[str, Any]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt}]

    @property
    def prompt_text(self) -> str:
        """The text the content class and the structure checks read: the last user turn."""
        if self.prompt is not None:
            return self.prompt
        users = [m.content for m in self.messages or [] if m.role == "user"]
        return users[-1] if users else ""

    @property
    def json_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format or {}
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None


def shipped_dataset() -> Path:
    """The evaluation set that ships with the package."""
    return Path(str(resources.files("vllm_service.quality").joinpath("data/eval_set.jsonl")))


def load_dataset(path: Path) -> list[EvalItem]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    items: list[EvalItem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{path}, line {number}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise DatasetError(f"{path}, line {number}: expected an object")
        try:
            item = EvalItem.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise DatasetError(f"{path}, line {number}: {where}: {first['msg']}") from None
        items.append(item.model_copy(update={"id": item.id or f"line-{number}"}))
        if len(items) > MAX_ITEMS:
            raise DatasetError(f"{path}: more than {MAX_ITEMS} items")
    if not items:
        raise DatasetError(f"{path}: no items")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: item ids repeat")
    return items
