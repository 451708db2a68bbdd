"""The embedded engine against llama.cpp's own server, measured side by side in one run.

Peers, all on the same GGUF file and thread count:

* ``vllm-service``: ``vllm-service serve`` with no options (the out-of-the-box defaults);
* ``llama-server``: llama.cpp's C++ server built from the llama.cpp vendored in the sdist of the
  llama-cpp-python version this project pins, ``-np`` equal to our ``max_num_seqs``;
* ``llama-cpp-python``: that package's own server (``python -m llama_cpp.server``), at
  concurrency 16 only;
* ``vllm-service (no prefix cache)``: ours with ``enable_prefix_caching: false``, the reference
  for the shared-system-prompt measure.

Workload: streaming chat requests with distinct ~60-word prompts and 64 output tokens
(``ignore_eos``), rounds alternating between the peers so machine noise hits all of them.
Set-up (building llama-server, a virtualenv for llama-cpp-python's server) is cached under
``~/.cache/vllm-service-bench``. Prints numbers; asserts nothing.

With ``--baseline-src DIR`` (another checkout's ``src``, e.g. a ``git worktree`` of an earlier
commit) a second vllm-service runs that code, measured in the same rounds at c=16 and c=1;
``--only-baseline`` leaves the other peers out (a quicker A/B of two versions).

    python benchmarks/engine_vs_peers.py [--rounds 3] [--requests 32]
        [--baseline-src DIR [--only-baseline]]

With ``--workloads`` it runs instead three workloads (distinct prompts, repeated prompts,
multi-turn chat) at ``--concurrency`` (1 4 16) against llama-server: see workloads.py.

    python benchmarks/engine_vs_peers.py --workloads [distinct repeated multi-turn]
        [--concurrency 1 4 16] [--rounds 3] [--baseline-src DIR] [--variant NAME=JSON]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import free_port, peak_rss_mib, service_command

from vllm_service.engine.llamacpp.device import usable_cpus
from vllm_service.engine.llamacpp.model_files import resolve_model_path
from vllm_service.engine.llamacpp.options import DEFAULT_MAX_NUM_SEQS
from vllm_service.engine.options import DEFAULT_MAX_MODEL_LEN

CACHE = Path(os.environ.get("VLLM_SERVICE_BENCH_CACHE", Path.home() / ".cache/vllm-service-bench"))
OUTPUT_TOKENS = 64
#: Sampling parameters sent to every peer. llama-server cuts to its default top_k=40 unless
#: told otherwise, so "top_k" sends it explicitly: both engines then do the same work. The
#: repetition penalty is off explicitly: the bundled model's default turns it on in ours
#: (llama-server's default is off).
_SAME_WORK = {"ignore_eos": True, "repetition_penalty": 1.0, "repeat_penalty": 1.0}
SAMPLING: dict[str, dict[str, Any]] = {
    "top_k": {"temperature": 0.8, "top_p": 0.95, "extra_body": {**_SAME_WORK, "top_k": 40}},
    "top_p": {"temperature": 0.8, "top_p": 0.95, "extra_body": _SAME_WORK},
    "greedy": {"temperature": 0.0, "extra_body": _SAME_WORK},
}

SUBJECTS = [
    "lighthouses",
    "honey bees",
    "volcanoes",
    "old trains",
    "violins",
    "coffee farms",
    "glaciers",
    "chess openings",
    "city gardens",
    "bicycles",
    "the moon",
    "bread baking",
    "rain forests",
    "libraries",
    "sailing ships",
    "winter storms",
]
ANGLES = [
    "their history",
    "how they work",
    "why people love them",
    "the problems they face",
    "what the future holds for them",
    "the science behind them",
]
SYSTEM_PROMPT = " ".join(
    [
        "You are the support assistant of a company that sells bicycles, spare parts and "
        "repair services in three cities. Answer politely and briefly, in plain English. "
        "Never invent prices, opening hours or stock levels; when a customer asks for them, "
        "tell them to check the website or call the shop. Recommend a repair appointment "
        "when a customer describes a safety problem such as worn brakes, a cracked frame or a "
        "loose headset. Do not give medical, legal or financial advice."
    ]
    * 3
)


def prompt(rng: random.Random) -> str:
    """A ~60-word request, distinct from its first words on: beyond the chat template, no peer
    gets a prompt-cache hit (this measures batching, not caching)."""
    subject, angle = rng.choice(SUBJECTS), rng.choice(ANGLES)
    words = [
        f"Request {rng.randrange(10**6)}.",
        f"Please write a short, friendly article about {subject}, focusing on {angle}.",
        f"The readers are curious adults who know little about {subject}.",
        "Use simple words, give one concrete example, and avoid lists or headings.",
        f"Mention one surprising fact about {subject} and explain why it matters today.",
        "Finish with a sentence that invites the reader to learn more.",
    ]
    return " ".join(words)


# -- set-up ---------------------------------------------------------------------------------


def llama_cpp_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def ensure_llama_server() -> Path:
    """Build llama-server from the pinned sdist's vendored llama.cpp (cached)."""
    version = llama_cpp_version()
    binary = CACHE / f"build-{version}/bin/llama-server"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                # Only this package as source: ":all:" would build its build dependencies
                # (cmake, ninja) from source too, which took longer than the whole benchmark.
                "--no-binary",
                "llama-cpp-python",
                f"llama-cpp-python=={version}",
                "-d",
                str(CACHE),
            ],
            check=True,
        )
    source = CACHE / f"llama_cpp_python-{version}"
    if not source.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(CACHE, filter="data")
    build = CACHE / f"build-{version}"
    subprocess.run(
        [
            "cmake",
            "-S",
            str(source / "vendor/llama.cpp"),
            "-B",
            str(build),
            "-DLLAMA_CURL=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
        ],
        check=True,
    )
    jobs = str(usable_cpus())
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True
    )
    return binary


