"""What hostile requests cost the service: time to answer, peak RSS, /health latency meanwhile.

Runs each case against this checkout's service and, with ``--baseline-src DIR`` (another
checkout's ``src``), against that one too, one service after the other in the same run:

* schema-min-items: response_format json_schema {"type": "array", "minItems": 100000000}
* schema-min-length: {"type": "string", "minLength": 100000000}
* schema-enum-1mb: an enum of about 1 MB
* empty-messages-20k / -100k: that many empty user messages
* idle-connections: 50 connections that send nothing and one that trickles its headers;
  reports how many the server still holds open after ``--idle-wait`` seconds

Prints one line per case and service; nothing is asserted.

    python benchmarks/hostile_requests.py [--baseline-src ../old/src] [--idle-wait 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from serve_basics import peak_rss_mib
from upstream_overhead import start

MODEL = "smollm2-135m-instruct"


def schema_case(schema: dict[str, Any]) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "List."}],
        "max_tokens": 1,
        "response_format": fmt,
    }


def messages_case(count: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": ""}] * count, "max_tokens": 1}


CASES: dict[str, dict[str, Any]] = {
    "schema-min-length": schema_case({"type": "string", "minLength": 100_000_000}),
    "schema-enum-1mb": schema_case({"enum": [f"value-{i:08d}" for i in range(70_000)]}),
    "empty-messages-20k": messages_case(20_000),
    "empty-messages-100k": messages_case(100_000),
    "schema-min-items": schema_case(
        {"type": "array", "minItems": 100_000_000, "items": {"type": "integer"}}
    ),
}


async def watch_health(url: str, stop: asyncio.Event, samples: list[float]) -> None:
    async with httpx2.AsyncClient(timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()
            await client.get(f"{url}/health")
            samples.append(time.monotonic() - started)
            await asyncio.sleep(0.1)


async def timed_request(url: str, body: dict[str, Any]) -> tuple[int, float, list[float]]:
    stop, samples = asyncio.Event(), []
    watcher = asyncio.create_task(watch_health(url, stop, samples))
    started = time.monotonic()
    async with httpx2.AsyncClient(timeout=300) as client:
        r = await client.post(
            f"{url}/v1/chat/completions",
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
    took = time.monotonic() - started
    stop.set()
    await watcher
    return r.status_code, took, samples


def idle_connections(url: str, wait: float) -> tuple[int, int]:
    """Open 50 silent connections and one trickling its headers; after ``wait`` seconds,
    how many of the 51 the server still holds open, and the /health latency then (ms)."""
    port = int(url.rsplit(":", 1)[1])
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    trickle = socket.create_connection(("127.0.0.1", port))
    trickle.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    socks.append(trickle)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            trickle.sendall(b"X-Slow: 1\r\n")
        time.sleep(1)
    still_open = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.recv(65536, socket.MSG_PEEK)  # data or EOF: the server answered and closed
        except BlockingIOError:
            still_open += 1  # nothing to read and not closed: the server holds it
        except OSError:
            pass
    started = time.monotonic()
    httpx2.get(f"{url}/health", timeout=60)
    health_ms = round((time.monotonic() - started) * 1000)
    for sock in socks:
        sock.close()
    return still_open, health_ms


def measure(name: str, url: str, pid: int, idle_wait: float) -> None:
    for case, body in CASES.items():
        status, took, samples = asyncio.run(timed_request(url, body))
        worst = max(samples) * 1000 if samples else float("nan")
        p50 = statistics.median(samples) * 1000 if samples else float("nan")
        print(
            f"{name:10} {case:20} status {status}  answered in {took:7.3f} s  "
            f"/health p50 {p50:7.1f} ms max {worst:7.1f} ms  peak RSS {peak_rss_mib(pid):7.0f} MiB",
            flush=True,
        )
    held, health_ms = idle_connections(url, idle_wait)
    print(
        f"{name:10} {'idle-connections':20} {held}/51 still open after {idle_wait:.0f} s  "
        f"/health then {health_ms} ms  peak RSS {peak_rss_mib(pid):7.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path)
    parser.add_argument("--idle-wait", type=float, default=15.0)
    args = parser.parse_args()
    config = {"cache": {"enabled": False}, "observability": {"log_requests": False}}
    services: list[tuple[str, dict[str, str] | None]] = [("this", None)]
    if args.baseline_src is not None:
        services.append(("baseline", {"PYTHONPATH": str(args.baseline_src.resolve())}))
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in services:
            proc, url = start(config, Path(tmp), name, env)
            try:
                measure(name, url, proc.pid, args.idle_wait)
            finally:
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
