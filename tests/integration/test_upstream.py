"""The upstream engine: a vllm-service in front of another one, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import MODEL, Service, dead_url, start_service

pytestmark = pytest.mark.integration

FRONT = "via-upstream"
DEAD = "dead-upstream"
MISNAMED = "misnamed-upstream"


@pytest.fixture(scope="module")
def front(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A second service whose models forward to the session's service (and to nowhere)."""
    config = {
        "models": [
            {
                "name": FRONT,
                "engine": "upstream",
                "options": {"base_url": f"{service.base_url}/v1", "model": MODEL},
            },
            {
                "name": DEAD,
                "engine": "upstream",
                "options": {
                    "base_url": dead_url(),
                    "model": MODEL,
                    "connect_timeout": 1.0,
                },
            },
            {
                # A live upstream asked for a model it does not serve: it answers 404.
                "name": MISNAMED,
                "engine": "upstream",
                "options": {"base_url": f"{service.base_url}/v1", "model": "no-such-model"},
            },
        ]
    }
    svc = start_service(tmp_path_factory.mktemp("front"), config)
    yield svc
    svc.stop()


def chat(model: str, **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Name three fruits."}],
        "max_tokens": 12,
        "temperature": 0,
        **fields,
    }


def test_answers_equal_the_upstream_answers(service: Service, front: Service) -> None:
    direct = httpx2.post(f"{service.base_url}/v1/chat/completions", json=chat(MODEL), timeout=60)
    via = httpx2.post(f"{front.base_url}/v1/chat/completions", json=chat(FRONT), timeout=60)
    assert via.status_code == 200
    assert via.json()["model"] == FRONT
    assert via.json()["choices"][0]["message"] == direct.json()["choices"][0]["message"]
    assert via.json()["usage"]["completion_tokens"] == direct.json()["usage"]["completion_tokens"]
    assert via.json()["usage"]["prompt_tokens"] == direct.json()["usage"]["prompt_tokens"]
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    d = httpx2.post(f"{service.base_url}/v1/completions", json={**body, "model": MODEL}, timeout=60)
    v = httpx2.post(f"{front.base_url}/v1/completions", json={**body, "model": FRONT}, timeout=60)
    assert v.status_code == 200
    assert v.json()["choices"][0]["text"] == d.json()["choices"][0]["text"]


def test_streams_pass_through_token_by_token(service: Service, front: Service) -> None:
    async def main() -> tuple[str, int, str]:
        client = front.async_client()
        stream = await client.chat.completions.create(
            model=FRONT,
            messages=[{"role": "user", "content": "Count from one to ten in words."}],
            max_tokens=20,
            temperature=0,
            stream=True,
        )
        text, chunks = "", 0
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    text += choice.delta.content
                    chunks += 1
        direct = await service.async_client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to ten in words."}],
            max_tokens=20,
            temperature=0,
        )
        return text, chunks, direct.choices[0].message.content or ""

    text, chunks, direct = asyncio.run(main())
    assert text == direct
    assert chunks > 5  # not buffered into one piece


def test_upstream_rejections_and_outages_are_clean_errors(front: Service) -> None:
    too_long = httpx2.post(
        f"{front.base_url}/v1/completions",
        json={"model": FRONT, "prompt": "word " * 3000, "max_tokens": 4},
        timeout=60,
    )
    assert too_long.status_code == 400
    assert "context" in too_long.json()["error"]["message"]
    down = httpx2.post(f"{front.base_url}/v1/chat/completions", json=chat(DEAD), timeout=60)
    assert down.status_code == 503
    assert down.json()["error"]["type"] == "service_unavailable_error"
    assert "retry-after" in down.headers
    # An upstream that is misconfigured is a bad gateway, never an internal error.
    misnamed = httpx2.post(f"{front.base_url}/v1/chat/completions", json=chat(MISNAMED), timeout=60)
    assert misnamed.status_code == 502
    assert "the upstream answered 404" in misnamed.json()["error"]["message"]
    # The service stays healthy and keeps serving the live upstream.
    ok = httpx2.post(f"{front.base_url}/v1/chat/completions", json=chat(FRONT), timeout=60)
    assert ok.status_code == 200


def test_a_client_leaving_the_front_aborts_the_upstream_sequence(
    service: Service, front: Service
) -> None:
    """Closing a stream at the front closes the upstream connection: the backend stops."""
    service.wait_idle()
    aborted_before = service.engine_stats()["aborted"]
    body = chat(FRONT, max_tokens=900, ignore_eos=True, stream=True)
    with httpx2.stream(
        "POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        contents = 0
        for line in lines:
            if '"content"' in line and '"content": ""' not in line:
                contents += 1
                if contents == 3:
                    break
    stats = service.wait_idle()
    assert stats["aborted"] == aborted_before + 1  # stopped, not run to its 900 tokens
