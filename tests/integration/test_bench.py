"""`vllm-service bench` against the real service on the embedded model, as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL, Service, dead_url, service_command

pytestmark = pytest.mark.integration


def run_bench(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(
        [*service_command(), "bench", "--output-dir", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (result,) = out.glob("bench-*.json")
    return proc, json.loads(result.read_text())


def test_a_short_run_writes_consistent_results_and_plots(service: Service, tmp_path: Path) -> None:
    proc, result = run_bench(
        tmp_path,
        "--endpoint", f"ours={service.base_url}/v1",
        "--model", MODEL,
        "--concurrency", "1,3",
        "--requests", "6",
        "--warmup", "1",
        "--input-len", "16",
        "--output-len", "8",
        "--ignore-eos",
        "--seed", "5",
        "--slo-ttft-ms", "60000",
        "--hourly-cost", "0.5",
    )  # fmt: skip
    assert "concurrency 3" in proc.stdout
    points = result["points"]
    assert [(p["endpoint"], p["concurrency"]) for p in points] == [("ours", 1), ("ours", 3)]
    for point in points:
        summary, samples = point["summary"], point["samples"]
        assert summary["requests"] == summary["completed"] == len(samples) == 6
        assert summary["failed"] == 0
        # ignore_eos: every answer is exactly max_tokens long, as the server's usage says.
        assert [s["output_tokens"] for s in samples] == [8] * 6
        assert summary["output_tokens"] == 48
        assert summary["prompt_tokens"] == sum(s["prompt_tokens"] for s in samples) > 0
        # One gap between consecutive content chunks; a chunk carries one token or, when a
        # token's text is held back (a partial character), more than one.
        assert all(1 <= len(s["itl"]) <= 7 for s in samples)
        for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            d = summary[key]
            assert d["p50"] <= d["p90"] <= d["p95"] <= d["p99"]
        assert summary["ttft_ms"]["p50"] <= summary["e2e_ms"]["p50"]
        assert summary["goodput"]["good"] == 6
        assert summary["cost"]["hardware_per_hour"] == 0.5
        # The service's own breakdown came back with every request.
        assert {"queue", "prefill", "decode", "total"} <= summary["server_timing_ms"].keys()
    meta = result["metadata"]
    assert meta["args"]["seed"] == 5
    assert meta["endpoints"] == [{"name": "ours", "url": f"{service.base_url}/v1", "model": MODEL}]
    assert "api_key" not in meta["args"]
    for name in ("latency_vs_load", "throughput_vs_load", "ttft_distribution", "itl_distribution"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same seed sends the same requests: the prompts' token counts repeat.
    _, again = run_bench(
        tmp_path / "again",
        "--endpoint", f"ours={service.base_url}/v1", "--concurrency", "1", "--requests", "6",
        "--warmup", "0", "--input-len", "16", "--output-len", "8", "--seed", "5", "--no-plots",
    )  # fmt: skip
    first = [s["prompt_tokens"] for s in points[0]["samples"]]
    assert [s["prompt_tokens"] for s in again["points"][0]["samples"]] == first


def test_errors_are_counted_not_crashes(service: Service, tmp_path: Path) -> None:
    dead = dead_url()
    proc, result = run_bench(
        tmp_path,
        "--endpoint", f"wrong-model={service.base_url}/v1",
        "--compare", f"dead={dead}",
        "--model", "no-such-model",
        "--concurrency", "2",
        "--requests", "4",
        "--warmup", "0",
        "--no-plots",
    )  # fmt: skip
    wrong, unreachable = result["points"]
    assert wrong["summary"]["errors"] == {"http_404": 4}
    assert unreachable["summary"]["failed"] == 4
    assert unreachable["summary"]["errors"] == {"ConnectError": 4}
    assert "errors" in proc.stdout


def test_quality_columns_beside_latency_and_cost(service: Service, tmp_path: Path) -> None:
    dataset = tmp_path / "items.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"prompt": f"Write one sentence about {s}.", "max_tokens": 16}) + "\n"
            for s in ("tea", "rivers", "clocks")
        )
    )
    url = f"{service.base_url}/v1"
    proc, result = run_bench(
        tmp_path,
        "--endpoint", f"ours={url}",
        "--model", MODEL,
        "--requests", "2",
        "--warmup", "0",
        "--input-len", "8",
        "--output-len", "4",
        "--no-plots",
        "--quality-reference", url,
        "--quality-dataset", str(dataset),
    )  # fmt: skip
    assert "quality against" in proc.stdout
    assert "weighted score" in proc.stdout
    quality = result["quality"]
    assert quality["items"] == 3
    ours = quality["endpoints"]["ours"]
    # The endpoint is its own reference here (greedy): its answers match exactly.
    assert ours["weighted_score"] == pytest.approx(1.0)
    assert ours["bleu"] == pytest.approx(100.0)
    assert ours["bleu_signature"].startswith("nrefs:1|")
    assert result["points"][0]["summary"]["completed"] == 2
