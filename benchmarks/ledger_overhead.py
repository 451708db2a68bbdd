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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import cached_rounds, start_configured


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

    started = {
        "ledger on": start_configured("on", config(True, "on"), work),
        "ledger off": start_configured("off", config(False, "off"), work),
    }
    try:
        urls = {name: url for name, (_, url) in started.items()}
        rounds = cached_rounds(urls, args.rounds, args.requests)
    finally:
        for proc, _ in started.values():
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
