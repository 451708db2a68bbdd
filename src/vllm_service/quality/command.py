"""``vllm-service eval``: score an endpoint's answers on a dataset, or compare two endpoints.

Prints corpus BLEU and chrF with their sacrebleu signatures, the six dimensions and the
weighted score per content class; writes every item with its scores as JSON, the hypothesis
and reference files (one item per line, for the ``sacrebleu`` command line), and a plot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from vllm_service.config import ConfigError, load_settings
from vllm_service.quality.compare import Comparison, compare
from vllm_service.quality.dataset import DatasetError, EvalItem, load_dataset, shipped_dataset
from vllm_service.quality.embeddings import build_embed
from vllm_service.quality.evaluator import Evaluator
from vllm_service.quality.offline import (
    Endpoint,
    EndpointReport,
    EvalError,
    evaluate,
    item_rows,
    one_line,
)
from vllm_service.quality.report import plot, print_report


def eval_command(
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible API base URL.")] = (
        "http://127.0.0.1:8090/v1"
    ),
    model: Annotated[str, typer.Option(help="Model to ask.")] = "smollm2-135m-instruct",
    dataset: Annotated[
        Path | None, typer.Option(help="JSON Lines items (default: the shipped evaluation set).")
    ] = None,
    reference_endpoint: Annotated[
        str | None, typer.Option(help="Ask this endpoint for every reference (not the file's).")
    ] = None,
    reference_model: Annotated[str | None, typer.Option(help="The reference endpoint's model.")] = (
        None
    ),
    compare_endpoint: Annotated[
        str | None, typer.Option("--compare", help="A second endpoint: a paired comparison.")
    ] = None,
    compare_model: Annotated[str | None, typer.Option(help="Its model (default: --model).")] = None,
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key.")] = "unused",
    output: Annotated[
        Path | None, typer.Option(help="Folder for eval.json and the hypothesis/reference files.")
    ] = None,
    plot_file: Annotated[Path | None, typer.Option("--plot", help="A PNG of the scores.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Service config whose quality: section sets weights.")
    ] = None,
    temperature: Annotated[
        float, typer.Option(min=0, max=2, help="Sampling of the evaluated endpoints (0: greedy).")
    ] = 0.0,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests at once.")] = 2,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 120.0,
) -> None:
    """Evaluate answer quality on a dataset against references."""
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # not one line per request
    try:
        items = load_dataset(dataset or shipped_dataset())
        settings = load_settings(config)
    except (DatasetError, ConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if reference_endpoint is None:
        missing = [item.id for item in items if item.reference is None]
        if missing:
            typer.echo(
                f"error: items without a reference ({', '.join(map(str, missing[:5]))}); "
                "add references or pass --reference-endpoint",
                err=True,
            )
            raise typer.Exit(2)
    evaluator = Evaluator(settings.quality, build_embed(settings.quality))
    targets = [Endpoint("endpoint", endpoint, model, api_key, temperature)]
    if compare_endpoint is not None:
        other = compare_model or model
        targets.append(Endpoint("compare", compare_endpoint, other, api_key, temperature))
    reference = None
    if reference_endpoint is not None:
        reference = Endpoint("reference", reference_endpoint, reference_model or model, api_key)
    try:
        run = asyncio.run(evaluate(evaluator, items, targets, reference, concurrency, timeout))
    except EvalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for warning in run.warnings:
        typer.echo(warning, err=True)
    items, references, reports = run.items, run.references, run.reports
    comparison = compare(reports[0], reports[1], references) if len(reports) == 2 else None
    print_report(reports, comparison)
    if output is not None:
        _write(output, items, references, reports, comparison)
    if plot_file is not None:
        plot(reports, plot_file)


def _write(
    folder: Path,
    items: list[EvalItem],
    references: list[str],
    reports: list[EndpointReport],
    comparison: Comparison | None,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "references.txt").write_text("".join(one_line(r) + "\n" for r in references))
    summary: dict[str, Any] = {}
    for report in reports:
        name = report.endpoint.name
        lines = "".join(one_line(r.text) + "\n" for r in report.replies)
        (folder / f"{name}.hyp.txt").write_text(lines)
        summary[name] = {
            "url": report.endpoint.url,
            "model": report.endpoint.model,
            "failed": report.failed,
            "corpus": {
                s.name: {"score": s.score, "signature": s.signature, "detail": s.detail}
                for s in (report.bleu, report.chrf)
            },
            "by_class": report.by_class,
        }
    document = {
        "endpoints": summary,
        "comparison": None if comparison is None else comparison.as_dict(),
        "items": item_rows(items, references, reports),
    }
    (folder / "eval.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
