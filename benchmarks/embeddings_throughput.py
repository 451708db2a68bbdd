"""Embeddings per second through POST /v1/embeddings (batches of 64 short texts), beside the
same embedder called in this process (the floor the HTTP API adds to); then the bundled chat
model mean-pooled by llama.cpp (the GGUF path), cache off. Prints numbers; asserts nothing.

    python benchmarks/embeddings_throughput.py [--requests 50] [--batch 64] [--gguf-requests 3]
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

from vllm_service.manager.semantic import MODEL_ID, shared_embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gguf-requests", type=int, default=3)
    args = parser.parse_args()
    texts = [
        f"A short sentence number {i} about the weather and the sea." for i in range(args.batch)
    ]
    work = Path(tempfile.mkdtemp(prefix="embeddings-"))
    config = {"observability": {"log_requests": False}, "cache": {"enabled": False}}
    proc, url = start_configured("embeddings", config, work)
    embedder = shared_embedder()
    http_rates, local_rates = [], []
    try:
        with httpx2.Client(timeout=60) as http:
            body = {"model": MODEL_ID, "input": texts}
            for _ in range(args.rounds):
                started = time.perf_counter()
                for _ in range(args.requests):
                    assert http.post(f"{url}/v1/embeddings", json=body).status_code == 200
                http_rates.append(args.requests * args.batch / (time.perf_counter() - started))
                started = time.perf_counter()
                for _ in range(args.requests):
                    embedder.embed_ids(embedder.encode(texts))
                local_rates.append(args.requests * args.batch / (time.perf_counter() - started))
            gguf_rates = []
            for _ in range(args.gguf_requests):
                started = time.perf_counter()
                gguf = {"model": "smollm2-135m-instruct", "input": texts}
                assert http.post(f"{url}/v1/embeddings", json=gguf).status_code == 200
                gguf_rates.append(args.batch / (time.perf_counter() - started))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{args.rounds} rounds of {args.requests} requests, batches of {args.batch} short texts")
    print(
        f"  /v1/embeddings (float JSON): median {statistics.median(http_rates):,.0f} embeddings/s"
    )
    print(
        f"  in process:                  median {statistics.median(local_rates):,.0f} embeddings/s"
    )
    print(
        f"  smollm2-135m-instruct (GGUF, mean-pooled, {args.gguf_requests} requests): "
        f"median {statistics.median(gguf_rates):,.1f} embeddings/s"
    )


if __name__ == "__main__":
    main()
