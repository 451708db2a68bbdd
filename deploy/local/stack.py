"""The monitored stack without containers: Redis, PostgreSQL, Prometheus (scraping the service,
the shipped alert rules loaded), Alertmanager (when installed) and the service configured for
them, as processes on this machine. What deploy/compose/ runs where a container engine exists.

    python deploy/local/stack.py up [--dir .stack] [--port 8090]
    python deploy/local/stack.py down [--dir .stack]

Needs the Debian packages redis-server, postgresql and prometheus (and, for alerts going
somewhere, prometheus-alertmanager). Everything lives in --dir: data, logs, configs, pids.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str, *extra: str) -> str:
    found = shutil.which(name) or next((p for p in extra if Path(p).is_file()), None)
    if found is None:
        sys.exit(f"stack: {name} is missing (install its Debian package)")
    return found


def wait(url: str, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.3)
    sys.exit(f"stack: {what} did not come up ({url})")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    return proc.pid


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def postgres(work: Path, port: int) -> str:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        sys.exit("stack: PostgreSQL is missing (install the Debian package postgresql)")
    bin_dir = Path(bins[-1])
    data, sockets = work / "pgdata", work / "pgsock"
    sockets.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        shutil.chown(sockets, "postgres")
    if not data.exists():
        subprocess.run(
            as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "vllm",
                         "--auth=trust", "-E", "UTF8"]),
            check=True, capture_output=True,
        )  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    subprocess.run(
        as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(work / "postgres.log"),
                     "-o", options, "-w", "start"]),
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                     "-U", "vllm", "vllm"]),
        check=False, capture_output=True,
    )  # fmt: skip
    return str(bin_dir / "pg_ctl")


def up(work: Path, port: int) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    ports = {"redis": free_port(), "postgres": free_port(), "prometheus": free_port(),
             "alertmanager": free_port(), "service": port}  # fmt: skip
    pids: dict[str, int] = {}
    redis_log = work / "redis.log"
    pids["redis"] = spawn([binary("redis-server"), "--port", str(ports["redis"]),
                           "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                          redis_log)  # fmt: skip
    pg_ctl = postgres(work / "postgres", ports["postgres"])
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "cache": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{ports['redis']}/0"},
        "ledger": {
            "data_dir": str(work / "service-data"),
            "url": f"postgresql+asyncpg://vllm@127.0.0.1:{ports['postgres']}/vllm",
        },
    }
    (work / "service.yaml").write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).parent / "vllm-service"
    service = [str(exe)] if exe.is_file() else [sys.executable, "-m", "vllm_service"]
    pids["service"] = spawn([*service, "serve", "--config", str(work / "service.yaml")],
                            work / "service.log")  # fmt: skip
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    prom_config: dict[str, object] = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
        "rule_files": [str(ROOT / "deploy/prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "vllm-service",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }  # fmt: skip
    if alertmanager:
        am_port = ports["alertmanager"]
        pids["alertmanager"] = spawn(
            [alertmanager, f"--config.file={ROOT / 'deploy/compose/alertmanager.yml'}",
             f"--storage.path={work / 'alertmanager'}",
             f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            work / "alertmanager.log",
        )  # fmt: skip
        prom_config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        }
    (work / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
    pids["prometheus"] = spawn(
        [binary("prometheus"), f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'prometheus-data'}",
         f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
        work / "prometheus.log",
    )  # fmt: skip
    pgdata = str(work / "postgres" / "pgdata")
    state = {"pids": pids, "ports": ports, "pg_ctl": pg_ctl, "pgdata": pgdata}
    (work / "stack.json").write_text(json.dumps(state, indent=1))
    wait(f"http://127.0.0.1:{port}/ready", "the service")
    wait(f"http://127.0.0.1:{ports['prometheus']}/-/ready", "Prometheus")
    return state


def down(work: Path) -> None:
    state = json.loads((work / "stack.json").read_text())
    for name, pid in state["pids"].items():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            print(f"stack: {name} did not stop; killing it", file=sys.stderr)
            os.killpg(pid, signal.SIGKILL)
    subprocess.run(as_postgres([state["pg_ctl"], "-D", state["pgdata"], "-m", "fast", "stop"]),
                   check=False, capture_output=True)  # fmt: skip
    (work / "stack.json").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".stack"))
    parser.add_argument("--port", type=int, default=8090, help="The service's port.")
    args = parser.parse_args()
    work = args.dir.resolve()
    if args.action == "down":
        down(work)
        return
    state = up(work, args.port)
    ports = state["ports"]
    assert isinstance(ports, dict)
    print(f"service     http://127.0.0.1:{ports['service']}")
    print(f"prometheus  http://127.0.0.1:{ports['prometheus']}")
    if "alertmanager" in state["pids"]:  # type: ignore[operator]
        print(f"alertmanager http://127.0.0.1:{ports['alertmanager']}")
    print(f"logs and data in {work}; stop with: python {__file__} down --dir {args.dir}")


if __name__ == "__main__":
    main()