def ensure_lcp_server() -> Path:
    """A virtualenv with llama-cpp-python[server] at the pinned version (its own deps)."""
    venv = CACHE / "lcp-server-venv"
    python = venv / "bin/python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import llama_cpp.server"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"llama-cpp-python[server]=={llama_cpp_version()}",
            ],
            check=True,
        )
    return python


# -- peers ------------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    command: list[str]
    model: str
    port: int
    ready_path: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    tokens_per_s: dict[int, list[float]] = field(default_factory=dict)
    ttft: dict[int, list[float]] = field(default_factory=dict)
    itl: dict[int, list[float]] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workdir: Path) -> None:
        self.log = workdir / f"{self.name.replace(' ', '_')}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log else ""
                raise RuntimeError(f"{self.name} exited:\n{log}")
            try:
                if httpx2.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class Sample:
    ttft: float
    itl: list[float]
    tokens: int
    text: str = ""


async def one_request(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[dict[str, str]],
    seed: int,
    sampling: dict[str, Any],
) -> Sample:
    start = time.perf_counter()
    stamps: list[float] = []
    text: list[str] = []
    usage_tokens = None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=OUTPUT_TOKENS,
            seed=seed,
            stream=True,
            stream_options={"include_usage": True},
            **sampling,
        )
        async for chunk in stream:
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
                text.append(chunk.choices[0].delta.content)
    except openai.APIError:
        stamps = []  # counted as a failed request below
    if not stamps:  # the peer ended the stream without output: a failed request
        return Sample(float("nan"), [], 0)
    itl = [b - a for a, b in itertools.pairwise(stamps)]
    tokens = usage_tokens if usage_tokens else len(stamps)
    return Sample(stamps[0] - start, itl, tokens, "".join(text))


async def closed_loop(
    peer: Peer, concurrency: int, requests: list[list[dict[str, str]]], sampling: dict[str, Any]
) -> tuple[float, list[Sample]]:
    """Run ``requests`` with ``concurrency`` in flight; returns (output tokens/s, samples)."""
    client = openai.AsyncOpenAI(
        base_url=peer.url + "/v1", api_key="unused", max_retries=0, timeout=600
    )
    queue = list(enumerate(requests))
    samples: list[Sample] = []

    async def worker() -> None:
        while queue:
            i, messages = queue.pop(0)
            samples.append(await one_request(client, peer.model, messages, i, sampling))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return sum(s.tokens for s in samples) / elapsed, samples


