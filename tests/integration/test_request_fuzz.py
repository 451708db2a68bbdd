"""Property: whatever JSON a client sends to the chat and completions endpoints, the answer is
a success or an OpenAI-shaped 4xx, never a 500, and the service stays healthy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL, Service, start_service

pytestmark = pytest.mark.integration

FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "min_p", "n", "seed", "stop", "stream", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format", "user",
    "prompt", "echo", "stream_options", "unknown_field",
]  # fmt: skip

#: Any Unicode, lone surrogates included (what a careless client's JSON encoder writes).
texts = st.text(alphabet=st.characters(codec=None) | st.characters(categories=["Cs"]), max_size=40)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Mostly well-formed messages, so that odd text reaches the template and the tokenizer.
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "user", "system", "assistant", "tool"]),
            "content": texts | texts.map(lambda t: [{"type": "text", "text": t}]) | json_values,
        }
    ),
    min_size=1,
    max_size=3,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # A short context bounds what any accepted request can cost.
    config = {"models": [{"name": MODEL, "options": {"max_model_len": 96, "max_num_seqs": 4}}]}
    svc = start_service(tmp_path_factory.mktemp("fuzz"), config)
    yield svc
    svc.stop()


def _encode(body: dict[str, Any]) -> bytes:
    # json.dumps writes NaN and Infinity and lone surrogates (as escapes), as a careless
    # client's encoder would.
    return json.dumps(body).encode()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    overrides=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2),
    chat=messages,
)
def test_no_request_body_makes_a_server_error(
    small: Service, route: str, overrides: dict[str, Any], chat: list[Any]
) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 2}
    if route.endswith("chat/completions"):
        body["messages"] = chat
    else:
        body["prompt"] = [m["content"] for m in chat if isinstance(m["content"], str)] or "hi"
    body.update(overrides)
    r = httpx2.post(
        f"{small.base_url}{route}",
        content=_encode(body),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str)
        assert error["type"] == "invalid_request_error" or r.status_code in (404, 413)


def test_the_service_is_healthy_after_the_fuzzing(small: Service) -> None:
    assert httpx2.get(f"{small.base_url}/health", timeout=10).status_code == 200
    assert "Traceback" not in small.log()
