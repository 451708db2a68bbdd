"""The options every engine kind's config entry is made of, and the ones the network engines take.

Each engine kind has an options model (a subclass of ``EngineOptions``); engine/registry.py
lists the kinds, and config.py builds a model entry's ``options`` from that list.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Context length reported for engines that do not say their own.
DEFAULT_MAX_MODEL_LEN = 2048


class EngineOptions(BaseModel):
    """Base of an engine kind's options: a misspelt key is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class SamplingDefaultsConfig(EngineOptions):
    """Sampling values for requests that leave a knob out (the request's own value wins)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="0 = off.")
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2, description="1 = off.")


class UpstreamOptions(EngineOptions):
    """Options of an upstream engine: any OpenAI-compatible server (vLLM, OpenAI, ...)."""

    base_url: str = Field(
        pattern=r"^https?://",
        description="The server's OpenAI API root, e.g. http://gpu-node:8000/v1.",
    )
    model: str = Field(min_length=1, description="The model name the upstream serves.")
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the API key (never the key).",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds the upstream may stay silent mid-answer."
    )
    total_timeout: float = Field(
        default=600.0, gt=0, description="Seconds one whole answer may take."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers sent with every request."
    )
    max_connections: int = Field(default=100, ge=1, description="Pooled connections.")
    max_model_len: int = Field(
        default=DEFAULT_MAX_MODEL_LEN, ge=16, description="Context length /v1/models reports."
    )


class ProcessOptions(EngineOptions):
    """A managed engine server the service starts, health-checks, restarts and stops itself."""

    kind: Literal["vllm", "command"] = Field(
        description="vllm: build a `vllm serve` command line from the keys below; "
        "command: run `command` as given."
    )
    served_model: str = Field(
        min_length=1, description="The model name the managed server answers to."
    )
    command: list[str] = Field(
        default_factory=list,
        description="kind 'command': the argv; '{port}' is replaced by the port.",
    )
    # vLLM deployment keys (kind 'vllm').
    model: str | None = Field(default=None, description="vLLM: the model (path or hub id).")
    dtype: str | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    quantization: str | None = None
    max_model_len: int = Field(default=DEFAULT_MAX_MODEL_LEN, ge=16)
    extra_args: list[str] = Field(default_factory=list, description="Appended to the command.")
    # Supervision.
    port: int | None = Field(default=None, ge=1, le=65535, description="Unset: a free port.")
    health_path: str = Field(default="/health", description="200 here means it serves.")
    startup_timeout: float = Field(default=900.0, gt=0)
    restart_backoff: float = Field(default=1.0, gt=0, description="First restart delay.")
    restart_backoff_max: float = Field(default=60.0, gt=0)
    stop_grace: float = Field(default=15.0, gt=0, description="SIGTERM, then SIGKILL after.")
    read_timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> ProcessOptions:
        if self.kind == "vllm" and not self.model:
            raise ValueError("a vllm process needs 'model'")
        if self.kind == "command" and not self.command:
            raise ValueError("a command process needs 'command'")
        return self

    def argv(self, port: int) -> list[str]:
        """The command line to run on ``port``."""
        if self.kind == "command":
            return [arg.replace("{port}", str(port)) for arg in self.command]
        assert self.model is not None
        argv = ["vllm", "serve", self.model, "--host", "127.0.0.1", "--port", str(port)]
        argv += [
            "--served-model-name",
            self.served_model,
            "--max-model-len",
            str(self.max_model_len),
        ]
        for flag, value in (
            ("--dtype", self.dtype),
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--gpu-memory-utilization", self.gpu_memory_utilization),
            ("--quantization", self.quantization),
        ):
            if value is not None:
                argv += [flag, str(value)]
        return argv + self.extra_args
