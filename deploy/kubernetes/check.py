"""Validates the Kubernetes overlays offline: renders each with `kubectl kustomize`, checks every
core object against the Kubernetes schemas (kubernetes-validate, strict), each custom resource
against its operator's required fields, and the deployment's own rules:

- every pod passes the Pod Security "restricted" profile; the service's pods also run as
  10001 with a read-only root filesystem;
- the service's probes: startup and readiness on /ready, liveness on /health, on the port the
  config serves; resources requested and limited; rolling updates with maxUnavailable 0;
  a grace period covering preStop + drain_delay + shutdown_grace;
- the HPA's metric is the one the prometheus-adapter rule makes; the NetworkPolicy selects
  the service's pods and opens its API and metrics ports;
- the PrometheusRule says what deploy/prometheus/alerts.yml says;
- the ConfigMap's config loads with the service's own config loader;
- every Secret key the pods read exists, in a Secret of the render or one given with
  --secret NAME=FILE (KEY=VALUE lines), unless the reference is optional.

    python deploy/kubernetes/check.py [OVERLAY ...] [--secret NAME=FILE ...]

Exit status 1 and one line per problem when anything fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OVERLAYS = sorted(p.parent.name for p in (HERE / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.33.0"
SERVICE_COMPONENT = "api"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
#: Each custom resource's required fields (its operator's documentation).
CUSTOM_REQUIRED = {
    "ServiceMonitor": [("spec", "selector"), ("spec", "endpoints")],
    "PrometheusRule": [("spec", "groups")],
    "ScaledObject": [("spec", "scaleTargetRef", "name"), ("spec", "triggers")],
}


def render(overlay: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise ValueError(f"kubectl kustomize {overlay} failed: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{dig(obj, 'metadata', 'name')}"


def schemas(objects: list[dict[str, Any]], version: str) -> Iterator[str]:
    import kubernetes_validate

    for obj in objects:
        kind = obj.get("kind", "")
        if kind in CUSTOM_REQUIRED:
            for path in CUSTOM_REQUIRED[kind]:
                if not dig(obj, *path):
                    yield f"{name_of(obj)}: missing {'.'.join(path)}"
            if kind == "PrometheusRule":
                for group in dig(obj, "spec", "groups") or []:
                    for rule in group.get("rules", []):
                        if "expr" not in rule or not ("alert" in rule or "record" in rule):
                            yield f"{name_of(obj)}: a rule needs expr and alert or record"
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            yield f"{name_of(obj)}: {exc.message} at {'.'.join(map(str, exc.path))}"
        except kubernetes_validate.SchemaNotFoundError:
            yield f"{name_of(obj)}: no schema for this kind in Kubernetes {version}"


def pods(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj.get("kind") in POD_KINDS:
            yield obj, dig(obj, "spec", "template", "spec") or {}


def restricted(objects: list[dict[str, Any]]) -> Iterator[str]:
    """The Pod Security Standard "restricted" (v1.33), per pod template."""
    for obj, spec in pods(objects):
        who = name_of(obj)
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                yield f"{who}: {flag} is not allowed"
        for volume in spec.get("volumes") or []:
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                yield f"{who}: volume {volume['name']} of type {sorted(kinds)} is not allowed"
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            sc = c.get("securityContext") or {}
            where = f"{who} container {c['name']}"
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                yield f"{where}: runAsNonRoot must be true"
            if 0 in (sc.get("runAsUser"), pod_sc.get("runAsUser")):
                yield f"{where}: runAsUser must not be 0"
            if sc.get("allowPrivilegeEscalation") is not False:
                yield f"{where}: allowPrivilegeEscalation must be false"
            if sc.get("privileged"):
                yield f"{where}: privileged is not allowed"
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                yield f"{where}: capabilities must drop ALL"
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                yield f"{where}: only NET_BIND_SERVICE may be added"
            profile = dig(sc, "seccompProfile", "type") or dig(pod_sc, "seccompProfile", "type")
            if profile not in ("RuntimeDefault", "Localhost"):
                yield f"{where}: seccompProfile must be RuntimeDefault or Localhost"
            if any(p.get("hostPort") for p in c.get("ports") or []):
                yield f"{where}: hostPort is not allowed"
            if not (dig(c, "resources", "requests") and dig(c, "resources", "limits")):
                yield f"{where}: set resources.requests and resources.limits"
            if not sc.get("readOnlyRootFilesystem"):
                yield f"{where}: readOnlyRootFilesystem must be true"


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next(
        (o for o in objects if o.get("kind") == kind and dig(o, "metadata", "name") == name),
        None,
    )


def service_config(objects: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """The service's Settings from its ConfigMap, loaded by the service's own loader."""
    from vllm_service.config import ConfigError, load_settings

    maps = [
        o for o in objects
        if o.get("kind") == "ConfigMap" and "config.yaml" in (o.get("data") or {})
        and str(dig(o, "metadata", "name")).startswith("vllm-service-config")
    ]  # fmt: skip
    if len(maps) != 1:
        return None, [f"expected one vllm-service-config ConfigMap, found {len(maps)}"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(maps[0]["data"]["config.yaml"])
        try:
            return load_settings(path), []
        except ConfigError as exc:
            detail = str(exc).replace(str(path), "config.yaml")
            return None, [f"{name_of(maps[0])}: {detail}"]


def the_service(objects: list[dict[str, Any]], settings: Any) -> Iterator[str]:
    dep = find(objects, "Deployment", "vllm-service")
    if dep is None:
        yield "no Deployment vllm-service"
        return
    spec = dig(dep, "spec", "template", "spec")
    c = spec["containers"][0]
    sc, pod_sc = c.get("securityContext") or {}, spec.get("securityContext") or {}
    if (sc.get("runAsUser") or pod_sc.get("runAsUser")) != 10001 or pod_sc.get("fsGroup") != 10001:
        yield "Deployment/vllm-service: run as uid 10001 with fsGroup 10001"
    if dig(dep, "spec", "strategy", "rollingUpdate", "maxUnavailable") != 0:
        yield "Deployment/vllm-service: rolling updates need maxUnavailable 0"
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if settings is not None:
        if ports.get("http") != settings.server.port:
            yield f"Deployment/vllm-service: port http is not server.port {settings.server.port}"
        if ports.get("metrics") != settings.server.metrics_port:
            yield "Deployment/vllm-service: port metrics is not server.metrics_port"
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"),
                        ("livenessProbe", "/health")):  # fmt: skip
        got = dig(c, probe, "httpGet") or {}
        if got.get("path") != path or got.get("port") not in ("http", ports.get("http")):
            yield f"Deployment/vllm-service: {probe} must GET {path} on port http"
    if settings is not None:
        pre_stop = dig(c, "lifecycle", "preStop", "sleep", "seconds") or 0
        needed = pre_stop + settings.server.drain_delay + settings.server.shutdown_grace
        if (spec.get("terminationGracePeriodSeconds") or 30) < needed:
            yield f"Deployment/vllm-service: terminationGracePeriodSeconds < {needed:g}"


def scaling_and_network(objects: list[dict[str, Any]]) -> Iterator[str]:
    hpa = find(objects, "HorizontalPodAutoscaler", "vllm-service")
    if hpa is not None:
        adapter = find(objects, "ConfigMap", "vllm-service-adapter-rules")
        rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"] if adapter else []
        made = {dig(r, "name", "as") for r in rules}
        for metric in dig(hpa, "spec", "metrics") or []:
            name = dig(metric, "pods", "metric", "name")
            if name is not None and name not in made:
                yield f"{name_of(hpa)}: metric {name} is made by no prometheus-adapter rule"
    elif find(objects, "ScaledObject", "vllm-service") is None:
        yield "nothing scales Deployment/vllm-service (no HPA, no ScaledObject)"
    policy = find(objects, "NetworkPolicy", "vllm-service")
    dep = find(objects, "Deployment", "vllm-service")
    if policy is None or dep is None:
        yield "no NetworkPolicy vllm-service"
        return
    labels = dig(dep, "spec", "template", "metadata", "labels") or {}
    selector = dig(policy, "spec", "podSelector", "matchLabels") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        yield f"{name_of(policy)}: its podSelector does not select the service's pods"
    opened = {p.get("port") for rule in dig(policy, "spec", "ingress") or []
              for p in rule.get("ports", [])}  # fmt: skip
    if not {"http", "metrics"} <= opened:
        yield f"{name_of(policy)}: ingress must open the http and metrics ports"


def alert_rules(objects: list[dict[str, Any]]) -> Iterator[str]:
    rule = find(objects, "PrometheusRule", "vllm-service")
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    if rule is None or dig(rule, "spec", "groups") != shipped:
        yield "PrometheusRule/vllm-service differs from deploy/prometheus/alerts.yml"


def secrets(objects: list[dict[str, Any]], given: dict[str, set[str]]) -> Iterator[str]:
    rendered = {
        dig(o, "metadata", "name"): set(o.get("data") or {}) | set(o.get("stringData") or {})
        for o in objects
        if o.get("kind") == "Secret"
    }
    known = {**given, **rendered}
    for obj, spec in pods(objects):
        for c in spec.get("containers") or []:
            for env in c.get("env") or []:
                ref = dig(env, "valueFrom", "secretKeyRef")
                if not ref or ref.get("optional"):
                    continue
                keys = known.get(ref["name"])
                if keys is not None and ref["key"] not in keys:
                    yield (
                        f"Secret {ref['name']} has no key {ref['key']!r} (env {env['name']} "
                        f"of {name_of(obj)})"
                    )


def needed_secrets(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret keys the pods read that the render does not create (the cluster must have)."""
    rendered = {dig(o, "metadata", "name") for o in objects if o.get("kind") == "Secret"}
    need: dict[str, set[str]] = {}
    for _, spec in pods(objects):
        for c in spec.get("containers") or []:
            for env in c.get("env") or []:
                ref = dig(env, "valueFrom", "secretKeyRef")
                if ref and ref["name"] not in rendered and not ref.get("optional"):
                    need.setdefault(ref["name"], set()).add(ref["key"])
    return need


