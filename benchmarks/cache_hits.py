"""Cache hits: vllm-service's response cache against LiteLLM proxy's in-memory cache, one run.

Starts a backend (vllm-service on the embedded model, its cache off), then in front of it both
a vllm-service whose model is an upstream engine (memory cache on) and a LiteLLM proxy
(``cache: true``, ``type: local``). Both are warmed with the benchmark's request, and the
backend's request count proves every measured request was a hit (it must not move). Then
``wrk`` drives each front in turn, interleaved over several rounds, at each concurrency, and the
medians over the rounds of p50 / p99 latency and requests/s are printed with their ratios.

Needs ``wrk`` (apt-get install wrk) and LiteLLM in its own virtualenv (its pins clash with
ours)::

    python -m venv ~/.cache/vllm-service-bench/litellm-venv
    ~/.cache/vllm-service-bench/litellm-venv/bin/pip install 'litellm[proxy]'
    python benchmarks/cache_hits.py [--rounds 3] [--duration 10] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import free_port
from upstream_overhead import front_config, start, wait_until_up

MODEL = "smollm2-135m-instruct"
LITELLM = Path.home() / ".cache" / "vllm-service-bench" / "litellm-venv" / "bin" / "litellm"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Name three rivers of Europe."}],
    "max_tokens": 48,
    "temperature": 0,
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer unused"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\\"requests\\": %%d, \\"seconds\\": %%f, \\"p50_us\\": %%d, \\"p99_us\\": %%d, "
    .. "\\"socket_errors\\": %%d, \\"non_2xx\\": %%d}\\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def start_litellm(backend_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{backend_url}/v1",
                    "api_key": "unused",
                },
            }
        ],
        "litellm_settings": {"cache": True, "cache_params": {"type": "local"}},
    }
    path = workdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        # No auth on either side: vllm-service has none yet, so LiteLLM runs without its own.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    log = (workdir / "litellm.log").open("wb")
    proc = subprocess.Popen(
        [str(LITELLM), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    if wait_until_up(proc, f"{url}/health/liveliness", seconds=120):
        return proc, url
    raise RuntimeError(f"litellm did not start; see {workdir / 'litellm.log'}")


def backend_requests(backend_url: str) -> float:
    text = httpx2.get(f"{backend_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm_requests_total{") and "/v1/chat/completions" in line
    )


def wrk(url: str, concurrency: int, duration: float, script: Path) -> dict[str, float]:
    threads = min(2, concurrency)
    options = [f"-t{threads}", f"-c{concurrency}", f"-d{round(duration)}s", "-s", str(script)]
    out = subprocess.run(
        ["wrk", *options, f"{url}/v1/chat/completions"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, float] = json.loads(line.removeprefix("RESULT "))
    if result["socket_errors"] or result["non_2xx"]:
        raise RuntimeError(f"errors during the run against {url}: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if shutil.which("wrk") is None or not LITELLM.exists():
        sys.exit("needs wrk and LiteLLM: see this file's docstring")
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    script = workdir / "request.lua"
    script.write_text(WRK_SCRIPT % json.dumps(BODY))
    backend, backend_url = start(
        {"models": [{"name": MODEL}], "cache": {"enabled": False}}, workdir, "backend"
    )
    procs = [backend]
    try:
        ours, ours_url = start(
            front_config(backend_url, cache=True, log_requests=False), workdir, "vllm-service"
        )
        procs.append(ours)
        litellm, litellm_url = start_litellm(backend_url, workdir)
        procs.append(litellm)
        fronts = {"vllm-service": ours_url, "litellm": litellm_url}
        with httpx2.Client(timeout=120, headers={"Authorization": "Bearer unused"}) as http:
            for name, url in fronts.items():
                for _ in range(3):  # the first is the miss that fills the cache
                    r = http.post(f"{url}/v1/chat/completions", json=BODY)
                    r.raise_for_status()
                print(f"{name}: {r.json()['choices'][0]['message']['content']!r}")
        before = backend_requests(backend_url)
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_no in range(args.rounds):
            for c in args.concurrency:
                for name, url in fronts.items():
                    result = wrk(url, c, args.duration, script)
                    results.setdefault((name, c), []).append(result)
                    rps = result["requests"] / result["seconds"]
                    p50, p99 = result["p50_us"] / 1e3, result["p99_us"] / 1e3
                    print(
                        f"round {round_no + 1} c={c:<3} {name:<13} {rps:8.0f} req/s  "
                        f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms",
                        flush=True,
                    )
        after = backend_requests(backend_url)
        print(f"backend requests during the measured runs: {after - before:.0f} (0 = all hits)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()

    def med(name: str, c: int, what: str) -> float:
        runs = results[name, c]
        if what == "rps":
            return statistics.median(r["requests"] / r["seconds"] for r in runs)
        return statistics.median(r[what] for r in runs) / 1e3

    print(f"\nmedians of {args.rounds} rounds of {args.duration:.0f} s (wrk, keep-alive):")
    print("| concurrency | server | p50 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|")
    for c in args.concurrency:
        for name in fronts:
            print(
                f"| {c} | {name} | {med(name, c, 'p50_us'):.2f} | {med(name, c, 'p99_us'):.2f} "
                f"| {med(name, c, 'rps'):.0f} |"
            )
        ratio = med("vllm-service", c, "rps") / med("litellm", c, "rps")
        p50 = med("vllm-service", c, "p50_us") / med("litellm", c, "p50_us")
        print(f"| {c} | ratio vllm-service / litellm | {p50:.2f}x | | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
