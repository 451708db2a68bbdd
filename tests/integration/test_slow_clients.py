"""Slow and idle clients are timed out and counted; past max_connections one more is refused."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import MODEL, Service, start_service

pytestmark = pytest.mark.integration

#: A bound that only catches a server that never closes: the timeouts under test are 1 s.
NEVER = 20.0


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    config = {
        "server": {"header_timeout": 1, "body_timeout": 1, "max_connections": 6},
        "models": [{"name": MODEL, "options": {"max_model_len": 256, "max_num_seqs": 2}}],
    }
    svc = start_service(tmp_path_factory.mktemp("strict"), config)
    yield svc
    svc.stop()


def connect(service: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=NEVER)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def http_counts(service: Service) -> dict[str, int]:
    """The guard's counters; waits (bounded) while closed connections still count as open."""
    deadline = time.monotonic() + NEVER
    while True:
        r = httpx2.get(f"{service.base_url}/health", timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            counts: dict[str, int] = r.json()["http"]
            return counts
        time.sleep(0.05)


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(strict: Service) -> None:
    before = http_counts(strict)["header_timeouts"]
    with connect(strict) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer
    assert http_counts(strict)["header_timeouts"] == before + 1


def test_trickled_headers_are_timed_out(strict: Service) -> None:
    with connect(strict) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # one header line now and then, never the blank line
            time.sleep(0.4)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 100\r\n\r\n" + b'{"model": "',
        b"Transfer-Encoding: chunked\r\n\r\n" + b'5\r\n{"mod\r\n',
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_that_stops_arriving_is_closed(strict: Service, head: bytes) -> None:
    before = http_counts(strict)["body_timeouts"]
    with connect(strict) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n" + head
        )
        read_until_closed(sock)
    assert http_counts(strict)["body_timeouts"] == before + 1


def test_past_max_connections_one_more_is_refused_at_once(strict: Service) -> None:
    before = http_counts(strict)["refused"]
    idle = [connect(strict) for _ in range(6)]
    try:
        with connect(strict) as extra:
            answer = read_until_closed(extra)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"too_many_connections" in answer
    finally:
        for sock in idle:
            sock.close()
    assert http_counts(strict)["refused"] >= before + 1
    # Once the idle ones are gone, requests are served as before.
    reply = strict.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
