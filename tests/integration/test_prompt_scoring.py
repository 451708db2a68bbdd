"""Prompt scoring on /v1/completions: echo with logprobs covers the prompt's tokens (the first
null), and max_tokens 0 with echo scores the prompt without generating, as evaluation harnesses
use it for log-likelihoods."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import MODEL, Service

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


def test_max_tokens_zero_with_echo_returns_the_scored_prompt(service: Service) -> None:
    reply = service.client().completions.create(
        model=MODEL, prompt=PROMPT, echo=True, logprobs=2, max_tokens=0
    )
    choice = reply.choices[0]
    assert choice.text == PROMPT
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 0
    lps = choice.logprobs
    assert lps is not None
    assert lps.tokens is not None
    assert lps.token_logprobs is not None
    assert lps.top_logprobs is not None
    assert lps.text_offset is not None
    assert len(lps.tokens) == reply.usage.prompt_tokens
    assert "".join(lps.tokens) == PROMPT
    assert lps.token_logprobs[0] is None
    assert lps.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in lps.token_logprobs[1:])
    assert all(top is not None and len(top) == 2 for top in lps.top_logprobs[1:])
    assert lps.text_offset == sorted(lps.text_offset)
    assert lps.text_offset[0] == 0


def test_a_prompt_tokens_score_is_what_generation_gave_it(service: Service) -> None:
    """Score a prompt ending in a word the model generated: its last token's logprob is the
    logprob the model gave that token when it generated it."""
    client = service.client()
    generated = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0
    )
    gen = generated.choices[0].logprobs
    assert gen is not None
    assert gen.tokens is not None
    assert gen.token_logprobs is not None
    word, expected = gen.tokens[0], gen.token_logprobs[0]
    scored = (
        client.completions.create(
            model=MODEL, prompt=PROMPT + word, echo=True, logprobs=0, max_tokens=0
        )
        .choices[0]
        .logprobs
    )
    assert scored is not None
    assert scored.tokens is not None
    assert scored.token_logprobs is not None
    assert scored.tokens[-1] == word
    last = scored.token_logprobs[-1]
    assert last is not None
    assert expected is not None
    assert math.isclose(last, expected, abs_tol=0.05)


def test_echo_with_logprobs_then_generation_covers_both(service: Service) -> None:
    reply = service.client().completions.create(
        model=MODEL, prompt=PROMPT, echo=True, logprobs=0, max_tokens=3, temperature=0
    )
    choice = reply.choices[0]
    assert reply.usage is not None
    lps = choice.logprobs
    assert lps is not None
    assert lps.tokens is not None
    assert lps.text_offset is not None
    assert len(lps.tokens) == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.text.startswith(PROMPT)
    # The completion's offsets continue after the prompt.
    assert lps.text_offset[reply.usage.prompt_tokens] == len(PROMPT)


def test_a_stream_echoes_the_prompt_with_its_scores(service: Service) -> None:
    chunks = list(
        service.client().completions.create(
            model=MODEL, prompt=PROMPT, echo=True, logprobs=0, max_tokens=2, stream=True
        )
    )
    first = chunks[0].choices[0]
    assert first.text == PROMPT
    assert first.logprobs is not None
    assert first.logprobs.token_logprobs is not None
    assert first.logprobs.token_logprobs[0] is None
    assert "".join(c.choices[0].text for c in chunks if c.choices).startswith(PROMPT)


def test_max_tokens_zero_without_echo_is_a_400(service: Service) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        service.client().completions.create(model=MODEL, prompt=PROMPT, max_tokens=0)
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["param"] == "max_tokens"
