"""Usage is added up once, the same way for the response and for the accounting: the choices
of one prompt share its prompt tokens, several prompts add theirs up."""

from __future__ import annotations

import time

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Service

pytestmark = pytest.mark.integration


def settled(service: Service, name: str, expected: float) -> float:
    """The counter once it reaches ``expected`` (bounded wait): a request is accounted just
    after its last byte, which the client may have read already."""
    deadline = time.monotonic() + 20
    value = counter(service, name)
    while value < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        value = counter(service, name)
    return value


def quiet(service: Service, name: str) -> float:
    """The counter once earlier requests' accounting has landed (two equal reads)."""
    value, previous = counter(service, name), -1.0
    while value != previous:
        time.sleep(0.1)
        value, previous = counter(service, name), value
    return value


def counter(service: Service, name: str) -> float:
    text = httpx2.get(f"{service.base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == MODEL:
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("stream", [False, True])
def test_a_multi_prompt_completion_accounts_every_prompt(service: Service, stream: bool) -> None:
    prompts = ["The sea is", "A very long time ago, in a small village by the mountains,"]
    body = {"model": MODEL, "prompt": prompts, "n": 2, "max_tokens": 3, "temperature": 0}
    before = quiet(service, "vllm_prompt_tokens_total")
    client = service.client()
    if stream:
        chunks = list(
            client.completions.create(**body, stream=True, stream_options={"include_usage": True})
        )
        usage = chunks[-1].usage
    else:
        usage = client.completions.create(**body).usage
    assert usage is not None
    singles = [client.completions.create(**{**body, "prompt": p, "n": 1}).usage for p in prompts]
    # Each prompt once (not once per choice, not only the last one).
    assert usage.prompt_tokens == sum(u.prompt_tokens for u in singles if u is not None)
    assert usage.completion_tokens == 2 * 2 * 3
    # The request record (metrics, request log) counts what the response says.
    expected = usage.prompt_tokens + sum(u.prompt_tokens for u in singles if u)
    accounted = settled(service, "vllm_prompt_tokens_total", before + expected) - before
    assert accounted == expected


def test_completions_report_prefix_cache_hits(service: Service) -> None:
    prompt = "Once upon a time there was a lighthouse keeper who " * 4
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0}
    client = service.client()
    client.completions.create(**body)
    usage = client.completions.create(**body).usage
    assert usage is not None
    details = usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens is not None
    assert details.cached_tokens > 0


def test_chat_choices_share_their_prompt(service: Service) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a color."}]}
    client = service.client()
    before = quiet(service, "vllm_prompt_tokens_total")
    three = client.chat.completions.create(**body, n=3, max_tokens=2, seed=1).usage
    one = client.chat.completions.create(**body, max_tokens=2, seed=1).usage
    assert three is not None
    assert one is not None
    assert three.prompt_tokens == one.prompt_tokens
    expected = three.prompt_tokens + one.prompt_tokens
    after = settled(service, "vllm_prompt_tokens_total", before + expected)
    assert after - before == expected
