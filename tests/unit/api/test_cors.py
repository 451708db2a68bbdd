"""CORS is off by default and answers only the configured origins when on."""

from starlette.testclient import TestClient

from vllm_service.api.app import create_app
from vllm_service.config import load_settings

PREFLIGHT = {
    "Origin": "https://app.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


def test_cors_off_by_default() -> None:
    # No `with`: the lifespan (model loading) is not needed to answer a preflight.
    client = TestClient(create_app(load_settings()))
    r = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_configured_origin_only() -> None:
    settings = load_settings(server={"cors_origins": ["https://app.example.com"]})
    client = TestClient(create_app(settings))
    r = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    other = client.options(
        "/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"}
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
