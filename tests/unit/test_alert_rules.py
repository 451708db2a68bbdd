"""The Prometheus alert rules: valid, unit-tested with promtool, each with a runbook entry."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import system_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
RUNBOOK = ROOT / "docs/runbook.md"


def promtool() -> str:
    return system_binary("promtool", "prometheus")


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_are_valid() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_every_alert_fires_in_its_unit_test() -> None:
    tests = RULES.parent / "alerts_test.yml"
    result = subprocess.run(
        [promtool(), "test", "rules", tests.name], cwd=RULES.parent, capture_output=True
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    spec = yaml.safe_load(tests.read_text())
    fired = {
        case["alertname"]
        for test in spec["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in alerts()}


def test_every_alert_has_annotations_and_a_runbook_section() -> None:
    headings = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"]
        assert annotations["description"]
        name = str(rule["alert"])
        assert annotations["runbook"] == f"docs/runbook.md#{name.lower()}"
        assert name in headings
