"""A stream's events that are ready together leave in one write: fewer syscalls for the
service, and fewer reads for a proxy (or another vllm-service) in front of it."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.conftest import MODEL
from vllm_service.api.app import create_app
from vllm_service.config import load_settings


class BodyWrites:
    """ASGI wrapper that keeps every non-empty response body message the app sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.writes: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def keep(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.writes.append(message["body"])
            await send(message)

        await self.app(scope, receive, keep)


def test_ready_events_share_a_write() -> None:
    settings = load_settings(
        None,
        cache={"enabled": False},
        models=[{"name": MODEL, "options": {"max_model_len": 256, "max_num_seqs": 1}}],
    )
    app = BodyWrites(create_app(settings))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to twenty."}],
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with TestClient(app) as client:
        while client.get("/ready").status_code != 200:
            time.sleep(0.1)
        for path, extra in (
            ("/v1/chat/completions", {}),
            ("/v1/completions", {"prompt": "One, two, three,", "messages": None}),
        ):
            app.writes.clear()
            payload = {k: v for k, v in {**body, **extra}.items() if v is not None}
            r = client.post(path, json=payload)
            assert r.status_code == 200
            events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            # Several events, fewer writes: the first write holds the first tokens (and, for
            # chat, the role chunk before them); the last holds finish, usage and [DONE].
            assert len(app.writes) < len(events)
            assert b"".join(app.writes).decode() == r.text
            first, last = app.writes[0].decode(), app.writes[-1].decode()
            if path == "/v1/chat/completions":
                assert '"role":"assistant"' in first.replace(" ", "")
                assert first.count("data: ") == 2
            assert '"finish_reason":"length"' in last.replace(" ", "")
            assert '"usage":{' in last.replace(" ", "")
            assert last.endswith("data: [DONE]\n\n")
