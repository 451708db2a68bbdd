"""Roles and the permission every route declares: deny by default.

Each endpoint is decorated with ``@requires(Permission.X)``; the app's authorization dependency
reads the declaration of the route a request matched, and refuses a route that has none (a
test enumerates the routes so that none ships without one).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "__vllm_service_permission__"


class Permission(enum.StrEnum):
    #: Anyone, even without a key: the probes /health and /ready.
    OPEN = "open"
    #: Generate, tokenize, list models, read the API docs.
    INFERENCE = "inference"
    #: /metrics, /performance/latency, /cost-comparison.
    READ_METRICS = "read_metrics"
    #: /admin/* and key management.
    ADMIN = "admin"


#: What each role may do.
ROLES: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "user": frozenset({Permission.OPEN, Permission.INFERENCE}),
    "viewer": frozenset({Permission.OPEN, Permission.READ_METRICS}),
}


def requires(permission: Permission) -> Callable[[F], F]:
    """Declare the permission an endpoint needs."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, permission)
        return endpoint

    return mark


def permission_of(endpoint: object) -> Permission | None:
    """The permission an endpoint declared, or None (which is refused)."""
    value = getattr(endpoint, _ATTRIBUTE, None)
    return value if isinstance(value, Permission) else None
