"""The latency vllm-service adds in front of an upstream, measured side by side in one run.

Starts a backend (vllm-service on the embedded model) and, in front of it, vllm-service with an
upstream engine pointing at it (cache off: every request is proxied). Then, in rounds, sends
identical requests in turn to the backend directly and through each front: non-streaming
(end-to-end time) and streaming (time to the first content chunk). Prints, per target, the
median over rounds of each round's p50, the p99 over all requests, the added time (target minus
direct), and the front's CPU time per request. Asserts nothing.

* ``--upstream model`` (default): the backend generates every answer; on a small machine its
  threads compete with the front for the cores. ``--upstream cache``: the backend answers from
  its response cache, which isolates what the front itself adds.
* ``--reference``: also a bare pass-through proxy (benchmarks/passthrough_proxy.py) with the
  same HTTP client: the least a Python proxy adds on this machine.
* ``--baseline-src DIR``: also a front running another checkout's ``src`` (e.g. a
  ``git worktree`` of an earlier commit), to compare versions in one run.

    python benchmarks/upstream_overhead.py [--rounds 5] [--requests 60] [--upstream model|cache]
        [--reference] [--baseline-src DIR]
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
from serve_basics import cpu_seconds, free_port, service_command

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
        [*service_command(), "serve", "--port", str(port), "--config", str(path)],
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


def start_reference(backend_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (workdir / "reference.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "passthrough_proxy.py"),
            backend_url,
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    if not wait_until_up(proc, f"{url}/ready", seconds=30):
        raise RuntimeError("the reference proxy did not start")
    return proc, url


def first_content(line: str) -> bool:
    """Whether an SSE line carries answer text (not the empty role chunk)."""
    line = line.replace(" ", "")
    return '"content":"' in line and '"content":""' not in line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=60, help="per round and target")
    parser.add_argument("--upstream", choices=["model", "cache"], default="model")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--baseline-src", type=Path)
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
    procs = [backend]
    targets: dict[str, str] = {"direct": direct_url}
    fronts: dict[str, subprocess.Popen[bytes]] = {}
    try:
        # Every request must reach the upstream: the proxying is measured, not the cache.
        config = front_config(direct_url, cache=False, log_requests=True)
        fronts["vllm-service"], targets["vllm-service"] = start(config, workdir, "front")
        if args.baseline_src is not None:
            env = {"PYTHONPATH": str(args.baseline_src.resolve())}
            fronts["baseline"], targets["baseline"] = start(config, workdir, "baseline", env)
        if args.reference:
            fronts["reference"], targets["reference"] = start_reference(direct_url, workdir)
        procs += fronts.values()
        run(targets, fronts, args.rounds, args.requests)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


def run(
    targets: dict[str, str], fronts: dict[str, subprocess.Popen[bytes]], rounds: int, n: int
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say yes."}],
        "max_tokens": 1,
        "temperature": 0,
    }
    stream_body = {**body, "max_tokens": 8, "stream": True}
    kinds = ("non-streaming end-to-end", "streaming first token")
    samples: dict[tuple[str, str], list[float]] = {(k, t): [] for k in kinds for t in targets}
    round_p50: dict[tuple[str, str], list[float]] = {(k, t): [] for k in kinds for t in targets}
    cpu = dict.fromkeys(fronts, 0.0)
    with httpx2.Client(timeout=60) as http:
        for url in targets.values():  # warm-up: connections, prefix cache
            for _ in range(10):
                assert http.post(f"{url}/v1/chat/completions", json=body).status_code == 200
        for _ in range(rounds):
            this_round: dict[tuple[str, str], list[float]] = {key: [] for key in samples}
            before = {name: cpu_seconds(p.pid) for name, p in fronts.items()}
            for _ in range(n):
                for name, url in targets.items():
                    t = time.perf_counter()
                    r = http.post(f"{url}/v1/chat/completions", json=body)
                    this_round[kinds[0], name].append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    with http.stream("POST", f"{url}/v1/chat/completions", json=stream_body) as s:
                        lines = s.iter_lines()
                        for line in lines:
                            if first_content(line):
                                this_round[kinds[1], name].append(time.perf_counter() - t)
                                break
                        for _ in lines:
                            pass
            for name, p in fronts.items():
                cpu[name] += cpu_seconds(p.pid) - before[name]
            for key, values in this_round.items():
                samples[key].extend(values)
                round_p50[key].append(statistics.median(values))
    print(f"{rounds} rounds x {n} requests per target and kind; ms; p50 = median of round p50s")
    for kind in kinds:
        d50 = statistics.median(round_p50[kind, "direct"])
        d99 = pct(samples[kind, "direct"], 99)
        print(f"{kind}: direct p50 {d50 * 1e3:.2f} p99 {d99 * 1e3:.2f}")
        for name in fronts:
            f50 = statistics.median(round_p50[kind, name])
            f99 = pct(samples[kind, name], 99)
            added = [
                f - d for f, d in zip(round_p50[kind, name], round_p50[kind, "direct"], strict=True)
            ]
            print(
                f"  {name:13s} p50 {f50 * 1e3:.2f} p99 {f99 * 1e3:.2f} | added p50 "
                f"{(f50 - d50) * 1e3:.2f} (rounds {min(added) * 1e3:.2f}..{max(added) * 1e3:.2f})"
                f", p99 {(f99 - d99) * 1e3:.2f}"
            )
    for name, seconds in cpu.items():
        print(f"CPU per request of {name}: {seconds / (2 * rounds * n) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
