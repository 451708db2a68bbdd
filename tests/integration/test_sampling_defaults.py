"""Model-recommended sampling defaults, end to end: the request, then the config's `defaults:`,
then the GGUF file's general.sampling.* keys, then (bundled model) its model card."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx2
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from tests.conftest import MODEL, Service, start_service
from vllm_service.engine.llamacpp.model_files import bundled_model_path

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Name a fruit and say why you like it."}]
CARD = "model card (SmolLM2-135M-Instruct)"


def with_recommendations(source: Path, target: Path, values: dict[str, Any]) -> Path:
    """A copy of a GGUF file with general.sampling.* keys added."""
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(target, arch=arch.contents(), endianess=reader.endianess)
    types = {float: gguf.GGUFValueType.FLOAT32, int: gguf.GGUFValueType.INT32}
    details = {k: MetadataDetails(types[type(v)], v) for k, v in values.items()}
    copy_with_new_metadata(reader, writer, details, [])
    return target


@pytest.fixture(scope="module")
def recommending(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Two models on one GGUF that recommends greedy decoding and top_k 5 (and an invalid
    top_p, which must be ignored): one as the file says, one with config defaults on top."""
    work = tmp_path_factory.mktemp("recommending")
    path = with_recommendations(
        bundled_model_path(),
        work / "recommending.gguf",
        {
            "general.sampling.temp": 0.0,
            "general.sampling.top_k": 5,
            "general.sampling.top_p": 5.0,
        },
    )
    options = {"model": str(path), "max_model_len": 512, "max_num_seqs": 2}
    config = {
        "models": [
            {"name": "as-the-file-says", "options": options},
            {
                "name": "configured",
                "options": options,
                "defaults": {"temperature": 0.7, "repetition_penalty": 1.05},
            },
        ]
    }
    svc = start_service(work, config)
    yield svc
    svc.stop()


def listed_defaults(service: Service) -> dict[str, dict[str, dict[str, Any]]]:
    models = httpx2.get(f"{service.base_url}/v1/models", timeout=10).json()["data"]
    return {m["id"]: m["sampling_defaults"] for m in models}


def answer(service: Service, model: str, **params: Any) -> str:
    reply = service.client().chat.completions.create(
        model=model, messages=QUESTION, max_tokens=24, **params
    )
    return reply.choices[0].message.content or ""


def test_the_bundled_model_uses_its_model_card(service: Service) -> None:
    defaults = listed_defaults(service)[MODEL]
    assert defaults["temperature"] == {"value": 0.2, "source": CARD}
    assert defaults["top_p"] == {"value": 0.9, "source": CARD}
    assert defaults["repetition_penalty"]["value"] == 1.1
    assert defaults["top_k"] == {"value": 0.0, "source": "openai default"}
    health = httpx2.get(f"{service.base_url}/health", timeout=10).json()
    assert health["engines"][MODEL]["sampling_defaults"] == defaults


def test_left_out_knobs_take_the_defaults_and_sent_ones_win(service: Service) -> None:
    implicit = answer(service, MODEL, seed=42)
    explicit = answer(
        service, MODEL, seed=42, temperature=0.2, top_p=0.9, extra_body={"repetition_penalty": 1.1}
    )
    assert implicit == explicit
    # temperature 1 sent (OpenAI's own default value) is honoured, not replaced by 0.2.
    hot = answer(service, MODEL, seed=42, temperature=1.0)
    hot_explicit = answer(
        service, MODEL, seed=42, temperature=1.0, top_p=0.9, extra_body={"repetition_penalty": 1.1}
    )
    assert hot == hot_explicit


def test_a_gguf_file_recommendation_applies_and_the_config_overrides_it(
    recommending: Service,
) -> None:
    listed = listed_defaults(recommending)
    from_file = listed["as-the-file-says"]
    assert from_file["temperature"] == {"value": 0.0, "source": "gguf metadata"}
    assert from_file["top_k"] == {"value": 5.0, "source": "gguf metadata"}
    # top_p 5.0 is out of range: ignored (and logged), OpenAI's value applies.
    assert from_file["top_p"] == {"value": 1.0, "source": "openai default"}
    # Not the bundled model: its model card and tuning do not apply.
    assert from_file["repetition_penalty"] == {"value": 1.0, "source": "openai default"}
    configured = listed["configured"]
    assert configured["temperature"] == {"value": 0.7, "source": "config"}
    assert configured["repetition_penalty"] == {"value": 1.05, "source": "config"}
    assert configured["top_k"] == {"value": 5.0, "source": "gguf metadata"}
    assert "ignoring the model file's top_p recommendation 5.0" in recommending.log()
    # The file says greedy: unseeded requests that leave temperature out agree with each
    # other and with an explicit temperature 0.
    greedy = answer(recommending, "as-the-file-says", temperature=0)
    assert answer(recommending, "as-the-file-says") == greedy
    assert answer(recommending, "as-the-file-says") == greedy
