"""Multi-turn chat, the workload a prefix cache is for, against llama.cpp's own server.

Eight users share a system prompt; each sends four turns of about forty words, every turn
extending its own history with the answers it got (64 tokens each, ``ignore_eos``, greedy);
at most ``c`` users are in flight. Rounds alternate between the peers (the idle ones paused
with SIGSTOP, so that they cost nothing while another is measured). Peers, on the same GGUF
file and thread count:

* ``vllm-service``: this checkout's ``vllm-service serve``, response cache off;
* ``vllm-service (baseline)``, with ``--baseline-src DIR``: another checkout's ``src`` (e.g. a
  ``git worktree`` of an earlier commit), measured in the same rounds;
* ``llama-server``, built as benchmarks/engine_vs_peers.py builds it, ``-np`` 16; with
  ``--no-repack`` where this machine's llama.cpp build has AMX kernels (ours turns the same
  layouts off there: see options.extra_buffer_types).

Reports output tokens/s and the time to first token of turn 1 and of turns 2-4 (a returning
conversation should find its history cached). Prints numbers; asserts nothing.

    python benchmarks/multi_turn.py [--rounds 3] [--concurrency 1 4 8] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_peers import ANGLES, SUBJECTS, Peer, ensure_llama_server
from serve_basics import free_port, service_command

from vllm_service.engine.llamacpp.device import usable_cpus
from vllm_service.engine.llamacpp.model import amx_built
from vllm_service.engine.llamacpp.model_files import resolve_model_path

USERS = 8
TURNS = 4
OUTPUT_TOKENS = 64
SYSTEM = (
    "You are the support assistant of a company that sells bicycles, spare parts and repair "
    "services in three cities. Answer politely and briefly, in plain English. Never invent "
    "prices, opening hours or stock levels; when a customer asks for them, tell them to check "
    "the website or call the shop. Recommend a repair appointment when a customer describes a "
    "safety problem such as worn brakes, a cracked frame or a loose headset. Do not give "
    "medical, legal or financial advice. Keep a friendly tone, use short paragraphs, and end "
    "with a question when the customer's need is unclear."
)
SAME_WORK = {"ignore_eos": True, "repetition_penalty": 1.0, "repeat_penalty": 1.0}


def turn_text(user: int, turn: int) -> str:
    """About forty words, different for every user and turn."""
    subject = SUBJECTS[(user * 3 + turn) % len(SUBJECTS)]
    angle = ANGLES[(user + turn) % len(ANGLES)]
    return (
        f"I am customer number {user} and this is my message {turn}. I would like to know "
        f"more about {subject}, in particular {angle}. Please explain it simply, as if to a "
        f"friend, and tell me what a cyclist should keep in mind about {subject} this week."
    )


async def conversation(
    client: openai.AsyncOpenAI, model: str, user: int, ttfts: dict[int, list[float]]
) -> int:
    """One user's turns; returns the output tokens it received."""
    history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    tokens = 0
    for turn in range(1, TURNS + 1):
        history.append({"role": "user", "content": turn_text(user, turn)})
        start = time.perf_counter()
        first = None
        answer = []
        stream = await client.chat.completions.create(
            model=model,
            messages=history,  # type: ignore[arg-type]
            max_tokens=OUTPUT_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=SAME_WORK,
        )
        async for chunk in stream:
            if chunk.usage is not None:
                tokens += chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                answer.append(chunk.choices[0].delta.content)
        if first is not None:
            ttfts.setdefault(turn, []).append(first - start)
        history.append({"role": "assistant", "content": "".join(answer)})
    return tokens


async def one_round(peer: Peer, concurrency: int) -> tuple[float, dict[int, list[float]]]:
    # Retries: llama-server closes idle keep-alive connections, and a request sent on one as
    # it closes fails without reaching it ("server disconnected without a response").
    client = openai.AsyncOpenAI(
        base_url=peer.url + "/v1", api_key="unused", max_retries=2, timeout=600
    )
    users = list(range(USERS))
    ttfts: dict[int, list[float]] = {}
    done: list[int] = []

    async def worker() -> None:
        while users:
            done.append(await conversation(client, peer.model, users.pop(0), ttfts))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return sum(done) / elapsed, ttfts


def peers(args: argparse.Namespace, workdir: Path) -> list[Peer]:
    gguf = resolve_model_path("smollm2")
    config = workdir / "engine.yaml"
    config.write_text("cache: {enabled: false}\nobservability: {log_requests: false}\n")
    port = free_port()
    ours = Peer(
        "vllm-service",
        [*service_command(), "serve", "--port", str(port), "--config", str(config)],
        "smollm2-135m-instruct",
        port,
        "/ready",
    )
    port = free_port()
    llama = [str(ensure_llama_server()), "-m", str(gguf), "-t", str(usable_cpus())]
    llama += ["-np", "16", "-c", str(2048 * 16), "--port", str(port), "--host", "127.0.0.1"]
    if amx_built():
        llama.append("--no-repack")
    found = [ours, Peer("llama-server", llama, "smollm2", port)]
    if args.baseline_src is not None:
        port = free_port()
        found.append(
            Peer(
                "vllm-service (baseline)",
                [*service_command(), "serve", "--port", str(port), "--config", str(config)],
                "smollm2-135m-instruct",
                port,
                "/ready",
                env={"PYTHONPATH": str(args.baseline_src.resolve())},
            )
        )
    return found


def report(results: dict[tuple[str, int], list[tuple[float, dict[int, list[float]]]]]) -> None:
    print(f"\n{'peer':<26} {'c':>2} {'tok/s':>8} {'TTFT t1':>9} {'TTFT t2-4':>10} {'ratio':>6}")
    for (name, c), rounds in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rate = statistics.median(r for r, _ in rounds)
        first = [x for _, t in rounds for x in t.get(1, [])]
        later = [x for _, t in rounds for turn in (2, 3, 4) for x in t.get(turn, [])]
        t1, t24 = statistics.median(first) * 1e3, statistics.median(later) * 1e3
        print(f"{name:<26} {c:>2} {rate:>8.1f} {t1:>7.0f}ms {t24:>8.0f}ms {t24 / t1:>6.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--baseline-src", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="multi-turn-"))
    found = peers(args, workdir)
    results: dict[tuple[str, int], list[tuple[float, dict[int, list[float]]]]] = {}
    try:
        for peer in found:
            peer.start(workdir)
            peer.wait_ready()
            assert peer.process is not None
            peer.process.send_signal(signal.SIGSTOP)
        for r in range(args.rounds):
            for c in args.concurrency:
                for peer in found if r % 2 == 0 else found[::-1]:
                    assert peer.process is not None
                    peer.process.send_signal(signal.SIGCONT)
                    print(f"  {peer.name}, c={c}", flush=True)
                    results.setdefault((peer.name, c), []).append(await one_round(peer, c))
                    peer.process.send_signal(signal.SIGSTOP)
            print(f"round {r + 1} done", flush=True)
    finally:
        for peer in found:
            if peer.process is not None:
                peer.process.send_signal(signal.SIGCONT)
            peer.stop()
    print(f"{USERS} users x {TURNS} turns, {OUTPUT_TOKENS}-token answers, {args.rounds} rounds")
    report(results)


if __name__ == "__main__":
    asyncio.run(main())
