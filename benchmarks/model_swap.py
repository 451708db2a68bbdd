"""Model swap time: the bundled model under two names, requests alternating between them,
with one model loaded at a time (each request unloads one and loads the other) beside both
loaded (no swap), in alternating rounds. Prints the loader's own unload + load seconds and
the client's latency; asserts nothing.

    python benchmarks/model_swap.py [--rounds 5] [--requests 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import start_configured

NAMES = ("swap-a", "swap-b")


def config(max_loaded: int) -> dict[str, Any]:
    return {
        "cache": {"enabled": False},
        "ledger": {"enabled": False},
        "observability": {"log_requests": False},
        "loading": {"max_loaded_models": max_loaded},
        "models": [{"name": name, "options": {"model": "smollm2"}} for name in NAMES],
    }


def one_round(url: str, requests: int) -> list[float]:
    latencies = []
    with httpx2.Client(timeout=120) as http:
        for i in range(requests):
            body = {
                "model": NAMES[i % 2],
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            }
            started = time.perf_counter()
            assert http.post(f"{url}/v1/chat/completions", json=body).status_code == 200
            latencies.append(time.perf_counter() - started)
    return latencies


def residency(url: str) -> dict[str, dict[str, Any]]:
    engines = httpx2.get(f"{url}/health", timeout=10).json()["engines"]
    return {name: engines[name]["residency"] for name in NAMES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="swap-"))
    swapping, swap_url = start_configured("one-loaded", config(1), work)
    both, both_url = start_configured("both-loaded", config(2), work)
    swap_lat: list[float] = []
    both_lat: list[float] = []
    loads: list[float] = []
    unloads: list[float] = []
    try:
        for _ in range(args.rounds):
            for url, into in ((swap_url, swap_lat), (both_url, both_lat)):
                into.extend(one_round(url, args.requests))
                if url == swap_url:
                    # one sample of each per round: the last load and unload of each model
                    for stats in residency(url).values():
                        loads.append(stats["load_seconds"])
                        unloads.append(stats["unload_seconds"])
        swaps = sum(r["unloads"].get("lru", 0) for r in residency(swap_url).values())
    finally:
        for proc in (swapping, both):
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.rounds} rounds x {args.requests} requests alternating between two models")
    print(f"  swaps (LRU unloads) with max_loaded_models 1: {swaps}")
    print(f"  unload: median {statistics.median(unloads) * 1000:.1f} ms")
    print(f"  load:   median {statistics.median(loads) * 1000:.1f} ms")
    med_swap, med_both = statistics.median(swap_lat), statistics.median(both_lat)
    print(f"  request latency, swapping each request: median {med_swap * 1000:.1f} ms")
    print(f"  request latency, both loaded:           median {med_both * 1000:.1f} ms")
    print(f"  difference (what a swap costs a request): {(med_swap - med_both) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
