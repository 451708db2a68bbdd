from pathlib import Path

import pytest
from openai._constants import DEFAULT_CONNECTION_LIMITS

from vllm_service.config import DEFAULT_PORT, ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "config.yaml"


def test_defaults_serve_the_bundled_model() -> None:
    settings = load_settings()
    assert settings.server.port == DEFAULT_PORT
    assert settings.models[0].options.model == "smollm2"
    assert settings.models[0].options.max_num_seqs >= 16


def test_idle_connections_outlive_the_openai_sdks_own_expiry() -> None:
    # A pooled connection the client still trusts while the server closes it fails the next
    # request with a connection error (seen under load with both at 5 s): the server must
    # hold idle connections longer than the SDK's pool keeps them.
    expiry = DEFAULT_CONNECTION_LIMITS.keepalive_expiry
    assert expiry is not None
    assert load_settings().server.keep_alive_timeout > expiry
    assert load_settings(EXAMPLE).server.keep_alive_timeout > expiry


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert "gpt-3.5-turbo" in settings.models[0].aliases


def test_env_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_SERVICE_SERVER__PORT", "9123")
    assert load_settings(EXAMPLE).server.port == 9123


def test_bad_value_names_the_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("models:\n  - name: m\n    options:\n      max_model_len: 3\n")
    with pytest.raises(ConfigError, match=r"models\.0\.options\.max_model_len"):
        load_settings(bad)


def test_misspelt_key_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("server:\n  prot: 80\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(bad)


def test_duplicate_alias_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("models:\n  - name: a\n    aliases: [x]\n  - name: b\n    aliases: [x]\n")
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(bad)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listed)


def test_upstream_models_read_their_own_options() -> None:
    from vllm_service.config import load_settings
    from vllm_service.engine.options import UpstreamOptions

    settings = load_settings(
        None,
        models=[
            {
                "name": "remote",
                "engine": "upstream",
                "options": {"base_url": "http://gpu:8000/v1", "model": "meta/llama"},
            }
        ],
    )
    options = settings.models[0].options
    assert isinstance(options, UpstreamOptions)
    assert options.read_timeout == 60.0


@pytest.mark.parametrize(
    "options",
    [None, {"base_url": "gpu:8000", "model": "m"}, {"model": "m"}, {"max_num_seqs": 4}],
)
def test_upstream_models_need_a_url_and_a_model(options: object) -> None:
    from vllm_service.config import ConfigError, load_settings

    entry: dict[str, object] = {"name": "remote", "engine": "upstream"}
    if options is not None:
        entry["options"] = options
    with pytest.raises(ConfigError):
        load_settings(None, models=[entry])


def test_model_wide_settings_belong_on_the_first_replica() -> None:
    from vllm_service.config import ConfigError, load_settings

    upstream = {"engine": "upstream", "options": {"base_url": "http://a/v1", "model": "m"}}
    ok = load_settings(
        None,
        models=[
            {"name": "chat", **upstream, "fallbacks": ["local"]},
            {"name": "chat", **upstream},
            {"name": "local"},
        ],
    )
    assert [m.fallbacks for m in ok.models] == [["local"], [], []]
    with pytest.raises(ConfigError, match="first entry"):
        load_settings(
            None,
            models=[{"name": "chat", **upstream}, {"name": "chat", **upstream, "fallbacks": ["x"]}],
        )
    with pytest.raises(ConfigError, match="not a model"):
        load_settings(None, models=[{"name": "chat", "fallbacks": ["nowhere"]}])


def test_vllm_deployment_keys_become_the_vllm_serve_command_line() -> None:
    from vllm_service.config import load_settings
    from vllm_service.engine.options import ProcessOptions

    settings = load_settings(
        None,
        models=[
            {
                "name": "llama",
                "engine": "process",
                "options": {
                    "kind": "vllm",
                    "model": "meta-llama/Meta-Llama-3-8B-Instruct",
                    "served_model": "llama",
                    "dtype": "bfloat16",
                    "tensor_parallel_size": 2,
                    "gpu_memory_utilization": 0.9,
                    "quantization": "awq",
                    "max_model_len": 8192,
                    "extra_args": ["--enable-prefix-caching"],
                },
            }
        ],
    )
    options = settings.models[0].options
    assert isinstance(options, ProcessOptions)
    assert options.argv(8001) == [
        "vllm", "serve", "meta-llama/Meta-Llama-3-8B-Instruct",
        "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "llama", "--max-model-len", "8192",
        "--dtype", "bfloat16", "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.9", "--quantization", "awq",
        "--enable-prefix-caching",
    ]  # fmt: skip


def test_a_vllm_process_needs_its_model() -> None:
    from vllm_service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="needs 'model'"):
        load_settings(
            None,
            models=[
                {"name": "x", "engine": "process", "options": {"kind": "vllm", "served_model": "x"}}
            ],
        )


def test_command_line_options_keep_every_other_section_of_the_file() -> None:
    from vllm_service.cli import _apply_cli

    settings = load_settings(
        None, observability={"latency_target_ms": 123}, cache={"ttl": 5, "backend": "redis"}
    )
    applied = _apply_cli(settings, host=None, port=9999, model="/models/other.gguf")
    assert applied.server.port == 9999
    assert applied.observability.latency_target_ms == 123
    assert (applied.cache.ttl, applied.cache.backend) == (5, "redis")


def test_hosted_prices_come_from_the_table_or_must_be_given() -> None:
    from datetime import date

    from vllm_service.config import ConfigError, load_settings

    settings = load_settings(None, cost={"hosted": [{"name": "gpt-4o"}, {"name": "gpt-4o-mini"}]})
    first = settings.cost.hosted[0]
    assert (first.input_per_million, first.output_per_million) == (2.5, 10.0)
    assert first.effective_from == date(2024, 8, 6)
    # One mapping (the old format) still loads.
    one = load_settings(
        None, cost={"hosted": {"name": "x", "input_per_million": 1, "output_per_million": 2}}
    )
    assert [h.name for h in one.cost.hosted] == ["x"]
    with pytest.raises(ConfigError, match="give input_per_million"):
        load_settings(None, cost={"hosted": [{"name": "unknown-model"}]})
