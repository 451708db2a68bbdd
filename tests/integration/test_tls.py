"""HTTPS with a certificate made in the test: TLS 1.3 by default, TLS 1.2 refused unless
allowed."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port, service_command


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def client_context(certfile: Path, tls12_only: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certfile))
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


@pytest.mark.parametrize("min_version", ["1.3", "1.2"])
def test_https_with_the_oldest_version_configured(tmp_path: Path, min_version: str) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    port = free_port()
    config = {
        "server": {
            "tls": {"certfile": str(certfile), "keyfile": str(keyfile), "min_version": min_version}
        },
        "cache": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_SERVICE_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen(
        [*service_command(), "serve", "--port", str(port), "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"https://127.0.0.1:{port}/health"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx2.get(url, verify=client_context(certfile), timeout=2)
                break
            except httpx2.TransportError:
                assert process.poll() is None, (tmp_path / "service.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200
        old_client = client_context(certfile, tls12_only=True)
        if min_version == "1.3":
            with pytest.raises(httpx2.TransportError):
                httpx2.get(url, verify=old_client, timeout=5)
        else:
            assert httpx2.get(url, verify=old_client, timeout=5).status_code == 200
        with pytest.raises(httpx2.TransportError):
            httpx2.get(f"http://127.0.0.1:{port}/health", timeout=5)  # no plain HTTP
    finally:
        process.terminate()
        process.wait(timeout=30)
