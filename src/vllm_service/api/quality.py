"""Quality in the API: A/B routing of a public model name, handing finished answers to the
shadow scorer and the A/B arms (after the response, never on its path), and the reports
``GET /quality`` and ``GET /quality/ab/{name}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from vllm_service.accounting.ledger import Ledger
from vllm_service.api.auth import principal_of
from vllm_service.api.choices import ChoiceStreams
from vllm_service.api.errors import APIError
from vllm_service.api.observe import record_of
from vllm_service.api.responses import ErrorResponse
from vllm_service.auth import Permission, requires
from vllm_service.config import ConfigError, Settings
from vllm_service.engine import GenerationRequest
from vllm_service.manager import CACHE_DEPLOYMENT, ModelManager, ServedModel
from vllm_service.quality.ab import AbTests, Assignment
from vllm_service.quality.embeddings import build_embed
from vllm_service.quality.evaluator import Evaluator, QualityScore
from vllm_service.quality.monitor import QualityMonitor, Rolling
from vllm_service.quality.shadow import Shadow, ShadowJob

router = APIRouter(tags=["quality"])


@dataclass
class QualityState:
    """What the app holds for quality: the monitor always (its series exist, empty, with
    the shadow off), the shadow and the A/B tests when configured."""

    monitor: QualityMonitor
    shadow: Shadow | None = None
    ab: AbTests | None = None


def build_quality(settings: Settings, manager: ModelManager, ledger: Ledger | None) -> QualityState:
    """The shadow scorer and its monitor (quality.shadow.enabled), and the A/B tests."""
    config = settings.quality
    state = QualityState(QualityMonitor(config.gate, manager.hold))
    if config.shadow.enabled:
        try:
            embed = build_embed(config)
        except RuntimeError as exc:
            raise ConfigError(f"quality.embedder: {exc}") from None
        evaluator = Evaluator(config, embed)
        state.shadow = Shadow(config.shadow, manager, evaluator, state.monitor, ledger=ledger)
    if settings.ab_tests:
        state.ab = AbTests(settings.ab_tests)
    return state


def quality_of(request: Request) -> QualityState:
    state: QualityState = request.app.state.quality
    return state


def ab_route(request: Request, model: str, user: str | None) -> str:
    """The model to serve for a public name: an A/B test's arm for this caller, else itself."""
    tests = quality_of(request).ab
    if tests is None or model not in tests.tests:
        return model
    principal = principal_of(request)
    rec = record_of(request)
    identity = principal.key_id
    if identity == "anonymous":
        identity = f"user:{user}" if user else f"addr:{rec.client if rec else ''}"
    assignment = tests.route(model, identity)
    assert assignment is not None
    request.state.ab = assignment
    return assignment.arm.model


def watch(
    request: Request,
    manager: ModelManager,
    served: ServedModel,
    requests: list[GenerationRequest],
    streams: ChoiceStreams,
) -> None:
    """After the response: record the A/B arm's latency and cost, and offer the answer
    (choice 0) to the shadow scorer when it is sampled."""
    state = quality_of(request)
    assignment: Assignment | None = getattr(request.state, "ab", None)
    rec = record_of(request)
    if rec is None or (state.shadow is None and assignment is None):
        return
    name = served.config.name
    shadow = state.shadow if state.shadow is not None and state.shadow.sampled(name) else None
    if shadow is not None:
        streams.keep_text()
    route = streams.routes[0]
    ledger: Ledger | None = request.app.state.ledger

    async def settle() -> None:
        if assignment is not None and rec.status == 200:
            assignment.arm.record("latency", rec.latency or 0.0)
            tokens = streams.usage.prompt_tokens + streams.usage.completion_tokens
            cost = ledger.local_cost(tokens) if ledger is not None else None
            if cost is not None:
                assignment.arm.record("cost", cost)
        if shadow is None or rec.status != 200 or streams.texts is None:
            return
        if route.deployment == CACHE_DEPLOYMENT:
            shadow.monitor.count(name, "skipped")  # a cached answer was scored when made
            return
        held = route.fallback and name in manager.held
        if route.fallback and not held:
            shadow.monitor.count(name, "skipped")  # another model answered after a failure
            return
        first = requests[0]
        on_score = None
        if assignment is not None:
            arm = assignment.arm

            def on_score(score: QualityScore) -> None:
                arm.record("quality", score.overall)

        shadow.offer(
            ShadowJob(
                model=name,
                request=first,
                answer=None if held else "".join(streams.texts[0]),
                finish_reason=streams.finishes[0],
                prompt=_prompt_text(first),
                json_requested=first.sampling.json_object or first.sampling.json_schema is not None,
                on_score=on_score,
            )
        )

    rec.finishers.append(settle)


def _prompt_text(req: GenerationRequest) -> str:
    if req.messages is not None:
        users = [m.content for m in req.messages if m.role == "user"]
        return users[-1] if users else ""
    return req.prompt or ""


def _rolling(value: object) -> object:
    if isinstance(value, Rolling):
        return {"mean": value.mean, "ci_low": value.low, "ci_high": value.high, "n": value.n}
    return value


@router.get("/quality")
@requires(Permission.READ_METRICS)
async def quality(request: Request) -> JSONResponse:
    """Rolling quality scores per model and content class (means with 95% confidence
    intervals), each model's gate, and what the shadow scorer did."""
    state = quality_of(request)
    monitor = state.monitor
    models: dict[str, Any] = {}
    for model, entry in monitor.snapshot().items():
        classes = entry["classes"]
        assert isinstance(classes, dict)
        models[model] = {
            "gate": entry["gate"],
            "classes": {
                cls: {dim: _rolling(v) for dim, v in row.items()} for cls, row in classes.items()
            },
        }
    shadow: dict[str, dict[str, int]] = {}
    for (model, outcome), n in sorted(monitor.outcomes.items()):
        shadow.setdefault(model, {})[outcome] = n
    tokens: dict[str, dict[str, int]] = {}
    for (model, kind), n in sorted(monitor.tokens.items()):
        tokens.setdefault(model, {})[kind] = n
    body = {
        "shadow_enabled": state.shadow is not None,
        "reference_model": state.shadow.config.reference_model if state.shadow else None,
        "sample_rate": state.shadow.config.sample_rate if state.shadow else None,
        "models": models,
        "shadow": shadow,
        "shadow_tokens": tokens,
        "ab_tests": sorted(state.ab.tests) if state.ab else [],
    }
    return JSONResponse(body)


@router.get(
    "/quality/ab/{name}",
    responses={404: {"model": ErrorResponse, "description": "No A/B test of that name"}},
)
@requires(Permission.READ_METRICS)
async def ab_report(request: Request, name: str) -> JSONResponse:
    """An A/B test's arms (requests, mean quality, latency and cost, samples) and the
    comparison on its metric; a winner only at the planned sample size."""
    tests = quality_of(request).ab
    test = tests.tests.get(name) if tests is not None else None
    if test is None:
        raise APIError(404, f"No A/B test named {name[:100]!r}.", code="ab_test_not_found")
    return JSONResponse(test.report())
