"""Authorization of every request: the permission its route declared, and the caller's key.

One app-wide dependency runs for every route. It reads the permission the matched endpoint
declared (``@requires``); a route without one is refused, whatever the configuration. With
auth off every caller is ANONYMOUS (all permissions); with it on, the key from
``Authorization: Bearer`` must belong to a role holding the permission. Failures are OpenAI's
401 and 403 bodies; a key is never echoed, logged or counted in metrics.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute

from vllm_service.accounting.cost import PriceTable
from vllm_service.accounting.ledger import Ledger
from vllm_service.api.errors import APIError
from vllm_service.api.observe import record_of
from vllm_service.auth import (
    ANONYMOUS,
    ROLES,
    KeyStore,
    Permission,
    Principal,
    permission_of,
    requires,
)
from vllm_service.auth.budgets import Budgets
from vllm_service.auth.keys import KEY_PREFIX, load_secret
from vllm_service.auth.limits import (
    LimitStore,
    LimitsUnavailable,
    MemoryLimits,
    RateLimiter,
    RedisLimits,
)
from vllm_service.auth.tokens import TokenConfigError, TokenVerifier
from vllm_service.config import ConfigError, Settings
from vllm_service.storage import Database, DatabaseError

#: Longest Authorization value looked at (a key is 46 characters).
MAX_AUTHORIZATION = 512


@dataclass(frozen=True, slots=True)
class AuthGate:
    """What authorization needs: the keys, which permissions are public, the key limits."""

    keys: KeyStore
    open_probes: bool = True
    public_metrics: bool = False
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(MemoryLimits()))
    tokens: TokenVerifier | None = None
    lockout: Lockout = field(default_factory=lambda: Lockout(30))
    budgets: Budgets | None = None


class Lockout:
    """Failed authentications per client address and minute; past the limit, the address is
    refused before any key is looked up, until the minute ends."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._window = -1
        self._failures: dict[str, int] = {}

    def _roll(self) -> None:
        window = int(self._clock() // 60)
        if window != self._window:
            self._window, self._failures = window, {}

    def locked(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None."""
        self._roll()
        if self._failures.get(address, 0) < self.limit:
            return None
        return 60 - self._clock() % 60

    def failed(self, address: str) -> None:
        self._roll()
        if len(self._failures) < 100_000:
            self._failures[address] = self._failures.get(address, 0) + 1


async def admit(request: Request, prompt_chars: int, max_tokens: int) -> dict[str, str]:
    """Count an inference request against its key's limits; its rate-limit headers, or 429
    (503 when the shared store is down and the policy is to fail closed)."""
    gate: AuthGate | None = request.app.state.auth
    principal = principal_of(request)
    if gate is None or not principal.limits:
        return {}
    # Tokens are reserved now (the prompt at ~4 characters a token, plus max_tokens) and
    # reconciled with the real usage when the answer ends.
    reserved = math.ceil(prompt_chars / 4) + max_tokens
    await _check_budget(request, gate, principal, prompt_chars, max_tokens)
    limiter = gate.limiter
    window = limiter.window()
    try:
        verdict = await limiter.admit(principal.key_id, principal.limits, reserved)
    except LimitsUnavailable:
        raise APIError(
            503, "Rate limits cannot be checked right now.", code="limits_down"
        ) from None
    if not verdict.allowed:
        what = {"parallel": "requests at once"}.get(verdict.refused or "", verdict.refused)
        raise APIError(
            429,
            f"Rate limit reached for {what} on this key. Retry after {verdict.retry_after:g} s.",
            type="requests" if verdict.refused != "tokens" else "tokens",
            code="rate_limit_exceeded",
            headers={**verdict.headers, "Retry-After": str(math.ceil(verdict.retry_after))},
        )
    rec = record_of(request)
    if rec is not None and verdict.counted:

        async def settle() -> None:
            used = rec.prompt_tokens + rec.completion_tokens
            await limiter.settle(principal.key_id, window, reserved, used)

        rec.finishers.append(settle)
    return verdict.headers


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    if not value or len(value) > MAX_AUTHORIZATION:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def principal_of(request: Request) -> Principal:
    """The caller of a request that passed authorization."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def on_metrics_port(request: Request) -> bool:
    """Whether the request came in on server.metrics_port (where only /metrics is routed)."""
    port: int | None = request.app.state.metrics_port
    server = request.scope.get("server")
    return port is not None and server is not None and server[1] == port


async def authorize(request: Request) -> None:
    """Admit the request to its route, or raise 401 / 403."""
    permission = permission_of(request.scope.get("endpoint"))
    if permission is None:
        raise APIError(403, "This route is not open to anyone.", code="no_permission")
    gate: AuthGate | None = request.app.state.auth
    if gate is None:
        request.state.principal = ANONYMOUS
        return
    if (permission is Permission.OPEN and gate.open_probes) or (
        permission is Permission.READ_METRICS and (gate.public_metrics or on_metrics_port(request))
    ):
        return
    rec = record_of(request)
    address = (rec.client if rec is not None else None) or "unknown"
    wait = gate.lockout.locked(address)
    if wait is not None:
        raise APIError(
            429,
            "Too many failed authentications from this address. Retry later.",
            code="too_many_auth_failures",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    key = _bearer(request)
    if key is None:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            type="invalid_request_error",  # what OpenAI answers a 401 with
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if gate.tokens is not None and key.count(".") == 2 and not key.startswith(KEY_PREFIX):
        principal = await gate.tokens.verify_async(key)
    else:
        principal = await gate.keys.lookup(key)
    if principal is None:
        gate.lockout.failed(address)
        raise APIError(
            401,
            "Incorrect API key provided (unknown, revoked or expired).",
            type="invalid_request_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if permission not in ROLES.get(principal.role, frozenset()):
        raise APIError(
            403,
            f"Your key's role ({principal.role}) may not call this route.",
            type="permission_error",
            code="insufficient_permissions",
        )
    request.state.principal = principal
    if rec is not None:
        rec.key_id = principal.key_id


async def _check_budget(
    request: Request, gate: AuthGate, principal: Principal, prompt_chars: int, max_tokens: int
) -> None:
    """429 insufficient_quota when the key's spending this period, plus what its requests in
    flight reserved, plus this one's estimate, passes its budget."""
    limits, budgets = principal.limits, gate.budgets
    if limits.budget_usd is None or budgets is None:
        return
    key_id = principal.key_id
    ledger: Ledger | None = request.app.state.ledger
    prompt = math.ceil(prompt_chars / 4)
    estimate = ledger.local_cost(prompt + max_tokens) if ledger is not None else None
    if estimate is None:
        prices: PriceTable = request.app.state.prices
        estimate = prices.on(datetime.now(UTC).date())[0].cost(prompt, max_tokens)
    spent = await budgets.spent(key_id, limits.budget_period or "month")
    if spent + budgets.reserved.get(key_id, 0.0) + estimate > limits.budget_usd:
        raise APIError(
            429,
            f"You exceeded this key's budget (${limits.budget_usd:g} a "
            f"{limits.budget_period or 'month'}).",
            type="insufficient_quota",
            code="insufficient_quota",
        )
    budgets.reserve(key_id, estimate)
    rec = record_of(request)
    if rec is not None:
        reserved = estimate

        async def release() -> None:
            budgets.release(key_id, reserved)

        rec.finishers.append(release)


def build_gate(settings: Settings, db: Database | None = None) -> AuthGate | None:
    """The gate auth.enabled asks for (None when off), on ``db`` (the ledger's, when it runs:
    one pool) or its own; a static key whose variable is unset is a configuration error."""
    auth = settings.auth
    if not auth.enabled:
        return None
    explicit = auth.secret.get_secret_value() if auth.secret is not None else None
    try:
        secret = load_secret(explicit, settings.ledger.data_dir / "auth-secret")
        db = db or Database(settings.ledger.database_url())
    except OSError as exc:
        raise ConfigError(f"auth.secret: cannot keep the server secret: {exc}") from None
    except DatabaseError as exc:
        raise ConfigError(f"ledger.url: {exc}") from None
    static = {}
    for entry in auth.static_keys:
        key = os.environ.get(entry.key_env)
        if not key:
            raise ConfigError(f"auth.static_keys: {entry.key_env} is not set ({entry.name})")
        models = frozenset(entry.models)
        static[key] = Principal(f"static:{entry.name}", entry.name, entry.role, models)
    store: LimitStore = MemoryLimits()
    if auth.limits_backend == "redis":
        store = RedisLimits(auth.redis_url)
    limiter = RateLimiter(store, fail_open=auth.limits_fail_open)
    keys = KeyStore(db, secret, static)
    lockout = Lockout(auth.max_failures_per_minute)
    budgets = Budgets(db, settings.cost.hosted[0].name)
    return AuthGate(
        keys, auth.open_probes, auth.public_metrics, limiter, _tokens(settings), lockout, budgets
    )


def _tokens(settings: Settings) -> TokenVerifier | None:
    config = settings.auth.jwt
    if not config.enabled:
        return None
    try:
        return TokenVerifier(
            algorithms=config.algorithms,
            issuer=config.issuer,
            audience=config.audience,
            secret=config.secret.get_secret_value() if config.secret is not None else None,
            public_key_file=config.public_key_file,
            jwks_file=config.jwks_file,
            jwks_url=config.jwks_url,
            role_claim=config.role_claim,
            models_claim=config.models_claim,
            leeway=config.leeway,
        )
    except (TokenConfigError, OSError, ValueError) as exc:
        raise ConfigError(f"auth.jwt: {exc}") from None


def open_docs(app: FastAPI) -> None:
    """The API docs (served with auth off) need the inference permission."""
    for route in app.routes:
        if not isinstance(route, APIRoute) or permission_of(route.endpoint) is not None:
            continue
        if route.path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            requires(Permission.INFERENCE)(route.endpoint)
