"""Benchmark output: the terminal tables, the JSON result file and the plots."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vllm_service import __version__
from vllm_service.bench.loadgen import RequestSample

#: (label, key in a summary, field of that distribution or None for a plain number)
ROWS: list[tuple[str, str, str | None]] = [
    ("completed / failed", "completed", None),
    ("requests/s", "request_throughput", None),
    ("output tokens/s", "output_throughput", None),
    ("goodput req/s", "goodput", "rate"),
    ("TTFT mean ms", "ttft_ms", "mean"),
    ("TTFT p50 ms", "ttft_ms", "p50"),
    ("TTFT p99 ms", "ttft_ms", "p99"),
    ("ITL p50 ms", "itl_ms", "p50"),
    ("ITL p99 ms", "itl_ms", "p99"),
    ("TPOT p50 ms", "tpot_ms", "p50"),
    ("E2E p50 ms", "e2e_ms", "p50"),
    ("E2E p90 ms", "e2e_ms", "p90"),
    ("E2E p99 ms", "e2e_ms", "p99"),
]


def value(summary: dict[str, Any], key: str, part: str | None) -> float | None:
    item = summary.get(key)
    if part is None:
        return float(item) if isinstance(item, int | float) else None
    if isinstance(item, dict) and isinstance(item.get(part), int | float):
        return float(item[part])
    return None


def _fmt(number: float | None) -> str:
    if number is None:
        return "-"
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:,.2f}"


def point_label(point: dict[str, Any]) -> str:
    if point.get("rate") is not None:
        return f"rate {point['rate']:g}/s"
    return f"concurrency {point['concurrency']}"


def print_summary(points: list[dict[str, Any]], endpoints: list[str], console: Console) -> None:
    """One table per load point: a column per endpoint, and ratios to the first endpoint."""
    labels = list(dict.fromkeys(point_label(p) for p in points))
    for label in labels:
        table = Table(title=label, title_justify="left")
        table.add_column("measure")
        for name in endpoints:
            table.add_column(name, justify="right")
        for other in endpoints[1:]:
            table.add_column(f"{other} / {endpoints[0]}", justify="right")
        by_endpoint = {p["endpoint"]: p["summary"] for p in points if point_label(p) == label}
        for row_label, key, part in ROWS:
            cells = []
            for name in endpoints:
                summary = by_endpoint.get(name, {})
                if key == "completed":
                    cells.append(f"{summary.get('completed', 0)} / {summary.get('failed', 0)}")
                else:
                    cells.append(_fmt(value(summary, key, part)))
            base = value(by_endpoint.get(endpoints[0], {}), key, part)
            for other in endpoints[1:]:
                mine = value(by_endpoint.get(other, {}), key, part)
                ratio = mine / base if key != "completed" and mine is not None and base else None
                cells.append("-" if ratio is None else f"{ratio:.2f}x")
            table.add_row(row_label, *cells)
        console.print(table)
        for name in endpoints:
            summary = by_endpoint.get(name, {})
            if summary.get("errors"):
                console.print(f"  {name} errors: {summary['errors']}")
            if summary.get("cost"):
                cost = summary["cost"]
                console.print(
                    f"  {name}: ${cost['local_per_1k']:.6f} per 1K tokens on this hardware "
                    f"(${cost['hardware_per_hour']:.3f}/h) vs ${cost['hosted_per_1k']:.6f} at "
                    f"{cost['hosted']} list price"
                )
            breakdown = summary.get("server_timing_ms") or {}
            if breakdown:
                parts = ", ".join(
                    f"{phase} {dist['p50']:.2f}" for phase, dist in breakdown.items() if dist
                )
                console.print(f"  {name} server-side p50 ms: {parts}")


def metadata(args: dict[str, Any]) -> dict[str, Any]:
    import httpx2
    import numpy

    return {
        "vllm_service": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "versions": {"httpx2": httpx2.__version__, "numpy": numpy.__version__},
        "args": args,
    }


def write_json(
    path: Path,
    meta: dict[str, Any],
    points: list[dict[str, Any]],
    samples: list[list[RequestSample]],
    quality: dict[str, Any] | None = None,
) -> None:
    """Every load point's summary and every per-request sample, with the run's metadata (and
    the quality columns, when measured)."""
    out: dict[str, Any] = {
        "metadata": meta,
        "points": [
            {**point, "samples": [asdict(s) for s in point_samples]}
            for point, point_samples in zip(points, samples, strict=True)
        ],
    }
    if quality is not None:
        out["quality"] = quality
    path.write_text(json.dumps(out, indent=1))


def write_plots(
    directory: Path, points: list[dict[str, Any]], samples: list[list[RequestSample]]
) -> list[Path]:
    """Latency percentiles and throughput against load, TTFT and ITL distributions (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    endpoints = list(dict.fromkeys(p["endpoint"] for p in points))
    open_loop = any(p.get("rate") is not None for p in points)
    x_label = "request rate (req/s)" if open_loop else "concurrency"

    def load(point: dict[str, Any]) -> float:
        return float(point["rate"] if open_loop else point["concurrency"])

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in endpoints:
        mine = sorted((p for p in points if p["endpoint"] == name), key=load)
        xs = [load(p) for p in mine]
        for ax, key in zip(axes, ("ttft_ms", "e2e_ms"), strict=True):
            for pct, style in (("p50", "-o"), ("p99", "--o")):
                ys = [value(p["summary"], key, pct) or np.nan for p in mine]
                ax.plot(xs, ys, style, label=f"{name} {pct}")
    for ax, title in zip(axes, ("TTFT", "end-to-end latency"), strict=True):
        ax.set(title=title, xlabel=x_label, ylabel="ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    written.append(_save(fig, directory / "latency_vs_load.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in endpoints:
        mine = sorted((p for p in points if p["endpoint"] == name), key=load)
        xs = [load(p) for p in mine]
        axes[0].plot(xs, [p["summary"]["output_throughput"] for p in mine], "-o", label=name)
        axes[1].plot(xs, [p["summary"]["request_throughput"] for p in mine], "-o", label=name)
    for ax, unit in zip(axes, ("output tokens/s", "requests/s"), strict=True):
        ax.set(title=f"throughput ({unit})", xlabel=x_label, ylabel=unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    written.append(_save(fig, directory / "throughput_vs_load.png"))

    for kind, title in (("ttft", "TTFT"), ("itl", "inter-token latency")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for point, point_samples in zip(points, samples, strict=True):
            if kind == "ttft":
                values = [s.ttft * 1e3 for s in point_samples if s.ok and s.ttft is not None]
            else:
                values = [g * 1e3 for s in point_samples if s.ok for g in s.itl]
            if values:
                ordered = np.sort(values)
                share = np.arange(1, len(ordered) + 1) / len(ordered)
                ax.plot(ordered, share, label=f"{point['endpoint']} {point_label(point)}")
        ax.set(title=f"{title} distribution (CDF)", xlabel="ms", ylabel="share of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, directory / f"{kind}_distribution.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
