"""Running a bench Plan: every endpoint at every load point, interleaved, then the report."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vllm_service.accounting.cost import HardwareCost, HostedPrice, compare_costs
from vllm_service.bench.loadgen import Endpoint, LoadGenerator, RequestSample, RunResult
from vllm_service.bench.measures import SLO, summarize
from vllm_service.bench.report import metadata, print_summary, write_json, write_plots
from vllm_service.bench.workloads import BenchRequest, Workload


def numbers(text: str, kind: type[int] | type[float]) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"expected positive numbers, got {text!r}")
    return values


def parse_endpoints(urls: list[str], models: list[str], api_key: str, chat: bool) -> list[Endpoint]:
    """``[NAME=]URL`` each; one model for all, or one per endpoint."""
    if len(models) not in (1, len(urls)):
        raise typer.BadParameter("give one --model, or one per --endpoint")
    endpoints = []
    for i, spec in enumerate(urls):
        name, sep, url = spec.partition("=")
        if not sep:
            name, url = spec.split("://", 1)[-1].rstrip("/"), spec
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise typer.BadParameter(f"endpoint {spec!r}: the URL must start with http(s)://")
        if not url.endswith("/v1"):
            url += "/v1"
        model = models[i] if len(models) > 1 else models[0]
        endpoints.append(Endpoint(name, url, model, api_key, chat))
    if len({e.name for e in endpoints}) != len(endpoints):
        raise typer.BadParameter("endpoint names must differ (use NAME=URL)")
    return endpoints


@dataclass(frozen=True)
class Plan:
    """One bench run: every endpoint at every load point, its requests and its prices."""

    endpoints: list[Endpoint]
    #: (concurrency, None) for closed loops, (None, rate) for open ones.
    loads: list[tuple[int | None, float | None]]
    requests: int | None
    duration: float | None
    warmup: int
    arrivals: Literal["poisson", "constant"]
    seed: int
    ignore_eos: bool
    timeout: float
    workload: Workload
    slo: SLO
    hardware: HardwareCost
    hosted: HostedPrice

    def requests_for(self, offset: int) -> Iterator[BenchRequest]:
        """The requests of one load point: the same for every endpoint at that point."""
        return replace(self.workload, seed=self.seed + offset).requests()


def run(plan: Plan, console: Console) -> tuple[list[dict[str, Any]], list[list[RequestSample]]]:
    """Warm every endpoint up, then each load point on every endpoint in turn (interleaved:
    the machine's drift hits them alike)."""
    points: list[dict[str, Any]] = []
    all_samples: list[list[RequestSample]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        for ep in plan.endpoints:
            warm = LoadGenerator(ep, plan.requests_for(10_000), ignore_eos=plan.ignore_eos)
            asyncio.run(warm.warm_up(plan.warmup, max(c or 1 for c, _ in plan.loads)))
        for index, (conc, rps) in enumerate(plan.loads):
            for ep in plan.endpoints:
                label = f"{ep.name} " + (f"rate {rps:g}/s" if rps else f"concurrency {conc}")
                task = progress.add_task(label, total=plan.requests)

                def done(_: RequestSample, task: Any = task) -> None:
                    progress.advance(task)

                result = asyncio.run(_load_point(plan, index, ep, conc, rps, done))
                points.append(_point(plan, ep, conc, rps, result))
                all_samples.append(result.samples)
    return points, all_samples


async def _load_point(
    plan: Plan,
    index: int,
    ep: Endpoint,
    conc: int | None,
    rps: float | None,
    done: Callable[[RequestSample], None],
) -> RunResult:
    gen = LoadGenerator(
        ep,
        plan.requests_for(index),
        ignore_eos=plan.ignore_eos,
        timeout=plan.timeout,
        on_done=done,
    )
    if rps is not None:
        return await gen.open_loop(
            rps,
            requests=plan.requests,
            duration=plan.duration,
            arrivals=plan.arrivals,
            seed=plan.seed + index,
        )
    assert conc is not None
    return await gen.closed_loop(conc, requests=plan.requests, duration=plan.duration)


def _point(
    plan: Plan, ep: Endpoint, conc: int | None, rps: float | None, result: RunResult
) -> dict[str, Any]:
    """One load point's summary: latency, throughput, goodput, and cost when priced."""
    summary = summarize(result.samples, result.duration, plan.slo)
    cost = compare_costs(
        plan.hardware,
        plan.hosted,
        prompt_tokens=summary["prompt_tokens"],
        completion_tokens=summary["output_tokens"],
        seconds=result.duration,
    )
    if cost is not None and plan.hardware.per_hour > 0:
        summary["cost"] = {**asdict(cost), "hosted": plan.hosted.name}
    return {
        "endpoint": ep.name,
        "url": ep.base_url,
        "model": ep.model,
        "concurrency": conc,
        "rate": rps,
        "summary": summary,
    }


def report(
    plan: Plan,
    args: dict[str, Any],
    points: list[dict[str, Any]],
    samples: list[list[RequestSample]],
    output_dir: Path,
    *,
    plots: bool,
    console: Console,
    quality: dict[str, Any] | None = None,
) -> None:
    """The summary table, the JSON of every sample, and the plots."""
    endpoints = plan.endpoints
    print_summary(points, [e.name for e in endpoints], console)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result_path = output_dir / f"bench-{stamp}.json"
    meta = metadata(args)
    meta["endpoints"] = [{"name": e.name, "url": e.base_url, "model": e.model} for e in endpoints]
    meta["started"] = stamp
    meta["pid"] = os.getpid()
    write_json(result_path, meta, points, samples, quality)
    console.print(f"results: {result_path}")
    if plots:
        for path in write_plots(output_dir, points, samples):
            console.print(f"plot: {path}")
