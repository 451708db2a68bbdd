"""Start `vllm-service serve` and print: time to ready, output tokens/s (concurrency 1 and 16),
and the server's peak RSS. Prints numbers; asserts nothing.

    python benchmarks/serve_basics.py [--runs 5] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import uvicorn

MODEL = "smollm2-135m-instruct"
PROMPT = (
    "Explain in a few sentences why the sky looks blue during the day and red at sunset, "
    "mentioning how sunlight is scattered by the molecules of the atmosphere, which colours "
    "scatter most, and why the path of light through the air is longer in the evening."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[None]:
    """Run an ASGI app with uvicorn on a thread of this process."""
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def service_command() -> list[str]:
    """`vllm-service` as installed beside this interpreter (an unactivated virtualenv works),
    else the module."""
    exe = Path(sys.executable).parent / "vllm-service"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "vllm_service"]


def start_configured(
    name: str, config: dict[str, Any], work: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`vllm-service serve` with ``config`` (written to ``work``), waited until /ready; the
    process and its base URL."""
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / f"{name}.log").open("wb")
    argv = [*service_command(), "serve", "--port", str(port), "--config", str(path)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready")


#: A cheap chat request: answered from the response cache once it has been seen.
CACHED_BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say yes."}],
    "max_tokens": 4,
    "temperature": 0,
}


def cached_rounds(
    targets: dict[str, str], rounds: int, requests: int, headers: dict[str, str] | None = None
) -> dict[str, list[float]]:
    """Rounds of ``requests`` cached chat requests to each target in turn (the machine's drift
    hits them alike); each round's p50 in ms, per target."""
    p50s: dict[str, list[float]] = {name: [] for name in targets}
    with httpx2.Client(timeout=60, headers=headers) as http:
        for url in targets.values():
            for _ in range(20):  # warm-up; fills the cache
                r = http.post(f"{url}/v1/chat/completions", json=CACHED_BODY)
                assert r.status_code == 200, r.text
        for _ in range(rounds):
            for name, url in targets.items():
                times = []
                for _ in range(requests):
                    t = time.perf_counter()
                    r = http.post(f"{url}/v1/chat/completions", json=CACHED_BODY)
                    times.append(time.perf_counter() - t)
                    assert r.status_code == 200
                    assert r.headers["x-cache"] == "hit"
                p50s[name].append(statistics.median(times) * 1e3)
    return p50s


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(client: openai.AsyncOpenAI, max_tokens: int) -> tuple[int, float, float]:
    start = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens,
        temperature=0.8,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return tokens, (first or end) - start, end - start


async def measure(port: int, runs: int, max_tokens: int) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    await one(client, 8)  # warm-up
    for concurrency in (1, 16):
        rates, ttfts = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(client, max_tokens) for _ in range(concurrency)))
            wall = time.perf_counter() - t0
            rates.append(sum(r[0] for r in results) / wall)
            ttfts.extend(r[1] for r in results)
        print(
            f"concurrency {concurrency:2d}: output tok/s median {statistics.median(rates):6.1f} "
            f"(min {min(rates):.1f}, max {max(rates):.1f}, {runs} runs); "
            f"TTFT p50 {statistics.median(ttfts) * 1000:.0f} ms"
        )
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*service_command(), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.02)
        print(f"serve -> ready: {time.perf_counter() - t0:.2f} s")
        asyncio.run(measure(port, args.runs, args.max_tokens))
        print(f"server peak RSS: {peak_rss_mib(proc.pid):.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
