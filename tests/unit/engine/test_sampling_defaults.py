"""Sampling defaults: a request's own value wins, then each source in order."""

from __future__ import annotations

import pytest

from vllm_service.engine import SamplingDefaults, SamplingParams
from vllm_service.engine.base import ChatMessage, GenerationRequest
from vllm_service.engine.upstream import _payload


def test_the_first_source_naming_a_knob_wins() -> None:
    defaults = SamplingDefaults.layered(
        ("config", {"temperature": 0.7, "top_k": None}),
        ("gguf metadata", {"temperature": 0.1, "top_k": 40}),
        ("openai default", {"temperature": 1.0, "top_p": 1.0}),
    )
    assert defaults.as_dict() == {
        "temperature": {"value": 0.7, "source": "config"},
        "top_p": {"value": 1.0, "source": "openai default"},
        "top_k": {"value": 40.0, "source": "gguf metadata"},
    }


def test_a_value_the_request_sends_always_wins_even_the_neutral_one() -> None:
    defaults = SamplingDefaults.layered(("model card", {"temperature": 0.2, "top_p": 0.9}))
    filled = defaults.fill(SamplingParams(temperature=1.0, top_k=None))
    assert filled.temperature == 1.0  # sent by the request: not replaced by 0.2
    assert filled.top_p == 0.9  # left out: the model's recommendation
    assert filled.top_k is None  # nobody recommends one: left for the engine


def test_top_k_stays_an_integer() -> None:
    filled = SamplingDefaults.layered(("config", {"top_k": 40.0})).fill(SamplingParams())
    assert filled.top_k == 40
    assert isinstance(filled.top_k, int)


def test_unknown_knobs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampling knob"):
        SamplingDefaults.layered(("config", {"temprature": 0.2}))


def _upstream_body(sampling: SamplingParams) -> dict[str, object]:
    req = GenerationRequest(
        request_id="r", sampling=sampling, messages=(ChatMessage("user", "hi"),)
    )
    return _payload(req, "m")[1]


def test_an_upstream_gets_only_the_knobs_someone_set() -> None:
    body = _upstream_body(SamplingParams(max_tokens=5))
    assert not {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"} & set(body)
    body = _upstream_body(SamplingParams(temperature=1.0, top_p=0.5, presence_penalty=0.0))
    assert (body["temperature"], body["top_p"], body["presence_penalty"]) == (1.0, 0.5, 0.0)
    # Extensions only where they change something: a hosted API does not know them.
    body = _upstream_body(SamplingParams(top_k=0, min_p=0.0, repetition_penalty=1.0))
    assert not {"top_k", "min_p", "repetition_penalty"} & set(body)
    body = _upstream_body(SamplingParams(top_k=20, repetition_penalty=1.1))
    assert (body["top_k"], body["repetition_penalty"]) == (20, 1.1)
