"""Fixtures shared by all tests: a real `vllm-service serve` process on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import uvicorn
import yaml

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_HELD_PORTS: list[socket.socket] = []


def dead_url() -> str:
    """The base URL of an upstream that refuses connections for the whole test session: its
    port stays bound and never listens, so no service started later can be given it (a port
    merely free now can become a test's own server, which then answers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def python_tool(name: str) -> str | None:
    """A console script installed beside the running interpreter (found without PATH, so an
    unactivated virtualenv works)."""
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None


def service_command() -> list[str]:
    """The console script a user runs; falls back to the module when it is not installed."""
    exe = python_tool("vllm-service")
    return [exe] if exe else [sys.executable, "-m", "vllm_service"]


def system_binary(name: str, package: str) -> str:
    """A program from a system package: skipped with the package named when it is missing,
    a failure under CI (where scripts/test installs it)."""
    exe = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.is_file()),
        None,
    )
    if exe is not None:
        return exe
    message = f"{name} is missing: install the Debian package '{package}' (scripts/test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Service:
    """A running service process and how to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)

    def engine_stats(self, model: str = "smollm2-135m-instruct") -> dict[str, int]:
        """The scheduler's counters, as /health reports them."""
        body = httpx2.get(f"{self.base_url}/health", timeout=10).json()
        stats: dict[str, int] = body["engines"][model]
        return stats

    def wait_idle(self, timeout: float = 60.0) -> dict[str, int]:
        """Poll until nothing runs or waits; a generous bound that only catches a stuck engine."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.engine_stats()
            if stats["running"] == 0 and stats["waiting"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine is still busy: {stats}")
            time.sleep(0.05)

    async def until_running(self, count: int = 1, polls: int = 3000) -> None:
        """Yield to the event loop until the engine runs ``count`` sequences."""
        for _ in range(polls):
            if self.engine_stats()["running"] >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the engine never ran {count} sequences")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log()}")
            try:
                if httpx2.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    tmp_dir: Path, config: dict[str, object] | None = None, extra_args: list[str] | None = None
) -> Service:
    port = free_port()
    args = [*service_command(), "serve", "--port", str(port)]
    if config is not None:
        # Tests of the engine, routing and errors send identical greedy requests and need each
        # to reach the engine: the response cache is on only where a test configures it.
        config = {"cache": {"enabled": False}, **config}
        config_path = tmp_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        args += ["--config", str(config_path)]
    args += extra_args or []
    log_path = tmp_dir / "service.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SERVICE_")}
    # The ledger's default data dir (its SQLite file and journal) goes under the test's dir.
    env["XDG_DATA_HOME"] = str(tmp_dir / "data")
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    service = Service(process=process, port=port, log_path=log_path)
    try:
        service.wait_ready()
    except BaseException:
        service.stop()
        raise
    return service


class Prometheus:
    """A real Prometheus server scraping services every second (its HTTP API queried)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> dict[str, Any]:
        r = httpx2.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        body: dict[str, Any] = r.json()
        return body

    def wait_for(self, promql: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The query's result once it is not empty (fails after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result: list[dict[str, Any]] = self.query(promql)["data"]["result"]
                if result:
                    return result
            except (httpx2.TransportError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus returned nothing for {promql!r}")
            time.sleep(0.5)


@contextlib.contextmanager
def prometheus(tmp_path: Path, *targets: int) -> Iterator[Prometheus]:
    """Prometheus (the Debian package) scraping 127.0.0.1:<target>/metrics each second."""
    binary = system_binary("prometheus", "prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "vllm-service",
                "static_configs": [{"targets": [f"127.0.0.1:{t}" for t in targets]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Prometheus(port)
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[None]:
    """Run an ASGI app (a test upstream) with uvicorn on a thread of this process."""
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


MODEL = "smollm2-135m-instruct"
#: Sixteen distinct subjects for concurrent prompts, one per default sequence slot.
SUBJECTS = [
    "the sea",
    "a mountain",
    "bread",
    "the moon",
    "a violin",
    "winter",
    "a library",
    "coffee",
    "a bicycle",
    "rain",
    "chess",
    "a lighthouse",
    "honey",
    "a volcano",
    "trains",
    "gardens",
]
ALIAS = "gpt-3.5-turbo"


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on the bundled model, with an OpenAI model name as alias."""
    config = {
        "models": [
            {
                "name": MODEL,
                "aliases": [ALIAS],
                "options": {"model": "smollm2", "max_model_len": 1024, "max_num_seqs": 16},
            }
        ]
    }
    svc = start_service(tmp_path_factory.mktemp("service"), config)
    yield svc
    svc.stop()


@pytest.fixture
def client(service: Service) -> openai.OpenAI:
    return service.client()


@dataclass
class Postgres:
    """A PostgreSQL server of our own: initdb'd in a temp dir, on a free loopback port."""

    bin_dir: Path
    data_dir: Path
    port: int
    run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        command = [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.ctl("-w", "-l", str(self.data_dir / "server.log"), "start")

    def stop(self) -> None:
        self.ctl("-w", "-m", "fast", "stop")


def postgres_bin_dir() -> Path:
    """The server binaries of the Debian 'postgresql' package (not on PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    message = "PostgreSQL is missing: install the Debian package 'postgresql' (scripts/test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    bin_dir = postgres_bin_dir()
    # initdb refuses to run as root: as root, the server runs as the package's postgres user.
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="vllm-service-pg-"))
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    data = base / "data"
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    conf = f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base}'\n"
    with (data / "postgresql.conf").open("a") as f:
        f.write(conf + "fsync = off\nmax_connections = 200\n")
    server = Postgres(bin_dir, data, port, run_as)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
