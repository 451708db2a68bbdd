"""The official openai SDK against a real server on the bundled model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import ALIAS, MODEL, Service

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_models_lists_names_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {MODEL, ALIAS} <= ids


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.created > 0
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_alias_serves_the_local_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=ALIAS, messages=CHAT, max_tokens=4, temperature=0)
    assert r.model == ALIAS
    assert r.choices[0].message.content


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=7,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 7


def test_chat_stream_matches_non_stream(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, roles, finish, usage = "", [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"]
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage is not None
    assert full.usage is not None
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_completion_plain_and_stream(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.usage is not None
    assert r.usage.completion_tokens <= 8
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_completion_echo_and_token_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0, echo=True
    )
    assert r.choices[0].text.startswith("Once upon a time")
    tokens = client.completions.create(model=MODEL, prompt=[504, 3575], max_tokens=3)
    assert tokens.usage is not None
    assert tokens.usage.prompt_tokens == 2


def test_n_gives_distinct_indexed_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, n=2, temperature=1.0, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage is not None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=16,
        n=2,
        temperature=1.0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    # The same seed makes the streamed choices equal the non-streamed ones, choice by choice.
    assert texts == {c.index: c.message.content for c in r.choices}
    assert usage is not None
    assert usage.completion_tokens == r.usage.completion_tokens


def test_seed_reproduces_sampled_output(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Invent a name for a cat."}],
            max_tokens=24,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
        )
        return r.choices[0].message.content or ""

    first = run(1234)
    assert run(1234) == first
    assert len({first, run(1), run(2), run(3)}) > 1


def test_stop_string_ends_output_and_is_not_included(client: openai.OpenAI) -> None:
    base = (
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=30, temperature=0)
        .choices[0]
        .message.content
    )
    assert base is not None
    words = base.split()
    assert len(words) > 3
    stop_word = words[2]
    cut = base.index(stop_word)
    for stop in (stop_word, [stop_word, "\u2603never"]):
        r = client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=30, temperature=0, stop=stop
        )
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == base[:cut]


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "pets": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    for seed in (1, 2, 3):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a person as JSON."}],
            max_tokens=200,
            temperature=0.7,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema},
            },
        )
        assert r.choices[0].finish_reason == "stop"
        document = json.loads(r.choices[0].message.content or "")
        jsonschema.validate(document, schema)


def test_json_object_mode_parses(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about the sea."}],
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    assert r.usage is not None
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0.0
        tops = [t.logprob for t in item.top_logprobs]
        assert len(tops) == 3
        assert tops == sorted(tops, reverse=True)
        # Greedy decoding picks the most likely token.
        assert item.logprob == pytest.approx(tops[0])


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="One, two, three,", max_tokens=5, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None
    assert lp.tokens is not None
    assert lp.token_logprobs is not None
    assert lp.top_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(t) == 2 for t in lp.top_logprobs)


def _token_id(text: str) -> int:
    """The bundled model's single token for ``text`` (tokenized by llama.cpp itself)."""
    from vllm_service.engine.llamacpp.device import place
    from vllm_service.engine.llamacpp.model import LlamaModel
    from vllm_service.engine.llamacpp.model_files import bundled_model_path
    from vllm_service.engine.llamacpp.options import LlamaCppOptions

    model = LlamaModel(bundled_model_path(), place(LlamaCppOptions(), gpu_offload_supported=False))
    try:
        ids = model.tokenize(text, add_special=False, parse_special=False)
    finally:
        model.close()
    assert len(ids) == 1, ids
    return ids[0]


def test_logit_bias_bans_and_forces_tokens(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"

    def first_token(bias: dict[str, int] | None = None) -> str:
        r = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=1, temperature=0, logit_bias=bias
        )
        return r.choices[0].text

    assert first_token() == " Paris"
    paris, london = _token_id(" Paris"), _token_id(" London")
    assert first_token({str(paris): -100}) != " Paris"
    assert first_token({str(london): 100}) == " London"


def test_sampling_knobs_change_what_is_sampled(client: openai.OpenAI) -> None:
    def answer(**knobs: object) -> str | None:
        extra = {k: knobs.pop(k) for k in ("top_k", "min_p") if k in knobs}
        r = client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=16,
            extra_body=extra or None,
            **knobs,  # type: ignore[arg-type]
        )
        return r.choices[0].message.content

    greedy = answer(temperature=0)
    # Only the most likely token survives top_k 1, or min_p 1: sampling hot is greedy.
    assert answer(temperature=1.5, seed=3, top_k=1) == greedy
    assert answer(temperature=1.5, seed=4, min_p=1.0) == greedy
    # A seed makes a hot, penalized sample reproducible.
    hot = {"temperature": 1.2, "top_p": 0.9, "presence_penalty": 1.5, "frequency_penalty": 1.0}
    assert answer(seed=7, **hot) == answer(seed=7, **hot)


def test_service_fixture_is_healthy(service: Service) -> None:
    import httpx2

    body = httpx2.get(f"{service.base_url}/health").json()
    assert body["status"] == "ok"
    # The device the engine reports (cpu here; cuda or mps where the machine has one).
    assert body["device"] in ("cpu", "cuda", "mps")
    assert body["device"] == body["engines"][MODEL]["device"]
    assert body["engines"][MODEL]["state"] == "ready"
