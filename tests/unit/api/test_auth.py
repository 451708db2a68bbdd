"""Authorization in process (the real app over scripted engines, keys in SQLite): every route
declares a permission, anonymous callers get nothing but the probes, roles and model
restrictions hold, and no path or header trick gets around them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from fastapi.routing import APIRoute

from tests.fakes import FakeEngines
from vllm_service.api.app import create_app
from vllm_service.auth import permission_of
from vllm_service.config import load_settings

T = TypeVar("T")
MODEL, OTHER = "m", "other"
STATIC_KEY = "vs-static-key-for-tests-0000000000000000000000"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Client:
    """The app with auth on, and a key per role (plus one for MODEL only)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **auth: Any) -> None:
        monkeypatch.setenv("TEST_STATIC_KEY", STATIC_KEY)
        settings = load_settings(
            None,
            models=[{"name": MODEL}, {"name": OTHER}],
            cache={"enabled": False},
            ledger={"data_dir": str(tmp_path)},
            auth={
                "enabled": True,
                "static_keys": [{"name": "ci", "role": "user", "key_env": "TEST_STATIC_KEY"}],
                **auth,
            },
        )
        self.app = create_app(settings, engine_factory=FakeEngines())
        self.keys: dict[str, str] = {}

        async def setup() -> None:
            store = self.app.state.auth.keys
            await store.db.upgrade()
            for role in ("admin", "user", "viewer"):
                self.keys[role] = (await store.create(role, role, [])).key
            self.keys["only_m"] = (await store.create("only-m", "user", [MODEL])).key

        run(setup())

    def call(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> httpx2.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["authorization"] = f"Bearer {key}"

        async def go() -> httpx2.Response:
            transport = httpx2.ASGITransport(app=self.app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path, headers=headers, **kwargs)

        return run(go())


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Client:
    return Client(tmp_path, monkeypatch)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def api_routes(app: Any) -> list[APIRoute]:
    routes: list[APIRoute] = []
    for rt in app.router.routes:
        inner = getattr(rt, "original_router", None)
        routes.extend(r for r in (inner.routes if inner else [rt]) if isinstance(r, APIRoute))
    return routes


@pytest.mark.parametrize("auth", [True, False])
def test_every_route_declares_a_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: bool
) -> None:
    if auth:
        app = Client(tmp_path, monkeypatch).app
    else:
        app = create_app(load_settings(None, cache={"enabled": False}), FakeEngines())
    routes = api_routes(app)
    assert len(routes) >= 12
    undeclared = [r.path for r in routes if permission_of(r.endpoint) is None]
    assert undeclared == []


def test_anonymous_callers_get_only_the_probes(client: Client) -> None:
    open_paths = set()
    for route in api_routes(client.app):
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods:
            r = client.call(method, path, json={})
            if r.status_code == 401:
                assert r.json()["error"]["code"] == "missing_api_key"
                assert r.headers["www-authenticate"] == "Bearer"
            else:
                open_paths.add(route.path)
    assert open_paths == {"/health", "/ready"}
    assert client.call("GET", "/docs").status_code == 404  # no docs pages with auth on
    assert client.call("GET", "/openapi.json").status_code == 401
    assert client.call("GET", "/openapi.json", client.keys["user"]).status_code == 200


def test_roles_hold(client: Client) -> None:
    keys = client.keys
    assert client.call("POST", "/v1/chat/completions", keys["user"], json=CHAT).status_code == 200
    assert client.call("POST", "/v1/chat/completions", STATIC_KEY, json=CHAT).status_code == 200
    viewer = client.call("POST", "/v1/chat/completions", keys["viewer"], json=CHAT)
    assert viewer.status_code == 403
    assert viewer.json()["error"]["code"] == "insufficient_permissions"
    assert client.call("GET", "/metrics", keys["viewer"]).status_code == 200
    assert client.call("GET", "/metrics", keys["user"]).status_code == 403
    assert client.call("DELETE", "/admin/cache", keys["user"]).status_code == 403
    assert client.call("DELETE", "/admin/cache", keys["viewer"]).status_code == 403
    assert client.call("DELETE", "/admin/cache", keys["admin"]).status_code == 200


