"""Writes the Grafana dashboards of vllm-service (JSON) from the panel lists below.

    python deploy/grafana/build_dashboards.py

Every query uses only metrics the service exports; the test suite checks that against a live
/metrics and parses each query with a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}

Panel = tuple[str, str, list[tuple[str, str]], str]  # title, kind, [(expr, legend)], unit

DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "vllm-executive": (
        "vllm-service: executive",
        [
            ("Requests per second", "timeseries",
             [("sum(rate(vllm_requests_total{status=~\"2..\"}[5m]))", "answered")], "reqps"),
            ("Tokens generated per second", "timeseries",
             [("sum by (model) (rate(vllm_tokens_generated_total[5m]))", "{{model}}")], "short"),
            ("Tokens generated (24 h)", "stat",
             [("sum(increase(vllm_tokens_generated_total[24h]))", "tokens")], "short"),
            ("Prompt tokens served from the prefix cache", "stat",
             [("sum(rate(vllm_prompt_tokens_cached_total[1h])) / "
               "sum(rate(vllm_prompt_tokens_total[1h]))", "share")], "percentunit"),
            ("Requests meeting the latency target", "stat",
             [("sum(rate(vllm_latency_target_met_total[1h])) / "
               "sum(rate(vllm_requests_total{status=~\"2..\",model!=\"none\"}[1h]))", "share")],
             "percentunit"),
            ("Cost savings since start (all replicas)", "stat",
             [("sum(vllm_cost_savings_usd)", "$")], "currencyUSD"),
            ("Savings by hosted reference, since start", "stat",
             [("sum by (reference) (vllm_cost_savings_by_reference_usd)", "{{reference}}")],
             "currencyUSD"),
            ("Return on the hardware, annualized", "stat",
             [("avg by (reference) (vllm_cost_roi_annual)", "{{reference}}")], "percentunit"),
            ("Hosted-API price of the tokens answered, per hour", "timeseries",
             [("sum(rate(vllm_hosted_equivalent_cost_usd_total[1h])) * 3600", "hosted price"),
              ("sum(vllm_hardware_cost_usd_per_hour)", "hardware")], "currencyUSD"),
            ("Answers from the response cache", "stat",
             [("sum(rate(vllm_cache_lookups_total{outcome=~\".*hit\"}[1h])) / "
               "sum(rate(vllm_cache_lookups_total[1h]))", "share")], "percentunit"),
            ("Completion tokens answered from the cache (24 h)", "stat",
             [("sum(increase(vllm_cache_completion_tokens_total[24h]))", "tokens")], "short"),
            ("Requests by device", "piechart",
             [("sum by (device) (increase(vllm_device_requests_total[24h]))", "{{device}}")],
             "short"),
        ],
    ),
    "vllm-technical": (
        "vllm-service: technical",
        [
            ("End-to-end latency", "timeseries",
             [(f"histogram_quantile({q}, sum by (le) "
               f"(rate(vllm_request_duration_seconds_bucket{{model!=\"none\"}}[5m])))", f"p{p}")
              for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))], "s"),
            ("Time to first token", "timeseries",
             [(f"histogram_quantile({q}, sum by (le) "
               f"(rate(vllm_time_to_first_token_seconds_bucket[5m])))", f"p{p}")
              for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))], "s"),
            ("Inter-token latency", "timeseries",
             [(f"histogram_quantile({q}, sum by (le) "
               f"(rate(vllm_inter_token_latency_seconds_bucket[5m])))", f"p{p}")
              for q, p in ((0.5, 50), (0.95, 95))], "s"),
            ("Time per output token", "timeseries",
             [("histogram_quantile(0.5, sum by (le) "
               "(rate(vllm_time_per_output_token_seconds_bucket[5m])))", "p50")], "s"),
            ("Output tokens per second", "timeseries",
             [("sum by (model) (rate(vllm_tokens_generated_total[5m]))", "{{model}}")], "short"),
            ("Errors per second by status", "timeseries",
             [("sum by (status) (rate(vllm_requests_total{status=~\"[45]..\"}[5m]))",
               "{{status}}")], "reqps"),
        ],
    ),
    "vllm-operations": (
        "vllm-service: operations",
        [
            ("Replicas up", "stat", [("sum(up{job=\"vllm-service\"})", "up")], "short"),
            ("Engines ready", "stat", [("sum by (model) (vllm_engine_up)", "{{model}}")],
             "short"),
            ("Running and waiting sequences", "timeseries",
             [("sum by (model) (vllm_num_requests_running)", "running {{model}}"),
              ("sum by (model) (vllm_num_requests_waiting)", "waiting {{model}}")], "short"),
            ("KV cache usage", "timeseries",
             [("max by (model) (vllm_kv_cache_usage_ratio)", "{{model}}")], "percentunit"),
            ("Queue time p95", "timeseries",
             [("histogram_quantile(0.95, sum by (le) "
               "(rate(vllm_request_queue_time_seconds_bucket[5m])))", "p95")], "s"),
            ("Refused and timed-out requests", "timeseries",
             [("sum by (model) (rate(vllm_engine_rejected_total[5m]))", "queue full {{model}}"),
              ("sum by (model) (rate(vllm_engine_queue_timeouts_total[5m]))",
               "queue timeout {{model}}")], "reqps"),
            ("Prefix-cache hit tokens per second", "timeseries",
             [("sum by (model) (rate(vllm_engine_prefix_cache_hit_tokens_total[5m]))",
               "all tiers {{model}}"),
              ("sum by (model) (rate(vllm_engine_prefix_cache_host_hit_tokens_total[5m]))",
               "from host RAM {{model}}")], "short"),
            ("Prefix cache host-RAM tier", "timeseries",
             [("sum by (model) (vllm_prefix_cache_host_bytes)", "bytes {{model}}")], "bytes"),
            ("Aborted sequences and preemptions", "timeseries",
             [("sum by (model) (rate(vllm_engine_aborted_total[5m]))", "aborted {{model}}"),
              ("sum by (model) (rate(vllm_engine_preemptions_total[5m]))",
               "preempted {{model}}")], "short"),
            ("Requests in flight", "timeseries",
             [("sum by (route) (vllm_requests_in_flight)", "{{route}}")], "short"),
            ("Circuit breakers (0 closed, 1 half-open, 2 open)", "timeseries",
             [("max by (deployment) (vllm_circuit_breaker_state)", "{{deployment}}")], "short"),
            ("Breaker openings", "timeseries",
             [("sum by (deployment) (increase(vllm_circuit_breaker_open_total[5m]))",
               "{{deployment}}")], "short"),
            ("Deployment attempts by outcome", "timeseries",
             [("sum by (deployment, outcome) (rate(vllm_upstream_attempts_total[5m]))",
               "{{deployment}} {{outcome}}")], "reqps"),
            ("Response cache lookups by outcome", "timeseries",
             [("sum by (outcome) (rate(vllm_cache_lookups_total[5m]))", "{{outcome}}")],
             "reqps"),
            ("Response cache store up", "stat", [("min(vllm_cache_up)", "up")], "short"),
            ("Response cache errors and evictions", "timeseries",
             [("sum by (operation) (rate(vllm_cache_errors_total[5m]))", "error {{operation}}"),
              ("sum(rate(vllm_cache_evictions_total[5m]))", "evicted")], "short"),
            ("Response cache size (memory backend)", "timeseries",
             [("sum(vllm_cache_entries)", "entries"), ("sum(vllm_cache_bytes)", "bytes")],
             "short"),
        ],
    ),
    "vllm-quality": (
        "vllm-service: quality",
        [
            ("Weighted quality score against the reference", "timeseries",
             [("min by (model) (vllm_quality_score{dimension=\"overall\", class=\"all\"})",
               "{{model}}"),
              ("max by (model) (vllm_quality_gate_threshold)", "gate {{model}}")], "percentunit"),
            ("Quality gate (1 = open: degraded)", "stat",
             [("max by (model) (vllm_quality_gate_open)", "{{model}}")], "short"),
            ("Score by dimension", "timeseries",
             [("avg by (model, dimension) "
               "(vllm_quality_score{class=\"all\", dimension!=\"overall\"})",
               "{{model}} {{dimension}}")], "percentunit"),
            ("Score by content class", "timeseries",
             [("avg by (model, class) "
               "(vllm_quality_score{dimension=\"overall\", class!=\"all\"})",
               "{{model}} {{class}}")], "percentunit"),
            ("Scored answers in the window", "stat",
             [("min by (model) (vllm_quality_window_samples{class=\"all\"})", "{{model}}")],
             "short"),
            ("Shadow jobs by outcome", "timeseries",
             [("sum by (outcome) (rate(vllm_quality_shadow_total[5m]))", "{{outcome}}")],
             "reqps"),
            ("Tokens spent on shadow calls per hour", "timeseries",
             [("sum by (kind) (rate(vllm_quality_shadow_tokens_total[1h])) * 3600", "{{kind}}")],
             "short"),
            ("A/B requests per arm", "timeseries",
             [("sum by (test, arm, model) (rate(vllm_ab_requests_total[5m]))",
               "{{test}} {{arm}} {{model}}")], "reqps"),
            ("A/B mean quality per arm", "timeseries",
             [("avg by (test, arm, model) (vllm_ab_arm_mean{metric=\"quality\"})",
               "{{test}} {{arm}} {{model}}")], "percentunit"),
            ("A/B mean latency per arm", "timeseries",
             [("avg by (test, arm, model) (vllm_ab_arm_mean{metric=\"latency\"})",
               "{{test}} {{arm}} {{model}}")], "s"),
            ("A/B samples per arm", "stat",
             [("sum by (test, arm, metric) (vllm_ab_arm_samples)", "{{test}} {{arm}} {{metric}}")],
             "short"),
        ],
    ),
}  # fmt: skip


def panel(i: int, title: str, kind: str, targets: list[tuple[str, str]], unit: str) -> Any:
    return {
        "id": i + 1,
        "title": title,
        "type": kind,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + j), "datasource": DS, "expr": expr, "legendFormat": legend}
            for j, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid: str, title: str, panels: list[Panel]) -> Any:
    return {
        "uid": uid,
        "title": title,
        "tags": ["vllm-service"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": [panel(i, *p) for i, p in enumerate(panels)],
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for uid, (title, panels) in DASHBOARDS.items():
        text = json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        (OUT / f"{uid}.json").write_text(text)


if __name__ == "__main__":
    main()
