"""JWT bearer tokens (PyJWT): HS256 with a shared secret, or RS256/ES256 with a public key or a
JWKS file. Issuer, audience and expiry are required and checked; only the configured
algorithms are accepted, and one verifier never mixes a shared secret with public keys, so
neither ``alg: none`` nor an HS256 token signed with the public key gets through."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt

from vllm_service.auth.keys import Principal
from vllm_service.auth.roles import ROLES

SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "PS256"})


class TokenConfigError(ValueError):
    """The JWT settings cannot verify anything (the message says what is missing)."""


class TokenVerifier:
    """Turns a valid token into a Principal: subject, role and models from its claims."""

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        issuer: str,
        audience: str,
        secret: str | None = None,
        public_key_file: Path | None = None,
        jwks_file: Path | None = None,
        jwks_url: str | None = None,
        role_claim: str = "role",
        models_claim: str = "models",
        leeway: float = 0.0,
    ) -> None:
        algs = frozenset(algorithms)
        if not algs or not algs <= SYMMETRIC | ASYMMETRIC:
            raise TokenConfigError(f"algorithms must be among {sorted(SYMMETRIC | ASYMMETRIC)}")
        if algs & SYMMETRIC and algs & ASYMMETRIC:
            raise TokenConfigError("do not mix HS* with RS*/ES* algorithms (algorithm confusion)")
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        self._key: Any = None
        if algs <= SYMMETRIC:
            if not secret:
                raise TokenConfigError("HS* algorithms need auth.jwt.secret")
            self._key = secret
        elif jwks_file is not None:
            self._jwks = jwt.PyJWKSet.from_dict(json.loads(jwks_file.read_text()))
        elif jwks_url is not None:
            # Keys are fetched when a token names one not seen yet, and cached (5 minutes).
            self._jwks_client = jwt.PyJWKClient(jwks_url, lifespan=300, timeout=5)
        elif public_key_file is not None:
            self._key = public_key_file.read_text()
        else:
            raise TokenConfigError("RS*/ES* algorithms need public_key_file, jwks_file or jwks_url")
        self.algorithms = sorted(algs)
        self.issuer, self.audience = issuer, audience
        self.role_claim, self.models_claim = role_claim, models_claim
        self.leeway = leeway

    async def verify_async(self, token: str) -> Principal | None:
        """As verify; a JWKS URL is fetched off the event loop."""
        if self._jwks_client is None:
            return self.verify(token)
        try:
            found = await asyncio.to_thread(self._jwks_client.get_signing_key_from_jwt, token)
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        return self.verify(token, found.key)

    def verify(self, token: str, key: Any = None) -> Principal | None:
        """The principal of a valid token; None for anything else."""
        try:
            key = key if key is not None else self._key
            if self._jwks is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                key = next((k.key for k in self._jwks.keys if k.key_id == kid), None)
                if key is None:
                    return None
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        role = claims.get(self.role_claim)
        if not isinstance(role, str) or role not in ROLES:
            return None
        models = claims.get(self.models_claim) or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            return None
        subject = str(claims["sub"])[:48]
        return Principal(f"jwt:{subject}", subject, role, frozenset(models))
