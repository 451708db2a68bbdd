"""The model manager over real processes: replicas, circuit breakers, retries, fallbacks."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import httpx2
import openai
import pytest

from tests.conftest import MODEL, Service, dead_url, start_service

pytestmark = pytest.mark.integration


def upstream(name: str, base_url: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "engine": "upstream",
        "options": {"base_url": base_url, "model": MODEL, "connect_timeout": 1.0},
        "breaker": {"failure_threshold": 2, "recovery_timeout": 600},
        "retry": {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05},
        **extra,
    }


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A backend this module may kill."""
    config = {"models": [{"name": MODEL, "options": {"max_model_len": 1024, "max_num_seqs": 2}}]}
    svc = start_service(tmp_path_factory.mktemp("backend"), config)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def router(
    service: Service, backend: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    live = f"{service.base_url}/v1"
    dead = dead_url()
    config = {
        "models": [
            upstream("pair", dead),
            upstream("pair", live),
            upstream("primary", dead, fallbacks=["backup"]),
            upstream("backup", live),
            upstream("lonely", dead),
            upstream("fragile", f"{backend.base_url}/v1"),
        ]
    }
    svc = start_service(tmp_path_factory.mktemp("router"), config)
    yield svc
    svc.stop()


def chat(model: str, **fields: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 6,
        "temperature": 0,
        **fields,
    }


def health(svc: Service) -> dict[str, dict[str, object]]:
    engines: dict[str, dict[str, object]] = httpx2.get(f"{svc.base_url}/health").json()["engines"]
    return engines


def test_a_dead_replica_is_retried_around_then_cut_off(service: Service, router: Service) -> None:
    direct = httpx2.post(f"{service.base_url}/v1/chat/completions", json=chat(MODEL), timeout=60)
    for _ in range(4):
        r = httpx2.post(f"{router.base_url}/v1/chat/completions", json=chat("pair"), timeout=60)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"] == direct.json()["choices"][0]["message"]
        assert r.headers["x-vllm-service-deployment"] == "pair#1"
        assert r.headers["x-vllm-service-fallback"] == "false"
    engines = health(router)
    dead, live = engines["pair"], engines["pair#1"]
    # Two connection failures opened the dead replica's breaker; after that it was skipped.
    assert dead["attempts_failure"] == 2
    assert dead["breaker"] == "open"
    assert dead["breaker_opened"] == 1
    assert dead["attempts_rejected"] == 2
    assert live["attempts_success"] == 4
    assert live["breaker"] == "closed"
    metrics = httpx2.get(f"{router.base_url}/metrics").text
    assert 'vllm_circuit_breaker_state{deployment="pair"} 2.0' in metrics
    assert 'vllm_circuit_breaker_open_total{deployment="pair"} 1.0' in metrics
    assert 'vllm_upstream_attempts_total{deployment="pair#1",outcome="success"} 4.0' in metrics


def test_client_errors_never_trip_a_breaker(router: Service) -> None:
    before = health(router)["pair#1"]
    for _ in range(3):
        r = httpx2.post(
            f"{router.base_url}/v1/completions",
            json={"model": "pair", "prompt": "word " * 3000, "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 400
    after = health(router)["pair#1"]
    assert after["breaker"] == "closed"
    assert after.get("attempts_failure", 0) == before.get("attempts_failure", 0)
    assert after["attempts_client_error"] == before.get("attempts_client_error", 0) + 3


def test_fallback_model_answers_when_every_deployment_fails(router: Service) -> None:
    r = httpx2.post(f"{router.base_url}/v1/chat/completions", json=chat("primary"), timeout=60)
    assert r.status_code == 200
    assert r.json()["model"] == "primary"
    assert r.headers["x-vllm-service-deployment"] == "backup"
    assert r.headers["x-vllm-service-fallback"] == "true"
    streamed = httpx2.post(
        f"{router.base_url}/v1/chat/completions", json=chat("primary", stream=True), timeout=60
    )
    assert streamed.headers["x-vllm-service-deployment"] == "backup"
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert health(router)["backup"]["attempts_success"] >= 1


def test_no_deployment_left_is_a_clean_503(router: Service) -> None:
    r = httpx2.post(f"{router.base_url}/v1/chat/completions", json=chat("lonely"), timeout=60)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable_error"
    assert "retry-after" in r.headers
    assert httpx2.get(f"{router.base_url}/health").json()["status"] == "ok"


def test_an_upstream_dying_mid_stream_ends_the_stream_with_an_error(
    router: Service, backend: Service
) -> None:
    async def main() -> tuple[int, BaseException | None]:
        client = router.async_client()
        stream = await client.chat.completions.create(
            model="fragile",
            messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=400,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        received, error = 0, None
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received += 1
                if received == 5:
                    backend.process.send_signal(signal.SIGKILL)
        except openai.APIError as exc:
            error = exc
        return received, error

    received, error = asyncio.run(main())
    assert received >= 5
    assert error is not None  # the SDK surfaces the error event; nothing was retried
    fragile = health(router)["fragile"]
    assert fragile["attempts_failure"] == 1
    assert fragile.get("attempts_success", 0) == 0
