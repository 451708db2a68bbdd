import pytest

from vllm_service.engine.llamacpp import device
from vllm_service.engine.llamacpp.device import ALL_LAYERS, DeviceError, choose_device, place
from vllm_service.engine.llamacpp.options import LlamaCppOptions


def test_auto_without_gpu_build_is_cpu() -> None:
    assert choose_device("auto", gpu_offload_supported=False) == "cpu"


def test_auto_prefers_cuda_off_apple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "is_apple_silicon", lambda: False)
    assert choose_device("auto", gpu_offload_supported=True) == "cuda"


def test_auto_on_apple_silicon_is_mps_with_all_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "is_apple_silicon", lambda: True)
    placement = place(LlamaCppOptions(), gpu_offload_supported=True)
    assert placement.device == "mps"
    assert placement.n_gpu_layers == ALL_LAYERS


def test_explicit_gpu_without_backend_fails_with_advice() -> None:
    with pytest.raises(DeviceError, match="GGML_CUDA"):
        choose_device("cuda", gpu_offload_supported=False)


def test_cpu_never_offloads() -> None:
    placement = place(LlamaCppOptions(device="cpu", n_gpu_layers=10), gpu_offload_supported=True)
    assert placement.n_gpu_layers == 0
    assert placement.n_threads >= 1


def test_extra_buffer_types_are_off_by_default_only_in_an_amx_build() -> None:
    # A native build on a CPU that reports AMX crashed with SIGILL in its AMX kernels on these
    # virtual machines: the layouts that route weights to them are off there unless asked for.
    assert place(LlamaCppOptions(), gpu_offload_supported=False).extra_buffer_types
    assert not place(
        LlamaCppOptions(), gpu_offload_supported=False, amx_built=True
    ).extra_buffer_types
    asked = LlamaCppOptions(extra_buffer_types=True)
    assert place(asked, gpu_offload_supported=False, amx_built=True).extra_buffer_types


def test_flash_attention_is_llama_cpps_choice_unless_asked() -> None:
    default = place(LlamaCppOptions(), gpu_offload_supported=False)
    assert (default.flash_attention, default.flash_attention_mode) == (None, "auto")
    off = place(LlamaCppOptions(flash_attention=False), gpu_offload_supported=False)
    assert (off.flash_attention, off.flash_attention_mode) == (False, "off")
    on = place(LlamaCppOptions(flash_attention=True), gpu_offload_supported=False)
    assert on.flash_attention_mode == "on"
