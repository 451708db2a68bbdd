"""The evaluation's table (terminal) and plot (PNG)."""

from __future__ import annotations

from pathlib import Path

import typer

from vllm_service.config.quality import DIMENSIONS
from vllm_service.quality.compare import Comparison
from vllm_service.quality.offline import EndpointReport

_SHORT = {
    "semantic_similarity": "semantic",
    "structure_quality": "structure",
    "engagement_score": "engage",
    "technical_accuracy": "technical",
    "coherence_score": "coherence",
    "completeness": "complete",
}


def print_report(reports: list[EndpointReport], comparison: Comparison | None) -> None:
    for report in reports:
        ep = report.endpoint
        typer.echo(f"\n{ep.name}: {ep.url} (model {ep.model})")
        if report.failed:
            typer.echo(f"  {report.failed} of {len(report.replies)} items failed (scored empty)")
        for corpus in (report.bleu, report.chrf):
            typer.echo(f"  corpus {corpus.name} = {corpus.score:.2f}  ({corpus.signature})")
        header = ["class", "n", "overall", "weighted", *(_SHORT[d] for d in DIMENSIONS)]
        typer.echo("  " + "".join(f"{h:>11}" for h in header))
        for name, row in report.by_class.items():
            cells = [name, f"{row['n']:.0f}", f"{row['overall']:.3f}", f"{row['weighted']:.3f}"]
            cells += [f"{row[d]:.3f}" if d in row else "-" for d in DIMENSIONS]
            typer.echo("  " + "".join(f"{c:>11}" for c in cells))
    if comparison is not None:
        d = comparison.overall
        typer.echo(
            f"\n{comparison.candidate} - {comparison.baseline}, weighted score: "
            f"{d.difference:+.3f} (95% CI {d.low:+.3f} .. {d.high:+.3f}; {d.test} p = "
            f"{d.p_value:.4f}; n = {d.n_a} paired items)"
        )
        typer.echo(
            f"BLEU {comparison.bleu_baseline:.2f} -> {comparison.bleu_candidate:.2f}: paired "
            f"bootstrap p = {comparison.bleu_p_value:.4f} ({comparison.bleu_signature})"
        )


def plot(reports: list[EndpointReport], path: Path) -> None:
    """Mean weighted score per content class, one bar per endpoint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        typer.echo("the plot needs matplotlib: pip install 'vllm-service[bench]'", err=True)
        return
    classes = [c for c in reports[0].by_class if c != "all"] + ["all"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(reports)
    for i, report in enumerate(reports):
        values = [report.by_class.get(c, {}).get("overall", 0.0) for c in classes]
        positions = [x + i * width for x in range(len(classes))]
        ax.bar(positions, values, width, label=f"{report.endpoint.name} ({report.endpoint.model})")
    ax.axhline(0.85, color="red", linestyle="--", linewidth=1, label="gate 0.85")
    ax.set_xticks([x + width * (len(reports) - 1) / 2 for x in range(len(classes))], classes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("weighted score (target attainment)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
