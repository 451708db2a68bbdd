"""`vllm-service bench --quality-reference URL`: quality columns beside latency and cost.

After the load points, every endpoint answers the evaluation set (the shipped one, or
``--quality-dataset``) greedily, and its answers are scored against the reference endpoint's
answers to the same items: the weighted quality score, corpus BLEU and chrF (with sacrebleu's
signatures), per endpoint, so that one run compares endpoints on speed, cost and quality.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from vllm_service.bench.loadgen import Endpoint
from vllm_service.config.quality import QualityConfig
from vllm_service.quality.dataset import DatasetError, load_dataset, shipped_dataset
from vllm_service.quality.embeddings import build_embed
from vllm_service.quality.evaluator import Evaluator
from vllm_service.quality.offline import Endpoint as EvalEndpoint
from vllm_service.quality.offline import EvalError, evaluate


def quality_columns(
    endpoints: list[Endpoint],
    reference: tuple[str, str],
    api_key: str,
    dataset: Path | None,
    timeout: float,
    console: Console,
) -> dict[str, Any]:
    """Score every endpoint against the reference (URL, model); print and return the table."""
    try:
        items = load_dataset(dataset or shipped_dataset())
    except DatasetError as exc:
        raise typer.BadParameter(str(exc)) from exc
    config = QualityConfig()
    evaluator = Evaluator(config, build_embed(config))
    url, model = reference
    targets = [EvalEndpoint(e.name, e.base_url, e.model, api_key) for e in endpoints]
    ref = EvalEndpoint("reference", url.rstrip("/"), model, api_key)
    try:
        run = asyncio.run(evaluate(evaluator, items, targets, ref, 2, timeout))
    except EvalError as exc:
        console.print(f"quality: not measured: {exc}")
        return {"error": str(exc)}
    for warning in run.warnings:
        console.print(f"quality: {warning}")
    table = Table(title=f"quality against {url} ({model}), {len(run.items)} items",
                  title_justify="left")  # fmt: skip
    table.add_column("measure")
    for report in run.reports:
        table.add_column(report.endpoint.name, justify="right")
    out: dict[str, Any] = {"reference": {"url": url, "model": model}, "items": len(run.items)}
    reports = run.reports
    table.add_row("weighted score", *(f"{r.by_class['all']['overall']:.3f}" for r in reports))
    table.add_row("corpus BLEU", *(f"{r.bleu.score:.2f}" for r in reports))
    table.add_row("corpus chrF", *(f"{r.chrf.score:.2f}" for r in reports))
    table.add_row("failed items", *(str(r.failed) for r in reports))
    console.print(table)
    console.print(f"  BLEU signature: {run.reports[0].bleu.signature}")
    out["endpoints"] = {
        r.endpoint.name: {
            "weighted_score": r.by_class["all"]["overall"],
            "bleu": r.bleu.score,
            "bleu_signature": r.bleu.signature,
            "chrf": r.chrf.score,
            "chrf_signature": r.chrf.signature,
            "failed": r.failed,
            "by_class": r.by_class,
        }
        for r in run.reports
    }
    return out
