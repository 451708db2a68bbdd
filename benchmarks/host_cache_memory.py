"""Does the prefix cache's host-RAM tier stay within its budget? RSS under a long multi-turn run.

Two services on the bundled model, run one after the other with the same traffic: 4 slots,
one with ``prefix_cache_host_bytes`` = ``--budget`` (MiB), one with the tier off (the
reference: what the process grows by without it). Warm-up: 4 conversations fill the slots.
Then ``--conversations`` more (4 turns each, 64-token answers, the multi-turn workload's text)
run 4 at a time, and the process's RSS is sampled every half second. Reported: the peak RSS
growth over the warmed-up process, with and without the tier, the difference against the
budget, and the tier's bytes, entries, evictions and hit tokens from /health. Prints numbers;
asserts nothing.

    python benchmarks/host_cache_memory.py [--budget 64] [--conversations 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_peers import Peer, one_request
from serve_basics import free_port, service_command
from workloads import GREEDY, OURS_MODEL, SYSTEM, turn_text


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def conversations(peer: Peer, users: range, concurrency: int) -> None:
    client = openai.AsyncOpenAI(base_url=peer.url + "/v1", api_key="unused", timeout=600)
    queue = list(users)

    async def worker() -> None:
        while queue:
            user = queue.pop(0)
            history = [{"role": "system", "content": SYSTEM}]
            for turn in range(1, 5):
                history.append({"role": "user", "content": turn_text(user, turn)})
                reply = await one_request(client, peer.model, history, user, GREEDY)
                history.append({"role": "assistant", "content": reply.text})

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()


async def measure(name: str, budget_mib: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="host-cache-"))
    options = {"max_num_seqs": 4, "prefix_cache_host_bytes": budget_mib * 1024 * 1024}
    config = workdir / "config.yaml"
    body = {"cache": {"enabled": False}, "observability": {"log_requests": False}}
    config.write_text(json.dumps({**body, "models": [{"name": OURS_MODEL, "options": options}]}))
    port = free_port()
    command = [*service_command(), "serve", "--port", str(port), "--config", str(config)]
    peer = Peer(name, command, OURS_MODEL, port, "/ready")
    peer.start(workdir)
    try:
        peer.wait_ready()
        assert peer.process is not None
        pid = peer.process.pid
        await conversations(peer, range(4), 4)
        base = rss_mib(pid)
        peak = base
        run = asyncio.create_task(conversations(peer, range(100, 100 + args.conversations), 4))
        while not run.done():
            peak = max(peak, rss_mib(pid))
            await asyncio.sleep(0.5)
        await run
        peak = max(peak, rss_mib(pid))
        stats = httpx2.get(peer.url + "/health", timeout=10).json()["engines"][OURS_MODEL]
        return {"base": base, "peak": peak, "stats": stats}
    finally:
        peer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=64, help="MiB")
    parser.add_argument("--conversations", type=int, default=32)
    args = parser.parse_args()
    with_tier = await measure("with tier", args.budget, args)
    without = await measure("without tier", 0, args)
    grown = with_tier["peak"] - with_tier["base"]
    grown_ref = without["peak"] - without["base"]
    stats = with_tier["stats"]
    print(f"{args.conversations} conversations x 4 turns, 4 slots, budget {args.budget} MiB")
    print(f"RSS growth with the tier: {grown:.1f} MiB (from {with_tier['base']:.0f} MiB)")
    print(f"RSS growth without it:    {grown_ref:.1f} MiB (from {without['base']:.0f} MiB)")
    print(
        f"difference: {grown - grown_ref:.1f} MiB = {(grown - grown_ref) / args.budget:.2f} x "
        f"the budget; tier holds {stats['host_cache_bytes'] / 2**20:.1f} MiB in "
        f"{stats['host_cache_entries']} entries, {stats['host_cache_evictions']} evicted, "
        f"{stats['prefix_cache_host_hit_tokens']} hit tokens from it of "
        f"{stats['prefix_cache_hit_tokens']} in all"
    )
    print(f"idle KV check: used {stats['kv_cells_used']} == cached {stats['kv_cells_cached']}")


if __name__ == "__main__":
    asyncio.run(main())
