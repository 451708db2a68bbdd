"""/v1/embeddings with the official SDK against the real service: the shipped WordLlama model,
its shape, determinism, cosine sanity, base64, truncation, and bad input refused."""

from __future__ import annotations

import base64
import json

import httpx2
import numpy as np
import openai
import pytest

from tests.conftest import MODEL, Service

pytestmark = pytest.mark.integration

EMBEDDER = "wordllama-l2-supercat"


def test_the_sdk_gets_unit_vectors_in_order(client: openai.OpenAI) -> None:
    texts = ["The cat sleeps on the sofa.", "A kitten naps on the couch.", "Stock prices fell."]
    reply = client.embeddings.create(model=EMBEDDER, input=texts)
    assert reply.model == EMBEDDER
    assert [d.index for d in reply.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0
    # Similar sentences closer than unrelated ones.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    again = client.embeddings.create(model=EMBEDDER, input=texts)
    assert np.array_equal(vectors, np.array([d.embedding for d in again.data]))


def test_a_gguf_model_is_mean_pooled_by_llama_cpp(client: openai.OpenAI) -> None:
    texts = ["The cat sleeps on the sofa.", "A kitten naps on the couch.", "Stock prices fell."]
    reply = client.embeddings.create(model=MODEL, input=texts)
    assert reply.model == MODEL
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 576)  # the bundled model's hidden size
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > max(vectors[0] @ vectors[2], vectors[1] @ vectors[2]) + 0.1
    # one forward pass per text: a text's vector does not depend on what came with it
    alone = client.embeddings.create(model=MODEL, input=texts[2]).data[0].embedding
    assert np.array_equal(np.array(alone), vectors[2])
    encoded = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    raw = base64.b64decode(str(encoded.data[0].embedding))
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), vectors[0].astype(np.float32))
    assert reply.usage.prompt_tokens == client.embeddings.create(
        model=MODEL, input=texts[:2]
    ).usage.prompt_tokens + alone_tokens(client, texts[2])


def alone_tokens(client: openai.OpenAI, text: str) -> int:
    return client.embeddings.create(model=MODEL, input=text).usage.prompt_tokens


def test_float_and_base64_agree_and_dimensions_truncate(service: Service) -> None:
    url = f"{service.base_url}/v1/embeddings"
    body = {"model": EMBEDDER, "input": "Embeddings as floats and as base64."}
    floats = httpx2.post(url, json={**body, "encoding_format": "float"}).json()
    encoded = httpx2.post(url, json={**body, "encoding_format": "base64"}).json()
    vector = np.array(floats["data"][0]["embedding"], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vector, decoded)
    short = httpx2.post(url, json={**body, "dimensions": 64}).json()["data"][0]["embedding"]
    assert len(short) == 64
    expected = vector[:64] / np.linalg.norm(vector[:64])
    assert np.allclose(short, expected, atol=1e-6)


def test_the_model_is_listed_and_retrievable(client: openai.OpenAI) -> None:
    assert EMBEDDER in {m.id for m in client.models.list()}
    assert client.models.retrieve(EMBEDDER).id == EMBEDDER


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"input": []}, "input", 400),
        ({"input": ""}, "input", 400),
        ({"input": ["ok", ""]}, "input", 400),
        ({"input": [1, 2, 3]}, "input", 400),
        ({"input": [[1, 2], [3]]}, "input", 400),
        ({"input": ["x"] * 10_000}, "input", 400),
        ({"input": "word " * 9000}, "input", 400),
        ({"input": "x", "dimensions": 0}, "dimensions", 400),
        ({"input": "x", "dimensions": 257}, "dimensions", 400),
        ({"input": "x", "dimensions": "64"}, "dimensions", 400),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", 400),
        ({"input": "\ud800"}, "input", 400),
        ({"input": "x", "model": "no-such-model"}, "model", 404),
        ({"input": "x", "model": MODEL, "dimensions": 64}, "dimensions", 400),
        ({"input": "word " * 3000, "model": MODEL}, "input", 400),
        ({"input": [[1, 2], [3]], "model": MODEL}, "input", 400),
        ({"input": "<|im_start|>" * 2100, "model": MODEL}, "input", 400),
        ({"input": ["word " * 1000] * 20, "model": MODEL}, "input", 400),
    ],
)
def test_bad_input_is_an_openai_error(
    service: Service, fields: dict[str, object], param: str, status: int
) -> None:
    body = {"model": EMBEDDER, **fields}
    # json.dumps escapes a lone surrogate as JSON allows (\ud800); the client would refuse it.
    r = httpx2.post(
        f"{service.base_url}/v1/embeddings",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if status == 400:
        assert error["param"] == param
    assert httpx2.get(f"{service.base_url}/health").json()["status"] == "ok"
