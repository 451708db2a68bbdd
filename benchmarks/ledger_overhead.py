"""End-to-end latency with the cost ledger on and off, side by side in one run.

Two services on the bundled model, identical but for ``ledger.enabled``; requests answered from
the response cache (a few milliseconds each), so that what the ledger adds per request is not
hidden behind generation. Rounds alternate between the two. Prints the median of each round's
p50 and the rounds' spread; asserts nothing.

    python benchmarks/ledger_overhead.py [--rounds 7] [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import start_configured

MODEL = "smollm2-135m-instruct"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say yes."}],
    "max_tokens": 4,
    "temperature": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ledger-overhead-"))

    def config(ledger: bool, name: str) -> dict[str, object]:
        return {
            "cache": {"enabled": True},
            "ledger": {"enabled": ledger, "data_dir": str(work / name)},
            "observability": {"log_requests": False},
        }

    targets = {
        "ledger on": start_configured("on", config(True, "on"), work),
        "ledger off": start_configured("off", config(False, "off"), work),
    }
    rounds: dict[str, list[float]] = {name: [] for name in targets}
    try:
        with httpx2.Client(timeout=60) as http:
            for _, url in targets.values():
                for _ in range(20):  # warm-up; fills the cache
                    assert http.post(f"{url}/v1/chat/completions", json=BODY).status_code == 200
            for _ in range(args.rounds):
                for name, (_, url) in targets.items():
                    times = []
                    for _ in range(args.requests):
                        t = time.perf_counter()
                        r = http.post(f"{url}/v1/chat/completions", json=BODY)
                        times.append(time.perf_counter() - t)
                        assert r.status_code == 200
                        assert r.headers["x-cache"] == "hit"
                    rounds[name].append(statistics.median(times) * 1e3)
    finally:
        for proc, _ in targets.values():
            proc.terminate()
            proc.wait()
    print(f"{args.rounds} rounds x {args.requests} cached chat requests; p50 per round, ms")
    for name, values in rounds.items():
        spread = f"{min(values):.3f}..{max(values):.3f}"
        print(f"  {name:10s} median {statistics.median(values):.3f}  (rounds {spread})")
    on, off = (statistics.median(rounds[n]) for n in ("ledger on", "ledger off"))
    print(f"  difference {on - off:+.3f} ms ({on / off:.3f}x)")


if __name__ == "__main__":
    main()
