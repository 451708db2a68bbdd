"""Bad input gets an OpenAI error body with OpenAI's status, and the service stays healthy."""

from __future__ import annotations

import json

import httpx2
import pytest

from tests.conftest import MODEL, Service

pytestmark = pytest.mark.integration

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: object) -> dict[str, object]:
    return {"model": MODEL, "messages": OK_MESSAGES, "max_tokens": 2, **fields}


CASES = {
    "malformed_json": (b'{"model": "x", "messages": [', "application/json", 400),
    "non_object_body": (b"[1, 2, 3]", "application/json", 400),
    "wrong_content_type": (json.dumps(chat()).encode(), "text/plain", 400),
    "missing_messages": (json.dumps({"model": MODEL}).encode(), "application/json", 400),
    "empty_messages": (json.dumps(chat(messages=[])).encode(), "application/json", 400),
    "bad_role": (
        json.dumps(chat(messages=[{"role": "wizard", "content": "hi"}])).encode(),
        "application/json",
        400,
    ),
    "nul_byte": (
        json.dumps(chat(messages=[{"role": "user", "content": "a\u0000b"}])).encode(),
        "application/json",
        400,
    ),
    "wrong_type": (
        json.dumps(chat(messages=[{"role": "user", "content": 42}])).encode(),
        "application/json",
        400,
    ),
    "temperature_5": (json.dumps(chat(temperature=5)).encode(), "application/json", 400),
    "negative_max_tokens": (json.dumps(chat(max_tokens=-1)).encode(), "application/json", 400),
    "n_zero": (json.dumps(chat(n=0)).encode(), "application/json", 400),
    "bad_logit_bias_key": (
        json.dumps(chat(logit_bias={"abc": 1})).encode(),
        "application/json",
        400,
    ),
    "logit_bias_superscript_key": (  # '²'.isdigit() is True, int('²') fails
        json.dumps(chat(logit_bias={"\u00b2": 1})).encode(),
        "application/json",
        400,
    ),
    "logit_bias_out_of_range": (
        json.dumps(chat(logit_bias={"5": 500})).encode(),
        "application/json",
        400,
    ),
    "logit_bias_unknown_token": (
        json.dumps(chat(logit_bias={"99999999": 1})).encode(),
        "application/json",
        400,
    ),
    "stop_wrong_type": (json.dumps(chat(stop=5)).encode(), "application/json", 400),
    "too_many_stops": (
        json.dumps(chat(stop=["a", "b", "c", "d", "e"])).encode(),
        "application/json",
        400,
    ),
    "empty_stop": (json.dumps(chat(stop="")).encode(), "application/json", 400),
    "deprecated_functions": (
        json.dumps(chat(functions=[{"name": "f"}])).encode(),
        "application/json",
        400,
    ),
    "tool_choice_names_no_tool": (
        json.dumps(
            chat(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": {"name": "g"}},
            )
        ).encode(),
        "application/json",
        400,
    ),
    "unknown_model": (json.dumps(chat(model="no-such-model")).encode(), "application/json", 404),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_chat_request(service: Service, case: str) -> None:
    body, content_type, status = CASES[case]
    r = httpx2.post(
        f"{service.base_url}/v1/chat/completions",
        content=body,
        headers={"content-type": content_type},
        timeout=30,
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if case == "unknown_model":
        assert error["code"] == "model_not_found"
    health = httpx2.get(f"{service.base_url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_context_length_names_both_numbers(service: Service) -> None:
    r = httpx2.post(
        f"{service.base_url}/v1/chat/completions",
        json=chat(max_tokens=5000),
        timeout=30,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "1024" in error["message"]
    assert "5000" in error["message"]


def test_huge_prompt_is_a_context_error_not_a_crash(service: Service) -> None:
    r = httpx2.post(
        f"{service.base_url}/v1/completions",
        json={"model": MODEL, "prompt": "word " * 100_000, "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_body_over_the_limit_is_413(service: Service) -> None:
    big = {"model": MODEL, "prompt": "a" * (5 * 1024 * 1024), "max_tokens": 1}
    r = httpx2.post(f"{service.base_url}/v1/completions", json=big, timeout=60)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_is_openai_shaped(service: Service) -> None:
    r = httpx2.get(f"{service.base_url}/v1/nothing-here", timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_served_after_every_error(service: Service) -> None:
    r = httpx2.post(f"{service.base_url}/v1/chat/completions", json=chat(), timeout=60)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] is not None


def test_full_waiting_queue_answers_503_with_retry_after(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import asyncio

    from tests.conftest import start_service

    config = {
        "models": [
            {
                "name": MODEL,
                "options": {"max_model_len": 512, "max_num_seqs": 1, "max_waiting_seqs": 1},
            }
        ]
    }
    svc = start_service(tmp_path_factory.mktemp("queue"), config)
    try:

        async def main() -> list[httpx2.Response]:
            async with httpx2.AsyncClient(base_url=svc.base_url, timeout=120) as http:
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Write a long story."}],
                    "max_tokens": 300,
                    "temperature": 0,
                }
                return await asyncio.gather(
                    *(http.post("/v1/chat/completions", json=body) for _ in range(4))
                )

        responses = asyncio.run(main())
        statuses = sorted(r.status_code for r in responses)
        # One runs, one waits, the rest are refused at once.
        assert statuses == [200, 200, 503, 503]
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "service_unavailable_error"
        health = httpx2.get(f"{svc.base_url}/health", timeout=10)
        assert health.json()["status"] == "ok"
        after = httpx2.post(f"{svc.base_url}/v1/chat/completions", json=chat(), timeout=60)
        assert after.status_code == 200
    finally:
        svc.stop()


def test_queue_bounds_prompt_tokens_and_waiting_time(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Waiting prompt tokens are bounded, and nobody waits for a slot beyond queue_timeout."""
    import asyncio

    from tests.conftest import start_service

    options = {
        "max_model_len": 512,
        "max_num_seqs": 1,
        "max_waiting_seqs": 8,
        "max_waiting_tokens": 60,
        "queue_timeout": 1.0,
    }
    svc = start_service(
        tmp_path_factory.mktemp("queue-bounds"),
        {"models": [{"name": MODEL, "options": options}]},
    )
    question = "Name three colours and three animals, please, in one short sentence."
    try:

        async def main() -> tuple[httpx2.Response, list[httpx2.Response]]:
            async with httpx2.AsyncClient(base_url=svc.base_url, timeout=120) as http:
                busy = asyncio.create_task(
                    http.post(
                        "/v1/chat/completions",
                        json={**chat(max_tokens=300), "ignore_eos": True},
                    )
                )
                await svc.until_running()
                queued = await asyncio.gather(
                    *(
                        http.post(
                            "/v1/chat/completions",
                            json={
                                "model": MODEL,
                                "messages": [{"role": "user", "content": question}],
                                "max_tokens": 4,
                            },
                        )
                        for _ in range(2)
                    )
                )
                return await busy, queued

        busy, queued = asyncio.run(main())
        assert busy.status_code == 200
        assert [r.status_code for r in queued] == [503, 503]
        messages = sorted(r.json()["error"]["message"] for r in queued)
        # One did not fit the token bound; the other waited its full timeout behind the
        # 300-token request.
        assert "prompt tokens are already waiting" in messages[0]
        assert "waited more than 1 s" in messages[1]
        assert all(r.headers["retry-after"] == "1" for r in queued)
        stats = svc.engine_stats()
        assert stats["queue_timeouts"] == 1
        assert stats["rejected"] == 1
        after = httpx2.post(f"{svc.base_url}/v1/chat/completions", json=chat(), timeout=60)
        assert after.status_code == 200
    finally:
        svc.stop()
