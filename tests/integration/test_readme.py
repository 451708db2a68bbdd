"""README.md's own example request, parsed out of README.md, answers as a newcomer expects."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
#: A short greeting fits in far fewer; the bundled model with OpenAI's neutral temperature 1
#: rambles on to the context limit.
SHORT_ANSWER_TOKENS = 200


def readme_example() -> tuple[str, dict[str, Any]]:
    """The base_url and the keyword arguments of the README's first chat.completions call."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    for block in blocks:
        base_url, kwargs = None, None
        for node in ast.walk(ast.parse(block)):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name == "OpenAI":
                base_url = next(
                    ast.literal_eval(k.value) for k in node.keywords if k.arg == "base_url"
                )
            elif name.endswith("chat.completions.create"):
                kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        if base_url is not None and kwargs is not None:
            return base_url, kwargs
    raise AssertionError("README.md has no python example calling chat.completions.create")


def test_the_readme_example_points_at_the_default_server() -> None:
    base_url, kwargs = readme_example()
    assert base_url == "http://127.0.0.1:8090/v1"  # what `vllm-service serve` listens on
    # The example leaves sampling to the model's recommended defaults, as a newcomer would.
    assert set(kwargs) == {"model", "messages"}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_readme_example_gets_a_short_answer_that_stops(service: Service, seed: int) -> None:
    _, kwargs = readme_example()
    reply = service.client().chat.completions.create(**kwargs, seed=seed)
    choice = reply.choices[0]
    assert reply.usage is not None
    assert choice.finish_reason == "stop", choice.message.content
    assert 0 < reply.usage.completion_tokens <= SHORT_ANSWER_TOKENS
    assert choice.message.content
    assert choice.message.content.strip()
