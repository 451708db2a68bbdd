"""Deployments: the engines that serve a model, each with its breaker, and their attempts."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from opentelemetry import trace

from vllm_service.config import ModelConfig
from vllm_service.engine import Engine, EngineUnavailableError, InvalidRequestError
from vllm_service.manager.breaker import CircuitBreaker, Permit
from vllm_service.manager.residency import Residency


@dataclass(eq=False)
class Deployment:
    """One engine serving a model, with its breaker and its counters."""

    id: str
    config: ModelConfig
    engine: Engine
    breaker: CircuitBreaker
    in_flight: int = 0
    #: Outcomes of attempts: success, failure, overloaded, client_error, cancelled, rejected,
    #: unavailable (its model could not be loaded in time).
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Its place in memory, for an engine that holds its model here (None: an upstream).
    residency: Residency | None = None


@dataclass(eq=False)
class ServedModel:
    """A model as clients name it, and the deployments that serve it."""

    config: ModelConfig
    deployments: list[Deployment]

    @property
    def engine(self) -> Engine:
        """The first deployment's engine (for listings)."""
        return self.deployments[0].engine


class Attempt:
    """One deployment's attempt at a sequence, from its permit to its outcome."""

    def __init__(self, deployment: Deployment, permit: Permit, span: trace.Span) -> None:
        self.deployment = deployment
        self.permit = permit
        self.span = span

    def settle(self, exc: BaseException | None) -> str:
        """Report the attempt's outcome to the breaker, the counters and the span."""
        outcome = "success" if exc is None else verdict(self.permit, exc)
        if exc is None:
            self.permit.success()
        self.deployment.outcomes[outcome] += 1
        self.deployment.in_flight -= 1
        if self.deployment.residency is not None:
            self.deployment.residency.release()
        self.span.set_attribute("vllm.outcome", outcome)
        self.span.end()
        return outcome


def verdict(permit: Permit, exc: BaseException) -> str:
    """Report a failed or abandoned attempt to its breaker; returns the outcome's name."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        permit.release()
        return "cancelled"
    if isinstance(exc, EngineUnavailableError) and exc.overloaded:
        permit.release()
        return "overloaded"
    if isinstance(exc, InvalidRequestError):
        permit.success()  # the deployment answered; the client was wrong
        return "client_error"
    # Unreachable, timed out, 5xx, a broken stream: the deployment is to blame.
    permit.failure()
    return "failure"