def check(overlay: Path, given: dict[str, set[str]], version: str) -> list[str]:
    objects = render(overlay)
    settings, problems = service_config(objects)
    problems += list(schemas(objects, version))
    problems += list(restricted(objects))
    problems += list(the_service(objects, settings))
    problems += list(scaling_and_network(objects))
    problems += list(alert_rules(objects))
    problems += list(secrets(objects, given))
    return problems


def read_env_file(spec: str) -> tuple[str, set[str]]:
    name, _, path = spec.partition("=")
    keys = set()
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keys.add(line.split("=", 1)[0].strip())
    return name, keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overlays", nargs="*", help=f"folders (default: {', '.join(OVERLAYS)})")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    given = dict(read_env_file(s) for s in args.secret)
    folders = [Path(o) for o in args.overlays] or [HERE / "overlays" / o for o in OVERLAYS]
    failed = False
    for folder in folders:
        try:
            problems = check(folder, given, args.kubernetes_version)
        except ValueError as exc:
            problems = [str(exc)]
        for problem in problems:
            print(f"{folder.name}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            need = needed_secrets(render(folder))
            wanted = "; ".join(f"{n}: {', '.join(sorted(k))}" for n, k in sorted(need.items()))
            print(f"{folder.name}: ok" + (f" (the cluster must hold {wanted})" if need else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
