"""Who may call what: API keys, JWTs, public routes, per-key limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from vllm_service.config.models import _Strict


class StaticKeyConfig(_Strict):
    """A key given by an environment variable (small setups; not stored in the database)."""

    name: str = Field(min_length=1, description="Shown in logs, the ledger and the audit trail.")
    role: Literal["admin", "user", "viewer"] = "user"
    key_env: str = Field(min_length=1, description="The environment variable holding the key.")
    models: list[str] = Field(default_factory=list, description="Models it may use; [] = all.")


class JwtConfig(_Strict):
    """Bearer JWTs from an identity provider (besides API keys)."""

    enabled: bool = False
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256"], description="Accepted algorithms (never 'none')."
    )
    issuer: str = Field(default="", description="Required 'iss'.")
    audience: str = Field(default="", description="Required 'aud'.")
    secret: SecretStr | None = Field(
        default=None, description="HS*: the shared secret (env VLLM_SERVICE_AUTH__JWT__SECRET)."
    )
    public_key_file: Path | None = Field(default=None, description="RS*/ES*: a PEM public key.")
    jwks_file: Path | None = Field(default=None, description="RS*/ES*: a JWKS document.")
    jwks_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="RS*/ES*: where the provider publishes its JWKS (fetched, cached 5 min).",
    )
    role_claim: str = Field(default="role", description="The claim naming the role.")
    models_claim: str = Field(default="models", description="The claim listing allowed models.")
    leeway: float = Field(default=0.0, ge=0, description="Seconds of clock skew tolerated.")

    @model_validator(mode="after")
    def _checkable(self) -> JwtConfig:
        if self.enabled and not (self.issuer and self.audience):
            raise ValueError("auth.jwt needs issuer and audience")
        return self


class AuthConfig(_Strict):
    """Who may call what: API keys, and a permission on every route."""

    enabled: bool = Field(
        default=False,
        description="Require a key (Authorization: Bearer ...) on every route but the probes. "
        "Off for the single-user laptop case; then serve refuses a non-loopback host unless "
        "allow_unauthenticated_remote is true.",
    )
    secret: SecretStr | None = Field(
        default=None,
        description="The server secret keys are hashed with (env VLLM_SERVICE_AUTH__SECRET); "
        "unset: one made at first use in <ledger.data_dir>/auth-secret (mode 0600).",
    )
    static_keys: list[StaticKeyConfig] = Field(default_factory=list)
    jwt: JwtConfig = Field(default_factory=JwtConfig)
    open_probes: bool = Field(default=True, description="/health and /ready need no key.")
    public_metrics: bool = Field(
        default=False, description="/metrics, /performance/latency and /cost-comparison need none."
    )
    allow_unauthenticated_remote: bool = Field(
        default=False, description="Serve a non-loopback host with auth off (you were warned)."
    )
    max_failures_per_minute: int = Field(
        default=30,
        ge=1,
        description="Failed keys from one client address in a minute before that address gets "
        "429 for the rest of the minute (guessing keys costs the guesser, not the service).",
    )
    limits_backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where per-key limits count: this process, or Redis (one limit for every "
        "replica).",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="limits_backend redis.")
    limits_fail_open: bool = Field(
        default=True,
        description="Redis down: serve without limits (true; /health says degraded) or refuse "
        "with 503 (false).",
    )


class AuditConfig(_Strict):
    """The audit trail: admin actions and requests (always), content (only when asked)."""

    log_content: bool = Field(
        default=False,
        description="Also keep each request's prompt and answer, with e-mail addresses, card "
        "numbers, keys and tokens, and phone numbers redacted.",
    )
    retention_days: float = Field(
        default=400, gt=0, description="Admin actions and content older than this are purged."
    )
