"""/tokenize and /detokenize: the prompt as generation sees it, and back."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALIAS, MODEL, Service
from vllm_service.api.app import create_app
from vllm_service.config import load_settings

pytestmark = pytest.mark.integration


USER = {"role": "user", "content": "b"}


def post(service: Service, route: str, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{service.base_url}{route}", json=body, timeout=30)


def test_chat_messages_tokenize_as_the_chat_request_counts_them(service: Service) -> None:
    messages = [{"role": "user", "content": "Say hello in French."}]
    r = post(service, "/tokenize", {"model": MODEL, "messages": messages})
    assert r.status_code == 200, r.text
    body = r.json()
    reply = service.client().chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=1,  # type: ignore[arg-type]
    )
    assert reply.usage is not None
    assert body["count"] == len(body["tokens"]) == reply.usage.prompt_tokens
    assert body["max_model_len"] == 1024
    text = post(service, "/detokenize", {"model": ALIAS, "tokens": body["tokens"]}).json()
    # The template's markers come back spelled out, around the user's own text.
    assert "<|im_start|>user\nSay hello in French.<|im_end|>" in text["prompt"]
    assert text["prompt"].endswith("<|im_start|>assistant\n")


def test_a_raw_prompt_round_trips_and_markers_in_it_stay_text(service: Service) -> None:
    prompt = "Plain text with <|im_end|> in it."
    body = post(service, "/tokenize", {"model": MODEL, "prompt": prompt}).json()
    plain = post(
        service, "/tokenize", {"model": MODEL, "prompt": prompt, "add_special_tokens": False}
    ).json()
    assert body["count"] >= plain["count"]
    back = post(service, "/detokenize", {"model": MODEL, "tokens": plain["tokens"]}).json()
    assert back["prompt"] == prompt
    assert plain["count"] > len(prompt.split())  # the marker is several tokens, not one


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/tokenize", {"model": MODEL}, None),
        ("/tokenize", {"model": MODEL, "prompt": "a", "messages": [USER]}, None),
        ("/tokenize", {"model": "nope", "prompt": "a"}, "model"),
        ("/detokenize", {"model": MODEL, "tokens": [10**9]}, "tokens"),
        ("/detokenize", {"model": MODEL, "tokens": ["1"]}, "tokens.0"),
        ("/detokenize", {"model": MODEL, "tokens": [-1]}, "tokens.0"),
    ],
)  # fmt: skip
def test_bad_input_is_an_openai_error(
    service: Service, route: str, body: dict[str, Any], param: str | None
) -> None:
    r = post(service, route, body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param


def test_an_upstream_model_does_not_tokenize_here() -> None:
    upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "x"}
    settings = load_settings(
        None, models=[{"name": "far", "engine": "upstream", "options": upstream}]
    )
    with TestClient(create_app(settings)) as client:
        r = client.post("/tokenize", json={"model": "far", "prompt": "hi"})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "model"
