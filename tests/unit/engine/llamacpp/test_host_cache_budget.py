"""The host-RAM prefix tier's budget: as configured, else sized from the memory available."""

from __future__ import annotations

import pytest

from vllm_service.engine.llamacpp import host_cache
from vllm_service.engine.llamacpp.host_cache import host_cache_budget
from vllm_service.engine.llamacpp.options import LlamaCppOptions

GIB = 1024**3


def test_a_configured_budget_is_kept_and_none_without_prefix_caching() -> None:
    assert host_cache_budget(LlamaCppOptions(prefix_cache_host_bytes="2GiB")) == 2 * GIB
    assert host_cache_budget(LlamaCppOptions(prefix_cache_host_bytes=0)) == 0
    off = LlamaCppOptions(enable_prefix_caching=False, prefix_cache_host_bytes="2GiB")
    assert host_cache_budget(off) == 0


@pytest.mark.parametrize(
    ("available", "budget"),
    [(2 * GIB, GIB // 2), (20 * GIB, 5 * GIB), (64 * GIB, 8 * GIB), (None, 512 * 1024**2)],
)
def test_unset_it_is_a_quarter_of_the_available_memory_at_most_8_gib(
    monkeypatch: pytest.MonkeyPatch, available: int | None, budget: int
) -> None:
    monkeypatch.setattr(host_cache, "available_memory_bytes", lambda: available)
    assert host_cache_budget(LlamaCppOptions()) == budget


def test_unset_on_this_machine_it_fits_what_is_available() -> None:
    budget = host_cache_budget(LlamaCppOptions())
    available = host_cache.available_memory_bytes()
    assert 0 < budget <= 8 * GIB
    if available is not None:
        assert budget <= available // 4
