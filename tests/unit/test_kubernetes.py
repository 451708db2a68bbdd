"""The Kubernetes overlays, rendered by `kubectl kustomize` and checked offline by
deploy/kubernetes/check.py: the shipped ones pass, and each kind of mistake is caught with a
message naming what is wrong."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import system_binary

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy/kubernetes"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, KUBE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    system_binary("kubectl", "kubectl")
    return load("check")


def test_every_shipped_overlay_passes(
    check: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check.OVERLAYS == ["cpu", "gpu", "keda", "trial", "vllm"]
    assert check.main([]) == 0
    out = capsys.readouterr().out
    for overlay in check.OVERLAYS:
        assert f"{overlay}: ok" in out


def test_generated_files_match_their_sources() -> None:
    build = load("build")
    assert (KUBE / "base/prometheusrule.yaml").read_text() == build.prometheus_rule()
    shipped = sorted(p.name for p in (ROOT / "deploy/grafana/dashboards").glob("*.json"))
    copied = sorted(p.name for p in (KUBE / "base/dashboards").glob("*.json"))
    assert copied == shipped
    for name in shipped:
        original = (ROOT / "deploy/grafana/dashboards" / name).read_text()
        assert (KUBE / "base/dashboards" / name).read_text() == original


def overlay(tmp_path: Path, patch: str = "", config: str | None = None) -> Path:
    """An overlay of the CPU one with a JSON patch of the service's Deployment and/or another
    config file."""
    folder = tmp_path / "broken"
    folder.mkdir()
    parts = [f"resources:\n  - {os.path.relpath(KUBE / 'overlays/cpu', folder)}\n"]
    if patch:
        body = textwrap.indent(textwrap.dedent(patch).strip(), "      ")
        parts.append(
            "patches:\n  - target:\n      kind: Deployment\n      name: vllm-service\n"
            f"    patch: |-\n{body}\n"
        )
    if config is not None:
        (folder / "config.yaml").write_text(config)
        parts.append(
            "configMapGenerator:\n  - name: vllm-service-config\n    behavior: replace\n"
            "    files:\n      - config.yaml\n"
        )
    (folder / "kustomization.yaml").write_text("".join(parts))
    return folder


BROKEN = {
    "privilege escalation": (
        "- op: replace\n  path: /spec/template/spec/containers/0/securityContext/"
        "allowPrivilegeEscalation\n  value: true",
        "allowPrivilegeEscalation must be false",
    ),
    "writable root": (
        "- op: remove\n  path: /spec/template/spec/containers/0/securityContext/"
        "readOnlyRootFilesystem",
        "readOnlyRootFilesystem must be true",
    ),
    "host path volume": (
        "- op: add\n  path: /spec/template/spec/volumes/-\n  value:\n"
        "    name: host\n    hostPath:\n      path: /var",
        "volume host of type ['hostPath'] is not allowed",
    ),
    "liveness on the latency endpoint": (
        "- op: replace\n  path: /spec/template/spec/containers/0/livenessProbe/httpGet/path\n"
        "  value: /performance/latency",
        "livenessProbe must GET /health on port http",
    ),
    "no limits": (
        "- op: remove\n  path: /spec/template/spec/containers/0/resources/limits",
        "set resources.requests and resources.limits",
    ),
    "schema": (
        "- op: replace\n  path: /spec/replicas\n  value: two",
        "Deployment/vllm-service: 'two' is not of type 'integer', 'null' at spec.replicas",
    ),
    "short grace period": (
        "- op: replace\n  path: /spec/template/spec/terminationGracePeriodSeconds\n  value: 10",
        "terminationGracePeriodSeconds < 40",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_deployment_is_named(check: ModuleType, tmp_path: Path, case: str) -> None:
    patch, message = BROKEN[case]
    problems = check.check(overlay(tmp_path, patch), {}, check.KUBERNETES_VERSION)
    assert any(message in p for p in problems), problems


def test_an_invalid_config_value_names_the_key(check: ModuleType, tmp_path: Path) -> None:
    config = "server:\n  port: 8090\n  metrics_port: 9090\ncache:\n  backend: memcached\n"
    problems = check.check(overlay(tmp_path, config=config), {}, check.KUBERNETES_VERSION)
    assert any("cache.backend" in p and "'memory' or 'redis'" in p for p in problems), problems


def test_a_config_on_other_ports_than_the_pod_is_caught(check: ModuleType, tmp_path: Path) -> None:
    config = "server:\n  port: 8000\n  metrics_port: 9090\n  drain_delay: 5\n"
    problems = check.check(overlay(tmp_path, config=config), {}, check.KUBERNETES_VERSION)
    assert any("port http is not server.port 8000" in p for p in problems), problems


def test_a_missing_secret_key_is_named(check: ModuleType, tmp_path: Path) -> None:
    env = tmp_path / "secrets.env"
    env.write_text("auth-secret=x\nopenai-api-key=y\n")  # no admin-key
    given = dict([check.read_env_file(f"vllm-service-secrets={env}")])
    problems = check.check(KUBE / "overlays/cpu", given, check.KUBERNETES_VERSION)
    assert problems == [
        "Secret vllm-service-secrets has no key 'admin-key' (env VLLM_SERVICE_ADMIN_KEY of "
        "Deployment/vllm-service)"
    ]
    env.write_text("admin-key=a\nauth-secret=b\n")
    given = dict([check.read_env_file(f"vllm-service-secrets={env}")])
    assert check.check(KUBE / "overlays/cpu", given, check.KUBERNETES_VERSION) == []


def test_the_hpa_metric_must_be_the_adapters(check: ModuleType, tmp_path: Path) -> None:
    folder = overlay(tmp_path)
    with (folder / "kustomization.yaml").open("a") as f:
        f.write(
            "patches:\n  - target:\n      kind: HorizontalPodAutoscaler\n"
            "    patch: |-\n      - op: replace\n"
            "        path: /spec/metrics/0/pods/metric/name\n        value: latency_p95\n"
        )
    problems = check.check(folder, {}, check.KUBERNETES_VERSION)
    assert any("metric latency_p95 is made by no prometheus-adapter rule" in p for p in problems)
