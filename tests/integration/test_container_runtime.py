"""The container image's recipe without a container engine: deploy/docker/install.sh into a
fresh virtualenv, then the service from that install as the image runs it: an unprivileged
uid (10001, when the suite runs as root), the install directory read-only, only the data dir
writable, the image's own config file; it serves, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import MODEL, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UID = 10001


def base_python() -> str:
    """The interpreter the install's virtualenv is made from. Run as another uid, it must be
    one that uid can execute and read (as the image's is): the system's python3, not one under
    root's home."""
    if os.geteuid() != 0:
        return sys.executable
    system = "/usr/bin/python3"
    probe = subprocess.run(
        [system, "-c", "import sys, venv; sys.exit(sys.version_info < (3, 11))"],
        capture_output=True,
        check=False,
    ) if Path(system).is_file() else None  # fmt: skip
    if probe is None or probe.returncode != 0:
        message = "the image test needs /usr/bin/python3 >= 3.11 with venv (python3-venv)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return system


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """install.sh's virtualenv, in a directory another uid can traverse."""
    base = Path(tempfile.mkdtemp(prefix="vllm-install-", dir="/tmp"))
    base.chmod(0o755)
    prefix = base / "opt"
    env = {**os.environ, "PREFIX": str(prefix), "PYTHON": base_python()}
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run(
        [str(ROOT / "deploy/docker/install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "bundled model" in run.stdout
    try:
        yield prefix
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_the_image_install_serves_read_only_as_an_unprivileged_user(installed: Path) -> None:
    data = installed.parent / "data"
    home = installed.parent / "home"
    for folder in (data, home):
        folder.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        for folder in (data, home):
            os.chown(folder, UID, UID)
    subprocess.run(["chmod", "-R", "a-w", str(installed)], check=True)
    before = files_under(installed)
    port, metrics_port = free_port(), free_port()
    admin = "vs-" + secrets.token_hex(32)
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(home),
        "XDG_DATA_HOME": str(data),
        "VLLM_SERVICE_LEDGER__DATA_DIR": str(data),
        "VLLM_SERVICE_SERVER__HOST": "127.0.0.1",
        "VLLM_SERVICE_SERVER__PORT": str(port),
        "VLLM_SERVICE_SERVER__METRICS_PORT": str(metrics_port),
        "VLLM_SERVICE_ADMIN_KEY": admin,
    }
    argv = [
        str(installed / "bin/vllm-service"),
        "serve",
        "--config",
        str(ROOT / "deploy/docker/config.yaml"),
    ]
    if as_root:
        argv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *argv]
    log = (installed.parent / "service.log").open("wb")
    proc = subprocess.Popen(argv, env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx2.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert proc.poll() is None, (installed.parent / "service.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.3)
        chat = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8,
        }
        headers = {"Authorization": f"Bearer {admin}"}
        r = httpx2.post(f"{base}/v1/chat/completions", json=chat, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert httpx2.post(f"{base}/v1/chat/completions", json=chat, timeout=60).status_code == 401
        scrape = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scrape.status_code == 200
        assert "vllm_requests_total" in scrape.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    # Nothing was written into the install; the data dir holds the ledger and the secret.
    assert files_under(installed) == before
    written = files_under(data)
    assert any(name.endswith("ledger.db") for name in written), written
    assert "auth-secret" in {Path(name).name for name in written}, written
    if as_root:
        assert all(p.stat().st_uid == UID for p in data.rglob("*"))
