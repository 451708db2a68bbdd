from __future__ import annotations

import pytest

from vllm_service.config.quality import DEFAULT_CLASS_KEYWORDS
from vllm_service.quality.classify import Classifier


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Write a viral tweet about remote work", "viral_hook"),
        ("Write a Python function that reverses a list", "code"),
        ("Write a haiku about autumn rain", "creative"),
        ("Explain how DNS resolution works", "technical"),
        ("Tell me about the weather", "technical"),  # nothing matched: the default
        ("Fix this:\n```\nprint(1\n```", "code"),
    ],
)
def test_prompts_get_their_class(prompt: str, expected: str) -> None:
    assert Classifier(DEFAULT_CLASS_KEYWORDS).classify(prompt) == expected


def test_keywords_are_configurable() -> None:
    classifier = Classifier({"creative": ["sonnet"], "technical": []})
    assert classifier.classify("A sonnet about the sea") == "creative"
    assert classifier.classify("Write a viral tweet") == "technical"