def record(peer: Peer, concurrency: int, rate: float, samples: list[Sample]) -> None:
    peer.tokens_per_s.setdefault(concurrency, []).append(rate)
    peer.failed[concurrency] = peer.failed.get(concurrency, 0) + sum(not s.tokens for s in samples)
    peer.ttft.setdefault(concurrency, []).extend(s.ttft for s in samples if s.tokens)
    peer.itl.setdefault(concurrency, []).extend(x for s in samples for x in s.itl)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def memory_bandwidth_gbs() -> float:
    """Single-threaded copy bandwidth of a 512 MiB buffer (read + write counted), GB/s."""
    import numpy as np

    src = np.ones(64 * 1024 * 1024, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def report_baseline(ours: Peer, baseline: Peer) -> None:
    """This checkout against the baseline's: medians and each round's value (the spread)."""

    def rounds(values: list[float], scale: float = 1.0) -> str:
        return " ".join(f"{v * scale:.1f}" for v in values)

    print()
    print("| measure | this checkout: median (rounds) | baseline: median (rounds) | ratio |")
    print("| --- | --- | --- | --- |")
    for c in (16, 1):
        a, b = ours.tokens_per_s[c], baseline.tokens_per_s[c]
        print(
            f"| output tok/s, c={c} | {p50(a):.1f} ({rounds(a)}) | {p50(b):.1f} ({rounds(b)}) "
            f"| {p50(a) / p50(b):.3f}x |"
        )
        a, b = ours.ttft[c], baseline.ttft[c]
        print(
            f"| TTFT p50, c={c} (ms) | {p50(a) * 1e3:.0f} | {p50(b) * 1e3:.0f} "
            f"| {p50(a) / p50(b):.3f}x |"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=32, help="requests per c=16 round")
    parser.add_argument("--solo", type=int, default=6, help="requests per c=1 round")
    parser.add_argument(
        "--sampling",
        choices=sorted(SAMPLING),
        default="top_p",
        help="top_p: temperature 0.8, top_p 0.95 (exact, as OpenAI defines it; llama-server "
        "still cuts to its default top_k=40); top_k: the same plus top_k 40 sent to both; "
        "greedy: temperature 0",
    )
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--only-baseline", action="store_true")
    from workloads import WORKLOADS, add_arguments, run_workloads

    add_arguments(parser)
    args = parser.parse_args()
    if args.workloads is not None:
        args.workloads = args.workloads or list(WORKLOADS)
        await run_workloads(args)
        return
    sampling = SAMPLING[args.sampling]

    gguf = resolve_model_path("smollm2")
    threads = usable_cpus()
    slots = DEFAULT_MAX_NUM_SEQS
    print(f"sampling {args.sampling}: {SAMPLING[args.sampling]}")
    print(
        f"model {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB), threads {threads}, "
        f"slots {slots}, llama-cpp-python {llama_cpp_version()}"
    )
    server_bin = ensure_llama_server()
    lcp_python = ensure_lcp_server()
    ours_cmd = service_command()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    # The response cache stays off: the engines are compared, not a cache's replay.
    engine_cfg = workdir / "engine.yaml"
    engine_cfg.write_text("cache: {enabled: false}\n")
    no_cache_cfg = workdir / "no-prefix-cache.yaml"
    no_cache_cfg.write_text(
        "cache: {enabled: false}\n"
        "models:\n  - name: smollm2-135m-instruct\n    options: {enable_prefix_caching: false}\n"
    )
    ours_model = "smollm2-135m-instruct"
    ports = [free_port() for _ in range(4)]
    ours = Peer(
        "vllm-service",
        [*ours_cmd, "serve", "--port", str(ports[0]), "--config", str(engine_cfg)],
        ours_model,
        ports[0],
        "/ready",
    )
    ours_nc = Peer(
        "vllm-service (no prefix cache)",
        [*ours_cmd, "serve", "--port", str(ports[1]), "--config", str(no_cache_cfg)],
        ours_model,
        ports[1],
        "/ready",
    )
    peer = Peer(
        "llama-server",
        [
            str(server_bin),
            "-m",
            str(gguf),
            "-t",
            str(threads),
            "-np",
            str(slots),
            "-c",
            str(DEFAULT_MAX_MODEL_LEN * slots),
            "--port",
            str(ports[2]),
            "--host",
            "127.0.0.1",
        ],
        "smollm2",
        ports[2],
    )
    lcp = Peer(
        "llama-cpp-python server",
        [
            str(lcp_python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--n_threads",
            str(threads),
            "--n_ctx",
            str(DEFAULT_MAX_MODEL_LEN),
            "--port",
            str(ports[3]),
            "--host",
            "127.0.0.1",
        ],
        "smollm2",
        ports[3],
        "/v1/models",
    )
    peers = [ours, ours_nc, peer, lcp]
    baseline = None
    if args.baseline_src is not None:
        port = free_port()
        baseline = Peer(
            "vllm-service (baseline)",
            [*ours_cmd, "serve", "--port", str(port), "--config", str(engine_cfg)],
            ours_model,
            port,
            "/ready",
            env={"PYTHONPATH": str(args.baseline_src.resolve())},
        )
        peers = [ours, baseline] if args.only_baseline else [*peers, baseline]
    try:
        for p in peers:
            p.start(workdir)
        for p in peers:
            p.wait_ready()
        rng = random.Random(1)
        user = [[{"role": "user", "content": prompt(rng)}] for _ in range(400)]
        questions = [
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Question {i}: {prompt(rng)[:80]}"},
            ]
            for i in range(200)
        ]
        # Warm-up: load pages, fill the prompt caches with the system prompt.
        for p in peers:
            await closed_loop(p, 1, user[:1], sampling)
        for p in (ours, ours_nc):
            if p in peers:
                await closed_loop(p, 1, questions[:1], sampling)
        take = iter(range(1, 400))
        qtake = iter(range(1, 200))
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            batch = [user[next(take) % 400] for _ in range(args.requests)]
            solo = [user[next(take) % 400] for _ in range(args.solo)]
            for p in (ours, baseline, peer, lcp):
                if p in peers:
                    rate, samples = await closed_loop(p, 16, batch, sampling)
                    record(p, 16, rate, samples)
            for p in (ours, baseline, peer):
                if p in peers:
                    rate, samples = await closed_loop(p, 1, solo, sampling)
                    record(p, 1, rate, samples)
            shared = [questions[next(qtake) % 200] for _ in range(args.solo)]
            for p in (ours, ours_nc):
                if p not in peers:
                    continue
                rate, samples = await closed_loop(p, 1, shared, sampling)
                record(p, 300, rate, samples)  # 300: "shared system prompt" series
    finally:
        rss = {p.name: peak_rss_mib(p.process.pid) for p in peers if p.process}
        for p in peers:
            p.stop()

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    if baseline is not None:
        report_baseline(ours, baseline)
    if args.only_baseline:
        return
    print()
    print("| measure | vllm-service | peer | ratio |")
    print("| --- | --- | --- | --- |")
    for c in (16, 1):
        a, b = p50(ours.tokens_per_s[c]), p50(peer.tokens_per_s[c])
        print(f"| output tok/s, c={c} | {a:.1f} | llama-server {b:.1f} | {ratio(a, b)} |")
        a, b = p50(ours.ttft[c]) * 1e3, p50(peer.ttft[c]) * 1e3
        print(f"| TTFT p50, c={c} (ms) | {a:.0f} | llama-server {b:.0f} | {ratio(a, b)} |")
        a, b = p50(ours.itl[c]) * 1e3, p50(peer.itl[c]) * 1e3
        print(f"| ITL p50, c={c} (ms) | {a:.1f} | llama-server {b:.1f} | {ratio(a, b)} |")
    a, b = p50(ours.tokens_per_s[16]), p50(lcp.tokens_per_s[16])
    print(f"| output tok/s, c=16 | {a:.1f} | llama-cpp-python server {b:.1f} | {ratio(a, b)} |")
    a, b = p50(ours.ttft[300]) * 1e3, p50(ours_nc.ttft[300]) * 1e3
    print(
        f"| TTFT p50, shared ~280-token system prompt, warm (ms) | {a:.0f} | "
        f"no prefix cache {b:.0f} | {ratio(a, b)} |"
    )
    print()
    for p in peers:
        if any(p.failed.values()):
            print(f"{p.name}: requests that streamed no output: {p.failed}")
        print(f"peak RSS {p.name}: {rss.get(p.name, float('nan')):.0f} MiB")
    size = gguf.stat().st_size
    bw = memory_bandwidth_gbs()
    print(
        f"memory copy bandwidth (1 thread, numpy): {bw:.1f} GB/s; weights {size / 1e6:.0f} MB "
        f"read per decode step -> at most {bw * 1e9 / size:.0f} steps/s if bandwidth-bound"
    )


if __name__ == "__main__":
    asyncio.run(main())
