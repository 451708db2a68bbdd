"""``vllm-service bench``: measure one or more OpenAI-compatible endpoints side by side.

The command parses its options into a Plan; bench/run.py runs it and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vllm_service.accounting.cost import HardwareCost, HostedPrice

# The cost model's defaults, as accounting/cost.py sets them (one place for them).
_HOSTED, _HARDWARE = HostedPrice(), HardwareCost()


def bench(
    endpoint: Annotated[
        list[str],
        typer.Option(help="[NAME=]URL of an OpenAI-compatible API; repeat to compare."),
    ] = ["http://127.0.0.1:8090/v1"],  # noqa: B006 (typer reads the default)
    compare: Annotated[
        list[str] | None,
        typer.Option(help="[NAME=]URL of another endpoint measured side by side; repeatable."),
    ] = None,
    model: Annotated[
        list[str],
        typer.Option(help="Model name to request; one, or one per endpoint (--endpoint first)."),
    ] = ["smollm2-135m-instruct"],  # noqa: B006
    api_key: Annotated[str, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key.")] = "unused",
    completions: Annotated[bool, typer.Option(help="Use /v1/completions, not chat.")] = False,
    concurrency: Annotated[
        str, typer.Option(help="Closed loop: comma-separated concurrencies to sweep.")
    ] = "1",
    rate: Annotated[
        str | None, typer.Option(help="Open loop: comma-separated request rates (req/s).")
    ] = None,
    arrivals: Annotated[str, typer.Option(help="Open loop arrivals: poisson or constant.")] = (
        "poisson"
    ),
    requests: Annotated[
        int | None, typer.Option(min=1, help="Requests per load point and endpoint.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Seconds per load point (instead of requests).")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured requests first.")] = 2,
    workload: Annotated[str, typer.Option(help="synthetic, jsonl or sharegpt.")] = "synthetic",
    dataset: Annotated[Path | None, typer.Option(help="The jsonl / sharegpt file.")] = None,
    input_len: Annotated[int, typer.Option(min=1, help="Synthetic prompt length (words).")] = 128,
    output_len: Annotated[int, typer.Option(min=1, help="max_tokens of each request.")] = 128,
    len_spread: Annotated[
        float, typer.Option(min=0, max=1, help="Lengths vary uniformly by ± this share.")
    ] = 0.0,
    repeat_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of requests repeating an earlier one.")
    ] = 0.0,
    ignore_eos: Annotated[
        bool, typer.Option(help="Send ignore_eos: exactly max_tokens tokens (vLLM, llama.cpp).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Same seed, same requests.")] = 0,
    slo_ttft_ms: Annotated[float | None, typer.Option(help="Goodput: TTFT objective.")] = None,
    slo_tpot_ms: Annotated[float | None, typer.Option(help="Goodput: TPOT objective.")] = None,
    slo_e2e_ms: Annotated[float | None, typer.Option(help="Goodput: E2E objective.")] = None,
    hourly_cost: Annotated[float, typer.Option(help="Hardware rent, $/hour.")] = _HARDWARE.hourly,
    hardware_price: Annotated[
        float, typer.Option(help="Hardware purchase price, $.")
    ] = _HARDWARE.purchase_price,
    amortize_months: Annotated[
        float, typer.Option(min=1, help="Months to amortize over.")
    ] = _HARDWARE.amortize_months,
    power_watts: Annotated[
        float, typer.Option(min=0, help="Power drawn under load.")
    ] = _HARDWARE.power_watts,
    kwh_price: Annotated[
        float, typer.Option(min=0, help="Electricity, $/kWh.")
    ] = _HARDWARE.kwh_price,
    hosted_name: Annotated[str, typer.Option(help="The hosted API priced against.")] = _HOSTED.name,
    hosted_input_price: Annotated[
        float, typer.Option(help="$ per 1M input tokens.")
    ] = _HOSTED.input_per_million,
    hosted_output_price: Annotated[
        float, typer.Option(help="$ per 1M output tokens.")
    ] = _HOSTED.output_per_million,
    output_dir: Annotated[Path, typer.Option(help="Where the JSON and the plots go.")] = Path(
        "bench-results"
    ),
    plots: Annotated[bool, typer.Option(help="Write PNG plots (needs matplotlib).")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds one request may take.")] = 600,
    quality_reference: Annotated[
        str | None,
        typer.Option(help="Score every endpoint's answers against this endpoint's (URL .../v1)."),
    ] = None,
    quality_reference_model: Annotated[
        str | None, typer.Option(help="The reference's model (default: the first --model).")
    ] = None,
    quality_dataset: Annotated[
        Path | None, typer.Option(help="Evaluation items (default: the shipped set).")
    ] = None,
) -> None:
    """Load-test OpenAI-compatible endpoints: latency, throughput, goodput and cost per token."""
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()}
    args.pop("api_key", None)
    # Imported here, after the options are read: `vllm-service serve` must not load the load
    # generator and its client.
    from rich.console import Console

    from vllm_service.bench.measures import SLO
    from vllm_service.bench.run import Plan, numbers, parse_endpoints, report, run
    from vllm_service.bench.workloads import Length, Workload

    if arrivals not in ("poisson", "constant"):
        raise typer.BadParameter("--arrivals must be poisson or constant")
    if workload not in ("synthetic", "jsonl", "sharegpt"):
        raise typer.BadParameter("--workload must be synthetic, jsonl or sharegpt")
    plan = Plan(
        endpoints=parse_endpoints(
            [*endpoint, *(compare or [])], model, api_key, chat=not completions
        ),
        loads=(
            [(None, r) for r in numbers(rate, float)]
            if rate is not None
            else [(c, None) for c in numbers(concurrency, int)]
        ),
        requests=20 if requests is None and duration is None else requests,
        duration=duration,
        warmup=warmup,
        arrivals="constant" if arrivals == "constant" else "poisson",
        seed=seed,
        ignore_eos=ignore_eos,
        timeout=timeout,
        workload=Workload(
            name=workload,
            seed=seed,
            chat=not completions,
            input_len=Length(input_len, len_spread),
            output_len=Length(output_len, len_spread),
            path=dataset,
            repeat_share=repeat_share,
        ),
        slo=SLO(slo_ttft_ms, slo_tpot_ms, slo_e2e_ms),
        hardware=HardwareCost(hourly_cost, hardware_price, amortize_months, power_watts, kwh_price),
        hosted=HostedPrice(hosted_name, hosted_input_price, hosted_output_price),
    )
    try:
        next(plan.workload.requests())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console()
    points, samples = run(plan, console)
    quality = None
    if quality_reference is not None:
        from vllm_service.bench.quality import quality_columns

        reference = (quality_reference, quality_reference_model or model[0])
        quality = quality_columns(
            plan.endpoints, reference, api_key, quality_dataset, timeout, console
        )
    report(plan, args, points, samples, output_dir, plots=plots, console=console, quality=quality)
