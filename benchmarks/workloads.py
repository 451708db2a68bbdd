"""Three workloads, against llama.cpp's own server, at several concurrencies, in one run.

``python benchmarks/engine_vs_peers.py --workloads`` runs this (the options are below).

* ``distinct``: streaming chat requests with distinct ~60-word prompts (no peer gets a prompt
  cache hit beyond the chat template); max(6, 2c) requests per round;
* ``repeated``: the same, but a third of the prompts are ones sent earlier in the run (a
  retried question, a popular prompt): the prefix cache's second use;
* ``multi-turn``: max(8, c) users share a ~150-token system prompt; each sends 4 turns of ~40
  words that extend its own history with the answers it got; at most c users in flight.

64-token answers (``ignore_eos``), the sampling of engine_vs_peers' ``--sampling`` (default
``top_p``: temperature 0.8, top_p 0.95; llama-server adds its default top_k 40; multi-turn is
greedy). The peers are the same GGUF on the same threads: this checkout's ``vllm-service
serve`` (response cache off), llama-server built as engine_vs_peers builds it (``-np 16``,
``--no-repack`` where the build has AMX kernels, as ours turns those layouts off there), and
optionally another checkout (``--baseline-src``) or this one with other options
(``--variant NAME='{yaml options}'``). Rounds alternate the peers' order; the idle peers are
paused (SIGSTOP) so that they cost nothing while another is measured.

Reports, per workload, concurrency and peer: output tokens/s (median of rounds), TTFT p50, ITL
p99, and for multi-turn the TTFT p50 of turn 1 and of turns 2-4; then each peer's peak RSS and
our engine's prefix-cache counters. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
from engine_vs_peers import (
    ANGLES,
    SAMPLING,
    SUBJECTS,
    Peer,
    Sample,
    ensure_llama_server,
    one_request,
    prompt,
)
from prometheus_client.parser import text_string_to_metric_families
from serve_basics import free_port, peak_rss_mib, service_command

from vllm_service.engine.llamacpp.device import usable_cpus
from vllm_service.engine.llamacpp.model import amx_built
from vllm_service.engine.llamacpp.model_files import resolve_model_path

WORKLOADS = ("distinct", "repeated", "multi-turn")
OURS_MODEL = "smollm2-135m-instruct"
SYSTEM = (
    "You are the support assistant of a company that sells bicycles, spare parts and repair "
    "services in three cities. Answer politely and briefly, in plain English. Never invent "
    "prices, opening hours or stock levels; when a customer asks for them, tell them to check "
    "the website or call the shop. Recommend a repair appointment when a customer describes a "
    "safety problem such as worn brakes, a cracked frame or a loose headset. Do not give "
    "medical, legal or financial advice. Keep a friendly tone, use short paragraphs, and end "
    "with a question when the customer's need is unclear."
)
GREEDY = {"temperature": 0.0, "extra_body": SAMPLING["greedy"]["extra_body"]}


@dataclass
class Outcome:
    """One round of one workload on one peer."""

    rate: float
    replies: list[tuple[int, Sample]]  # (turn, reply); turn 1 outside multi-turn

    @property
    def failed(self) -> int:
        return sum(not r.tokens for _, r in self.replies)


@dataclass
class Run:
    """What a peer got, by (workload, concurrency)."""

    outcomes: dict[tuple[str, int], list[Outcome]] = field(default_factory=dict)


def client_for(peer: Peer) -> openai.AsyncOpenAI:
    # Retries: llama-server closes idle keep-alive connections, and a request sent on one as
    # it closes fails without reaching it ("server disconnected without a response").
    return openai.AsyncOpenAI(
        base_url=peer.url + "/v1", api_key="unused", max_retries=2, timeout=600
    )


async def closed_loop(
    peer: Peer, concurrency: int, requests: list[list[dict[str, str]]], sampling: dict[str, Any]
) -> Outcome:
    client = client_for(peer)
    queue = list(enumerate(requests))
    replies: list[tuple[int, Sample]] = []

    async def worker() -> None:
        while queue:
            i, messages = queue.pop(0)
            replies.append((1, await one_request(client, peer.model, messages, i, sampling)))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return Outcome(sum(r.tokens for _, r in replies) / elapsed, replies)


def turn_text(user: int, turn: int) -> str:
    """About forty words, different for every user and turn."""
    subject = SUBJECTS[(user * 3 + turn) % len(SUBJECTS)]
    angle = ANGLES[(user + turn) % len(ANGLES)]
    return (
        f"I am customer number {user} and this is my message {turn}. I would like to know "
        f"more about {subject}, in particular {angle}. Please explain it simply, as if to a "
        f"friend, and tell me what a cyclist should keep in mind about {subject} this week."
    )


async def multi_turn(peer: Peer, concurrency: int, first_user: int) -> Outcome:
    client = client_for(peer)
    users = list(range(first_user, first_user + max(8, concurrency)))
    replies: list[tuple[int, Sample]] = []

    async def conversation(user: int) -> None:
        history = [{"role": "system", "content": SYSTEM}]
        for turn in range(1, 5):
            history.append({"role": "user", "content": turn_text(user, turn)})
            reply = await one_request(client, peer.model, history, user, GREEDY)
            replies.append((turn, reply))
            history.append({"role": "assistant", "content": reply.text})

    async def worker() -> None:
        while users:
            await conversation(users.pop(0))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return Outcome(sum(r.tokens for _, r in replies) / elapsed, replies)


class Prompts:
    """The request lists, the same for every peer: distinct ones, and a repeated mix whose
    third comes from prompts sent before in the run."""

    def __init__(self) -> None:
        self._rng = random.Random(1)
        self._sent: list[list[dict[str, str]]] = []

    def fresh(self, n: int) -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": prompt(self._rng)}] for _ in range(n)]

    def repeated(self, n: int) -> list[list[dict[str, str]]]:
        out = self.fresh(n)
        for i in range(0, n, 3):
            if self._sent:
                out[i] = self._rng.choice(self._sent)
        self._sent.extend(out)
        return out


def make_peers(args: argparse.Namespace, workdir: Path) -> list[Peer]:
    gguf = resolve_model_path("smollm2")
    found = []

    def ours(name: str, options: dict[str, Any], env: dict[str, str] | None = None) -> Peer:
        port = free_port()
        config = workdir / f"{name.replace(' ', '_')}.yaml"
        body: dict[str, Any] = {"cache": {"enabled": False}}
        body["observability"] = {"log_requests": False}
        if options:
            body["models"] = [{"name": OURS_MODEL, "options": options}]
        config.write_text(json.dumps(body))  # JSON is YAML
        command = [*service_command(), "serve", "--port", str(port), "--config", str(config)]
        return Peer(name, command, OURS_MODEL, port, "/ready", env=env or {})

    found.append(ours("vllm-service", {}))
    port = free_port()
    llama = [str(ensure_llama_server()), "-m", str(gguf), "-t", str(usable_cpus())]
    llama += ["-np", "16", "-c", str(2048 * 16), "--port", str(port), "--host", "127.0.0.1"]
    llama.append("--metrics")  # its prompt tokens computed, beside our prefix-cache counters
    if amx_built():
        llama.append("--no-repack")
    found.append(Peer("llama-server", llama, "smollm2", port))
    if args.baseline_src is not None:
        env = {"PYTHONPATH": str(args.baseline_src.resolve())}
        found.append(ours("vllm-service (baseline)", {}, env))
    for variant in args.variant:
        name, _, options = variant.partition("=")
        found.append(ours(f"vllm-service ({name})", json.loads(options)))
    return found


async def run_round(
    peers: list[Peer], runs: dict[str, Run], args: argparse.Namespace, prompts: Prompts, r: int
) -> None:
    sampling = SAMPLING[args.sampling]
    for workload in args.workloads:
        for c in args.concurrency:
            n = max(6, 2 * c)
            requests = prompts.repeated(n) if workload == "repeated" else prompts.fresh(n)
            order = peers if r % 2 == 0 else peers[::-1]
            for peer in order:
                assert peer.process is not None
                peer.process.send_signal(signal.SIGCONT)
                if workload == "multi-turn":
                    outcome = await multi_turn(peer, c, 1000 * (r + 1) + 100 * c)
                else:
                    outcome = await closed_loop(peer, c, requests, sampling)
                peer.process.send_signal(signal.SIGSTOP)
                runs[peer.name].outcomes.setdefault((workload, c), []).append(outcome)
                print(f"  {workload:<10} c={c:<2} {peer.name:<28} {outcome.rate:6.1f} tok/s")


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def report(peers: list[Peer], runs: dict[str, Run], args: argparse.Namespace) -> None:
    ref = runs["llama-server"]
    print("\n| workload | c | peer | tok/s | vs llama-server | TTFT p50 | ITL p99 | TTFT t2-4/t1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for workload in args.workloads:
        for c in args.concurrency:
            base = p50([o.rate for o in ref.outcomes[(workload, c)]])
            for peer in peers:
                outcomes = runs[peer.name].outcomes[(workload, c)]
                rate = p50([o.rate for o in outcomes])
                replies = [(t, x) for o in outcomes for t, x in o.replies if x.tokens]
                ttft = p50([x.ttft for _, x in replies]) * 1e3
                itl = p99([d for _, x in replies for d in x.itl]) * 1e3
                turns = "-"
                if workload == "multi-turn":
                    t1 = p50([x.ttft for t, x in replies if t == 1])
                    later = p50([x.ttft for t, x in replies if t > 1])
                    turns = f"{later * 1e3:.0f}/{t1 * 1e3:.0f} ms = {later / t1:.2f}"
                failed = sum(o.failed for o in outcomes)
                note = f" ({failed} failed)" if failed else ""
                print(
                    f"| {workload} | {c} | {peer.name}{note} | {rate:.1f} | {rate / base:.2f}x | "
                    f"{ttft:.0f} ms | {itl:.0f} ms | {turns} |"
                )


async def run_workloads(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="workloads-"))
    peers = make_peers(args, workdir)
    runs = {p.name: Run() for p in peers}
    prompts = Prompts()
    stats: dict[str, Any] = {}
    rss: dict[str, float] = {}
    try:
        for peer in peers:
            peer.start(workdir)
            peer.wait_ready()
            assert peer.process is not None
            # Warm-up: pages loaded, the first allocation made.
            await closed_loop(peer, 1, prompts.fresh(1), GREEDY)
            peer.process.send_signal(signal.SIGSTOP)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            await run_round(peers, runs, args, prompts, r)
        for peer in peers:
            assert peer.process is not None
            peer.process.send_signal(signal.SIGCONT)
            rss[peer.name] = peak_rss_mib(peer.process.pid)
            if peer.model == OURS_MODEL:
                body = httpx2.get(peer.url + "/health", timeout=10).json()
                engine = body["engines"][OURS_MODEL]
                engine["prompt_tokens_computed"] = (
                    engine["prompt_tokens"] - engine["prefix_cache_hit_tokens"]
                )
                stats[peer.name] = engine
            else:
                stats[peer.name] = llama_server_counters(peer)
    finally:
        for peer in peers:
            if peer.process is not None:
                peer.process.send_signal(signal.SIGCONT)
            peer.stop()
    print(f"\nsampling {args.sampling}; {args.rounds} rounds; concurrency {args.concurrency}")
    report(peers, runs, args)
    print()
    for peer in peers:
        print(f"peak RSS {peer.name}: {rss.get(peer.name, float('nan')):.0f} MiB")
    keys = (
        "prompt_tokens",
        "prompt_tokens_computed",
        "tokens_predicted",
        "prefix_cache_hit_tokens",
        "prefix_cache_host_hit_tokens",
        "prefix_cache_copies",
        "host_cache_bytes",
        "host_cache_entries",
        "host_cache_evictions",
        "steps",
        "decode_seconds",
        "sample_seconds",
        "kv_cells_used",
        "kv_cells_cached",
    )
    for name, engine in stats.items():
        print(f"{name}: " + ", ".join(f"{k} {engine[k]}" for k in keys if k in engine))


def llama_server_counters(peer: Peer) -> dict[str, Any]:
    """llama-server's own token counters from its Prometheus text (``--metrics``)."""
    text = httpx2.get(peer.url + "/metrics", timeout=10).text
    names = {
        "llamacpp:prompt_tokens_total": "prompt_tokens_computed",
        "llamacpp:prompt_tokens_cached_total": "prefix_cache_hit_tokens",
        "llamacpp:tokens_predicted_total": "tokens_predicted",
    }
    return {
        names[sample.name]: int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workloads",
        nargs="*",
        choices=WORKLOADS,
        help=f"run these workloads (none named: all of {', '.join(WORKLOADS)}) against "
        "llama-server at --concurrency, instead of the default comparison",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="with --workloads: also this checkout with these engine options, e.g. "
        "'budget128={\"max_num_batched_tokens\": 128}'",
    )
