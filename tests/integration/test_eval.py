"""`vllm-service eval` on the shipped evaluation set against the real service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL, Service, dead_url, python_tool, service_command

pytestmark = pytest.mark.integration


def run_eval(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*service_command(), "eval", *args], capture_output=True, text=True, timeout=900
    )
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def test_the_shipped_set_scores_and_matches_the_sacrebleu_command_line(
    service: Service, tmp_path: Path
) -> None:
    url = f"{service.base_url}/v1"
    proc = run_eval(
        "--endpoint", url, "--model", MODEL, "--compare", url,
        "--output", str(tmp_path), "--plot", str(tmp_path / "eval.png"),
    )  # fmt: skip
    out = proc.stdout
    assert "corpus BLEU = " in out
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    for cls in ("viral_hook", "technical", "code", "creative"):
        assert cls in out
    report: dict[str, Any] = json.loads((tmp_path / "eval.json").read_text())
    assert len(report["items"]) == 24
    ours = report["endpoints"]["endpoint"]
    assert ours["failed"] == 0
    assert set(ours["by_class"]) == {"all", "viral_hook", "technical", "code", "creative"}
    assert ours["by_class"]["all"]["n"] == 24
    # The corpus scores are what the sacrebleu command line computes on the same files.
    sacrebleu = python_tool("sacrebleu")
    assert sacrebleu is not None
    cli = subprocess.run(
        [sacrebleu, str(tmp_path / "references.txt"), "-i", str(tmp_path / "endpoint.hyp.txt"),
         "-m", "bleu", "chrf", "--format", "json", "-w", "4"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    by_name = {r["name"]: r for r in json.loads(cli.stdout)}
    assert ours["corpus"]["BLEU"]["score"] == pytest.approx(by_name["BLEU"]["score"], abs=1e-4)
    assert ours["corpus"]["chrF"]["score"] == pytest.approx(by_name["chrF2"]["score"], abs=1e-4)
    assert ours["corpus"]["BLEU"]["signature"].endswith(by_name["BLEU"]["signature"][-20:])
    # The same greedy endpoint twice: no difference, and no test calls one.
    comparison = report["comparison"]
    assert comparison["overall"]["difference"] == 0
    assert comparison["overall"]["p_value"] == 1.0
    assert comparison["bleu_baseline"] == comparison["bleu_candidate"]
    assert comparison["bleu_p_value"] == 1.0
    assert (tmp_path / "eval.png").stat().st_size > 0


def test_an_endpoint_compared_with_itself_scores_near_1(service: Service, tmp_path: Path) -> None:
    url = f"{service.base_url}/v1"
    run_eval(
        "--endpoint", url, "--reference-endpoint", url, "--reference-model", MODEL,
        "--output", str(tmp_path),
    )  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    overall = [item["endpoint"]["overall"] for item in report["items"]]
    assert min(overall) == pytest.approx(1.0)
    assert report["endpoints"]["endpoint"]["corpus"]["BLEU"]["score"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"reference": "x"}', "line 2: item: Value error, give exactly one of"),
        ('{"prompt": "hi", "reference": "  "}', "line 2: item: Value error, 'reference' is empty"),
        ('{"prompt": "hi", "reference": "x", "class": "poetry"}', "line 2: class: Input should"),
        ('["prompt"]', "line 2: expected an object"),
    ],
)
def test_a_malformed_dataset_names_its_line(tmp_path: Path, line: str, message: str) -> None:
    dataset = tmp_path / "bad.jsonl"
    dataset.write_text('{"prompt": "fine", "reference": "ok"}\n' + line + "\n")
    proc = run_eval("--dataset", str(dataset), "--endpoint", "http://127.0.0.1:9/v1", check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_a_reference_endpoint_that_answers_nothing_is_a_clear_error(
    service: Service, tmp_path: Path
) -> None:
    dead = dead_url()
    proc = run_eval(
        "--endpoint", f"{service.base_url}/v1", "--reference-endpoint", dead,
        "--timeout", "5", check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "reference endpoint failed on 24 of 24 items" in proc.stderr
    assert "the reference endpoint answered no item" in proc.stderr
