"""JWT bearer tokens: what a valid token carries, and the ways a forged or stale one is
refused (alg none, algorithm confusion, expired, not yet valid, wrong issuer or audience)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vllm_service.auth.tokens import TokenConfigError, TokenVerifier

ISS, AUD = "https://idp.test/", "vllm-service"
SECRET = "a-shared-secret-of-32-bytes-or-more!"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300, "role": "user", **extra}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_verifier(tmp_path: Path, key: rsa.RSAPrivateKey) -> tuple[TokenVerifier, bytes]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(public)
    verifier = TokenVerifier(algorithms=["RS256"], issuer=ISS, audience=AUD, public_key_file=path)
    return verifier, public


def test_a_valid_rs256_token_gives_its_subject_role_and_models(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier, _ = rsa_verifier(tmp_path, rsa_key)
    token = jwt.encode(claims(models=["m"], role="viewer"), rsa_key, algorithm="RS256")
    principal = verifier.verify(token)
    assert principal is not None
    assert (principal.name, principal.role, principal.models) == ("alice", "viewer", {"m"})
    assert principal.key_id == "jwt:alice"


@pytest.mark.parametrize(
    "case",
    ["alg_none", "confusion", "expired", "not_yet_valid", "wrong_aud", "wrong_iss", "bad_role"],
)
def test_forged_or_stale_tokens_are_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, case: str
) -> None:
    verifier, public = rsa_verifier(tmp_path, rsa_key)
    now = int(time.time())
    tokens = {
        "alg_none": lambda: jwt.encode(claims(), None, algorithm="none"),
        # An HS256 token whose HMAC key is the RSA public key, as an attacker could make.
        "confusion": lambda: _hs256_with(public, claims()),
        "expired": lambda: jwt.encode(claims(exp=now - 10), rsa_key, algorithm="RS256"),
        "not_yet_valid": lambda: jwt.encode(claims(nbf=now + 300), rsa_key, algorithm="RS256"),
        "wrong_aud": lambda: jwt.encode(claims(aud="other"), rsa_key, algorithm="RS256"),
        "wrong_iss": lambda: jwt.encode(claims(iss="https://evil/"), rsa_key, algorithm="RS256"),
        "bad_role": lambda: jwt.encode(claims(role="root"), rsa_key, algorithm="RS256"),
    }
    assert verifier.verify(tokens[case]()) is None


def _hs256_with(secret: bytes, payload: dict[str, Any]) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret, head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + b64(signature)).decode()


def test_hs256_with_a_shared_secret_and_the_configuration_checks(tmp_path: Path) -> None:
    verifier = TokenVerifier(algorithms=["HS256"], issuer=ISS, audience=AUD, secret=SECRET)
    assert verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")) is not None
    assert verifier.verify(jwt.encode(claims(), "a-guess-" * 4, algorithm="HS256")) is None
    with pytest.raises(TokenConfigError, match="do not mix"):
        TokenVerifier(algorithms=["HS256", "RS256"], issuer=ISS, audience=AUD, secret=SECRET)
    with pytest.raises(TokenConfigError, match="need"):
        TokenVerifier(algorithms=["RS256"], issuer=ISS, audience=AUD)
    with pytest.raises(TokenConfigError):
        TokenVerifier(algorithms=["none"], issuer=ISS, audience=AUD)


def test_keys_from_a_jwks_url(rsa_key: rsa.RSAPrivateKey) -> None:
    """A provider's JWKS served over HTTP on loopback; the key is found by the token's kid."""
    import asyncio
    import json

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.conftest import free_port, serve_in_thread

    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}

    async def keys(_: Any) -> JSONResponse:
        return JSONResponse(jwks)

    port = free_port()
    with serve_in_thread(Starlette(routes=[Route("/jwks", keys)]), port):
        verifier = TokenVerifier(
            algorithms=["RS256"],
            issuer=ISS,
            audience=AUD,
            jwks_url=f"http://127.0.0.1:{port}/jwks",
        )
        good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k2"})
        assert asyncio.run(verifier.verify_async(good)) is not None
        assert asyncio.run(verifier.verify_async(unknown)) is None
