"""The ledger's own costs, in process: the journal append on the request path (p50 and p99 per
row), and sustained rows per second into SQLite and PostgreSQL with the journal draining.
Prints numbers; asserts nothing.

    python benchmarks/ledger_throughput.py [--rows 20000] [--rate 2000] [--seconds 10]
        [--postgres]

``--postgres`` starts a PostgreSQL server of its own (initdb + pg_ctl in a temp dir, from the
Debian 'postgresql' package; as root it runs as the package's postgres user).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vllm_service.accounting.cost import KNOWN_PRICES, HardwareCost, PriceTable
from vllm_service.accounting.ledger import Ledger, LedgerSettings
from vllm_service.accounting.request_log import RequestRecord
from vllm_service.engine.base import Usage


def record(i: int) -> RequestRecord:
    rec = RequestRecord(f"req-{i}", "/v1/chat/completions", "POST", started=0.0)
    rec.status, rec.model, rec.deployment, rec.engine, rec.device = 200, "m", "m", "llamacpp", "cpu"
    rec.latency, rec.ttft, rec.cache, rec.finished_choices = 0.2, 0.05, "miss", 1
    rec.usage.add(0, Usage(prompt_tokens=40, completion_tokens=60))
    return rec


def ledger_for(url: str, journal: Path) -> Ledger:
    prices = PriceTable([KNOWN_PRICES["gpt-4o-mini"], KNOWN_PRICES["gpt-4o"]])
    settings = LedgerSettings(url=url, journal_dir=journal, flush_interval=0.1)
    return Ledger(settings, prices, HardwareCost(hourly=0.5))


async def append_cost(url: str, work: Path, rows: int) -> None:
    """Ledger.record as the middleware calls it: build the row, one write to the journal."""
    ledger = ledger_for(url, work / "append-journal")
    await ledger.start()
    recs = [record(i) for i in range(rows)]
    times = []
    for rec in recs:
        start = time.perf_counter()
        ledger.record(rec)
        times.append(time.perf_counter() - start)
    await ledger.stop()
    times.sort()
    print(
        f"journal append per row: p50 {statistics.median(times) * 1e3:.4f} ms, "
        f"p99 {times[int(len(times) * 0.99)] * 1e3:.4f} ms ({rows} rows)"
    )


async def sustained(name: str, url: str, work: Path, rate: float, seconds: float) -> None:
    """Rows at ``rate`` per second for ``seconds``; the writer drains the journal meanwhile."""
    ledger = ledger_for(url, work / f"{name}-journal")
    await ledger.start()
    assert ledger.journal is not None
    sent = 0
    depth = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            ledger.record(record(sent))
            sent += 1
        depth = max(depth, ledger.journal.bytes)
        await asyncio.sleep(0.005)
    feeding = time.perf_counter() - start
    await ledger.stop(grace=120)
    drained = time.perf_counter() - start
    print(
        f"{name}: {sent} rows offered at {sent / feeding:.0f}/s; all {ledger.committed} committed "
        f"{drained - feeding:.2f} s after the last; {sent / drained:.0f} rows/s end to end; "
        f"journal at most {depth / 1024:.0f} KiB; dropped {ledger.journal.dropped}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    bin_dir = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
    base = Path(tempfile.mkdtemp(prefix="ledger-bench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
    subprocess.run([*run_as, *initdb], check=True, capture_output=True)
    with (data / "postgresql.conf").open("a") as f:
        f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\n")
        f.write(f"unix_socket_directories = '{base}'\n")
    ctl = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-w"]
    subprocess.run([*ctl, "-l", str(base / "log"), "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    sqlite = f"sqlite+aiosqlite:///{work / 'ledger.db'}"
    await append_cost(sqlite, work, args.rows)
    await sustained("sqlite", sqlite, work, args.rate, args.seconds)
    if args.postgres:
        with postgres_server() as url:
            await sustained("postgresql", url, work, args.rate, args.seconds)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
