"""Choosing where the embedded engine runs: CUDA, Apple Silicon (Metal), or the CPU."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from vllm_service.engine.llamacpp.options import Device, LlamaCppOptions

#: llama.cpp clamps this to the model's layer count: "offload everything".
ALL_LAYERS = 999


class DeviceError(Exception):
    """The configured device is not available in this build or on this machine."""


@dataclass(frozen=True, slots=True)
class DevicePlacement:
    """The device chosen for a model and how many of its layers go there."""

    device: Device
    n_gpu_layers: int
    n_threads: int
    #: llama.cpp's extra CPU weight layouts (repacking, AMX) in use.
    extra_buffer_types: bool = True
    #: Flash attention on or off; None: llama.cpp decides (``auto``).
    flash_attention: bool | None = None

    @property
    def flash_attention_mode(self) -> str:
        """``on``, ``off`` or ``auto``, as /health shows it."""
        if self.flash_attention is None:
            return "auto"
        return "on" if self.flash_attention else "off"


def usable_cpus() -> int:
    """CPUs this process may run on (honours cgroup/affinity limits where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def choose_device(requested: Device, *, gpu_offload_supported: bool) -> Device:
    """Resolve ``auto``: CUDA first, then Apple Silicon's Metal, then the CPU.

    llama.cpp's build decides which GPU backend exists; a build with GPU offload on Apple
    Silicon is Metal, elsewhere it is CUDA (or another GPU backend driven the same way).
    """
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        if not gpu_offload_supported:
            return "cpu"
        return "mps" if is_apple_silicon() else "cuda"
    if not gpu_offload_supported:
        raise DeviceError(
            f"device {requested!r} was requested but this llama-cpp-python build has no GPU "
            "backend; reinstall it with CMAKE_ARGS='-DGGML_CUDA=on' (CUDA) or "
            "'-DGGML_METAL=on' (Apple Silicon), or use device 'cpu'"
        )
    if requested == "mps" and not is_apple_silicon():
        raise DeviceError("device 'mps' needs Apple Silicon (macOS on arm64)")
    return requested


def place(
    options: LlamaCppOptions, *, gpu_offload_supported: bool, amx_built: bool = False
) -> DevicePlacement:
    device = choose_device(options.device, gpu_offload_supported=gpu_offload_supported)
    if options.n_gpu_layers is not None:
        layers = ALL_LAYERS if options.n_gpu_layers == -1 else options.n_gpu_layers
    else:
        layers = 0 if device == "cpu" else ALL_LAYERS
    if device == "cpu":
        layers = 0
    extra = options.extra_buffer_types
    return DevicePlacement(
        device=device,
        n_gpu_layers=layers,
        n_threads=options.n_threads or usable_cpus(),
        extra_buffer_types=(not amx_built) if extra is None else extra,
        flash_attention=options.flash_attention,
    )


def available_memory_bytes() -> int | None:
    """Memory the kernel can give this process without swapping (Linux MemAvailable, capped
    by a cgroup limit); None where it cannot be read."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    available = None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return available
    if limit.isdigit() and available is not None:
        return min(available, int(limit) - used)
    return available
