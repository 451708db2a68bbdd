"""The committed dashboard JSON is what deploy/grafana/build_dashboards.py writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dashboards_are_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "deploy/grafana/build_dashboards.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for uid, (title, panels) in module.DASHBOARDS.items():
        committed = json.loads((ROOT / f"deploy/grafana/dashboards/{uid}.json").read_text())
        assert committed == module.dashboard(uid, title, panels), f"rebuild {uid}.json"
        assert all(p["targets"] for p in committed["panels"])