def test_a_key_for_one_model_cannot_see_another(client: Client) -> None:
    key = client.keys["only_m"]
    other = client.call("POST", "/v1/chat/completions", key, json={**CHAT, "model": OTHER})
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "model_not_found"
    listed = client.call("GET", "/v1/models", key).json()["data"]
    assert {m["id"] for m in listed} == {MODEL}
    assert client.call("GET", f"/v1/models/{OTHER}", key).status_code == 404
    assert client.call("POST", "/v1/chat/completions", key, json=CHAT).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer vs-wrong",
        "Bearer ' OR 1=1 --",
        "Bearer " + "x" * 65536,
        "bearer vs-\u00e9\u00e8".encode(),  # not ASCII: as a client may send raw bytes
    ],
)
def test_bad_authorization_is_401_and_leaks_nothing(
    client: Client, authorization: str | bytes
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    r = client.call("POST", "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 401
    body = r.json()["error"]
    assert body["type"] == "invalid_request_error"
    assert "wrong" not in body["message"]
    assert "OR 1=1" not in body["message"]
    assert client.call("GET", "/health").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../admin/cache",
        "//admin/cache",
        "/admin/cache/",
        "/admin//cache",
        "/admin%2Fcache",
        "/ADMIN/cache",
        "/admin/cache.",
        "/v1/%2e%2e/admin/cache",
    ],
)
def test_path_tricks_never_reach_admin_routes(client: Client, path: str) -> None:
    r = client.call("DELETE", path, client.keys["user"])
    assert r.status_code in (403, 404, 405)
    r = client.call("DELETE", path, headers={"host": "localhost:8090/#@evil"})
    assert r.status_code in (400, 401, 404, 405)


def test_a_key_over_its_limit_gets_429_with_openai_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(tmp_path, monkeypatch)

    async def limited() -> str:
        store = client.app.state.auth.keys
        return (await store.create("limited", "user", [], rpm=2)).key

    key = run(limited())
    # One minute for the whole test (windows are whole minutes of the wall clock).
    client.app.state.auth.limiter._clock = lambda: 6000.0
    ok = [client.call("POST", "/v1/chat/completions", key, json=CHAT) for _ in range(2)]
    assert [r.status_code for r in ok] == [200, 200]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "2"
    assert ok[1].headers["x-ratelimit-remaining-requests"] == "0"
    over = client.call("POST", "/v1/chat/completions", key, json=CHAT)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(over.headers["retry-after"]) >= 1
    assert over.headers["x-ratelimit-remaining-requests"] == "0"
    # Other keys are not limited by it.
    assert (
        client.call("POST", "/v1/chat/completions", client.keys["user"], json=CHAT).status_code
        == 200
    )


def test_jwt_bearer_tokens_carry_their_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import jwt

    secret = "a-shared-secret-of-32-bytes-or-more!"
    config = {"enabled": True, "algorithms": ["HS256"], "issuer": "idp", "audience": "svc"}
    client = Client(tmp_path, monkeypatch, jwt={**config, "secret": secret})

    def token(role: str, **extra: Any) -> str:
        now = int(time.time())
        body = {"iss": "idp", "aud": "svc", "sub": "bob", "exp": now + 60, "role": role}
        return jwt.encode({**body, **extra}, secret, algorithm="HS256")

    ok = client.call("POST", "/v1/chat/completions", token("user"), json=CHAT)
    assert ok.status_code == 200
    assert (
        client.call("POST", "/v1/chat/completions", token("viewer"), json=CHAT).status_code == 403
    )
    expired = token("user", exp=int(time.time()) - 5)
    assert client.call("POST", "/v1/chat/completions", expired, json=CHAT).status_code == 401
    only_other = token("user", models=[OTHER])
    assert client.call("POST", "/v1/chat/completions", only_other, json=CHAT).status_code == 404


def test_guessing_keys_locks_the_address_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(tmp_path, monkeypatch, max_failures_per_minute=3)
    client.app.state.auth.lockout._clock = lambda: 6030.0  # mid-minute, for the whole test
    for i in range(3):
        guess = client.call("GET", "/v1/models", f"vs-guess-{i}")
        assert guess.status_code == 401
    locked = client.call("GET", "/v1/models", client.keys["user"])  # even a good key, now
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_auth_failures"
    assert locked.headers["retry-after"] == "30"
    assert client.call("GET", "/health").status_code == 200  # the probes stay open
    client.app.state.auth.lockout._clock = lambda: 6061.0  # the next minute
    assert client.call("GET", "/v1/models", client.keys["user"]).status_code == 200


def test_a_request_that_would_pass_the_budget_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(tmp_path, monkeypatch)

    async def budgeted() -> str:
        store = client.app.state.auth.keys
        return (await store.create("b", "user", [], budget_usd=1e-4, budget_period="day")).key

    key = run(budgeted())
    # 10 completion tokens at gpt-4o-mini's $0.60 per million: well within $0.0001.
    small = client.call("POST", "/v1/chat/completions", key, json={**CHAT, "max_tokens": 10})
    assert small.status_code == 200
    # 1000 would cost $0.0006 at list price: more than the whole budget.
    big = client.call("POST", "/v1/chat/completions", key, json={**CHAT, "max_tokens": 1000})
    assert big.status_code == 429
    assert big.json()["error"]["code"] == "insufficient_quota"
    assert big.json()["error"]["type"] == "insufficient_quota"
