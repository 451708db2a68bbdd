"""The latency vllm-service adds in front of an upstream, measured side by side in one run.

Starts a backend (vllm-service on the embedded model) and a front vllm-service whose model is
an upstream engine pointing at it; then alternates identical requests direct and through the
front: non-streaming (end-to-end) and streaming (time to first token). Prints p50/p99 of each
and of the added time. Asserts nothing.

With ``--upstream model`` (the default) the backend generates every answer, so on a small
machine the model's threads compete with the front for the cores. With ``--upstream cache`` the
backend answers from its response cache, isolating the time the front itself adds.

    python benchmarks/upstream_overhead.py [--requests 100] [--upstream model|cache]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import free_port

MODEL = "smollm2-135m-instruct"


def start(
    config: dict[str, object], workdir: Path, name: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A `vllm-service serve` on a free port with this config, once /ready answers 200."""
    port = free_port()
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        ["vllm-service", "serve", "--port", str(port), "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    if not wait_until_up(proc, f"{url}/ready", seconds=60):
        raise RuntimeError(f"{name} did not start")
    return proc, url


def wait_until_up(proc: subprocess.Popen[bytes], url: str, *, seconds: float) -> bool:
    """Poll ``url`` until it answers 200; False if the process exits or time runs out."""
    for _ in range(int(seconds * 10)):
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return True
        except httpx2.TransportError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def front_config(backend_url: str, *, cache: bool, log_requests: bool) -> dict[str, object]:
    """A vllm-service whose model is an upstream engine in front of ``backend_url``."""
    return {
        "models": [
            {
                "name": MODEL,
                "engine": "upstream",
                "options": {"base_url": f"{backend_url}/v1", "model": MODEL},
            }
        ],
        "cache": {"enabled": cache},
        "observability": {"log_requests": log_requests},
    }


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--upstream", choices=["model", "cache"], default="model")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="upstream-bench-"))
    backend, direct_url = start(
        {
            "models": [{"name": MODEL, "options": {"max_num_seqs": 4}}],
            "cache": {"enabled": args.upstream == "cache"},
            "observability": {"log_requests": False},
        },
        workdir,
        "backend",
    )
    # Every request must reach the upstream: the proxying is measured, not the cache.
    front, front_url = start(
        front_config(direct_url, cache=False, log_requests=True), workdir, "front"
    )
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say yes."}],
        "max_tokens": 1,
        "temperature": 0,
    }
    samples: dict[str, list[float]] = {
        k: [] for k in ("direct", "front", "direct_ttft", "front_ttft")
    }
    try:
        with httpx2.Client(timeout=60) as http:
            for url in (direct_url, front_url):  # warm-up: connections, prefix cache
                for _ in range(5):
                    http.post(f"{url}/v1/chat/completions", json=body)
            for _ in range(args.requests):
                for name, url in (("direct", direct_url), ("front", front_url)):
                    t = time.perf_counter()
                    r = http.post(f"{url}/v1/chat/completions", json=body)
                    samples[name].append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    with http.stream(
                        "POST",
                        f"{url}/v1/chat/completions",
                        json={**body, "max_tokens": 8, "stream": True},
                    ) as s:
                        lines = s.iter_lines()
                        for line in lines:
                            if '"content":"' in line.replace(
                                " ", ""
                            ) and '"content":""' not in line.replace(" ", ""):
                                samples[f"{name}_ttft"].append(time.perf_counter() - t)
                                break
                        for _ in lines:
                            pass
    finally:
        front.terminate()
        backend.terminate()
        front.wait()
        backend.wait()
    for kind, a, b in (
        ("non-streaming end-to-end", "direct", "front"),
        ("streaming TTFT", "direct_ttft", "front_ttft"),
    ):
        d50, f50 = pct(samples[a], 50) * 1e3, pct(samples[b], 50) * 1e3
        d99, f99 = pct(samples[a], 99) * 1e3, pct(samples[b], 99) * 1e3
        print(
            f"{kind}: direct p50 {d50:.2f} ms p99 {d99:.2f} ms | through the front "
            f"p50 {f50:.2f} ms p99 {f99:.2f} ms | added p50 {f50 - d50:.2f} ms, "
            f"p99 {f99 - d99:.2f} ms (n={len(samples[a])})"
        )


if __name__ == "__main__":
    main()
