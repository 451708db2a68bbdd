"""What authorization and per-key limits add per request, side by side in one run.

Three services on the bundled model, answering from the response cache (so what auth adds is
not hidden behind generation): auth off; auth on with a key limited in memory; auth on with the
same key limited in Redis (a redis-server of its own on loopback). Rounds alternate; prints the
median of each round's p50 and the rounds' spread. Asserts nothing.

    python benchmarks/auth_overhead.py [--rounds 7] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import cached_rounds, free_port, service_command, start_configured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="auth-overhead-"))
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    base = {"cache": {"enabled": True}, "observability": {"log_requests": False}}
    on = {"enabled": True, "limits_backend": "memory"}
    redis_auth = {**on, "limits_backend": "redis", "redis_url": f"redis://127.0.0.1:{redis_port}/0"}
    env = {**os.environ, "XDG_DATA_HOME": str(work / "data")}
    made = subprocess.run(
        [
            *service_command(),
            "keys",
            "create",
            "--name",
            "bench",
            "--rpm",
            "1000000",
            "--tpm",
            "1000000000",
            "--max-parallel",
            "1000",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    key = made.stdout.split()[0]
    started = {
        "auth off": start_configured("off", base, work, env),
        "auth, memory limits": start_configured("memory", {**base, "auth": on}, work, env),
        "auth, redis limits": start_configured("redis", {**base, "auth": redis_auth}, work, env),
    }
    try:
        urls = {name: url for name, (_, url) in started.items()}
        headers = {"authorization": f"Bearer {key}"}
        rounds = cached_rounds(urls, args.rounds, args.requests, headers)
    finally:
        for proc, _ in started.values():
            proc.terminate()
            proc.wait()
        redis.terminate()
    print(f"{args.rounds} rounds x {args.requests} cached chat requests; p50 per round, ms")
    off = statistics.median(rounds["auth off"])
    for name, values in rounds.items():
        mid = statistics.median(values)
        spread = f"{min(values):.3f}..{max(values):.3f}"
        print(f"  {name:20s} median {mid:.3f} (rounds {spread})  added {mid - off:+.3f} ms")


if __name__ == "__main__":
    main()
