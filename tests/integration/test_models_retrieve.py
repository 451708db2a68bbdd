"""OpenAI's models.retrieve, and content parts a text-only model cannot take."""

from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALIAS, MODEL, Service
from vllm_service.api.app import create_app
from vllm_service.config import load_settings

pytestmark = pytest.mark.integration


def test_the_sdk_retrieves_a_model_by_name_or_alias(service: Service) -> None:
    client = service.client()
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object) == (MODEL, "model")
    alias = client.models.retrieve(ALIAS)
    assert alias.id == ALIAS
    assert alias.model_dump()["root"] == MODEL
    listed = {m.id: m.model_dump() for m in client.models.list()}
    assert alias.model_dump() == listed[ALIAS]


def test_an_unknown_model_is_a_404_model_not_found(service: Service) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        service.client().models.retrieve("no-such-model")
    assert raised.value.code == "model_not_found"


def test_model_ids_may_contain_slashes() -> None:
    upstream = {"base_url": "http://127.0.0.1:9/v1", "model": "x"}
    settings = load_settings(
        None, models=[{"name": "meta-llama/Llama-3-8B", "engine": "upstream", "options": upstream}]
    )
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/models/meta-llama/Llama-3-8B")
        assert r.status_code == 200
        assert r.json()["id"] == "meta-llama/Llama-3-8B"
        missing = client.get("/v1/models/meta-llama/Other")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"


def test_an_image_part_is_refused_naming_its_type(service: Service) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as raised:
        service.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
        )
    error = raised.value.body
    assert isinstance(error, dict)
    assert "image_url" in error["message"]
    assert error["param"] == "messages.0.content.1"


@pytest.mark.parametrize("kind", [{}, ["image_url"], None, 3])
def test_a_part_type_that_is_no_string_is_a_400(service: Service, kind: object) -> None:
    import httpx2

    body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": kind, "text": ""}]}]}
    r = httpx2.post(f"{service.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
