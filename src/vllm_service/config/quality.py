"""The quality evaluator's settings: dimension weights and targets, content classes, the live
shadow gate, and A/B tests (docs/quality.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from vllm_service.config.models import _Strict

Dimension = Literal[
    "semantic_similarity",
    "structure_quality",
    "engagement_score",
    "technical_accuracy",
    "coherence_score",
    "completeness",
]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)
ContentClass = Literal["viral_hook", "technical", "code", "creative"]
CONTENT_CLASSES: tuple[ContentClass, ...] = get_args(ContentClass)


class DimensionConfig(_Strict):
    """One quality dimension: its share of the overall score and the level it must reach."""

    weight: float = Field(ge=0, le=1, description="Share of the weighted score (renormalized).")
    target: float = Field(gt=0, le=1, description="The score this dimension must reach.")


def _dim(weight: float, target: float) -> Any:
    return Field(default_factory=lambda: DimensionConfig(weight=weight, target=target))


class DimensionsConfig(_Strict):
    """The architecture's six dimensions with their default weight and target."""

    semantic_similarity: DimensionConfig = _dim(0.20, 0.85)
    structure_quality: DimensionConfig = _dim(0.20, 0.80)
    engagement_score: DimensionConfig = _dim(0.15, 0.75)
    technical_accuracy: DimensionConfig = _dim(0.20, 0.90)
    coherence_score: DimensionConfig = _dim(0.15, 0.85)
    completeness: DimensionConfig = _dim(0.10, 0.80)

    def items(self) -> list[tuple[Dimension, DimensionConfig]]:
        return [(d, getattr(self, d)) for d in DIMENSIONS]


#: Per-class weights: engagement is what a social post is for, and says little about code or
#: an explanation; what it weighed goes to the dimensions that matter there.
DEFAULT_CLASS_WEIGHTS: dict[ContentClass, dict[Dimension, float]] = {
    "viral_hook": {"engagement_score": 0.30, "technical_accuracy": 0.05},
    "technical": {"engagement_score": 0.0, "technical_accuracy": 0.30, "completeness": 0.15},
    "code": {"engagement_score": 0.0, "technical_accuracy": 0.35},
    "creative": {"engagement_score": 0.20, "technical_accuracy": 0.05, "coherence_score": 0.25},
}

#: Words in a prompt that point at a class (lowercase; a prompt's class is the one with most).
DEFAULT_CLASS_KEYWORDS: dict[ContentClass, list[str]] = {
    "viral_hook": [
        "tweet", "post", "hook", "viral", "caption", "linkedin", "instagram", "tiktok",
        "headline", "thread", "hashtag", "social media", "engagement", "followers", "x.com",
    ],
    "code": [
        "code", "function", "python", "javascript", "typescript", "sql", "query", "regex",
        "script", "bash", "class ", "implement", "snippet", "json", "yaml", "compile", "bug",
        "rust", "golang", "java ", "def ", "return", "unit test",
    ],
    "creative": [
        "story", "poem", "haiku", "limerick", "lyrics", "song", "fiction", "character",
        "imagine", "fairy", "tale", "verse", "rhyme", "dialogue", "scene",
    ],
    "technical": [
        "explain", "how does", "what is", "why does", "difference between", "protocol",
        "algorithm", "architecture", "latency", "memory", "database", "network", "compare",
        "define", "describe",
    ],
}  # fmt: skip


class ShadowConfig(_Strict):
    """Live shadow scoring: a sampled share of requests also goes to a reference model, after
    the client has its answer, and the answer is scored against it."""

    enabled: bool = Field(default=False, description="Shadow-score sampled live requests.")
    reference_model: str | None = Field(
        default=None, description="The configured model (name) that answers as the reference."
    )
    models: list[str] = Field(
        default_factory=list, description="Models whose answers are scored; empty = all others."
    )
    sample_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of eligible requests shadowed."
    )
    max_per_second: float = Field(
        default=1.0, gt=0, description="At most this many shadow calls start per second."
    )
    max_pending: int = Field(
        default=32, ge=1, description="Shadow jobs waiting beyond this are dropped (counted)."
    )
    concurrency: int = Field(default=1, ge=1, description="Shadow calls in flight at once.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds a reference call may take.")
    max_tokens: int = Field(
        default=256, ge=1, description="Cap on the reference's answer (and probes') length."
    )


class GateConfig(_Strict):
    """The quality gate: a model whose rolling score falls below its threshold is degraded."""

    threshold: float = Field(
        default=0.85, gt=0, le=1, description="Overall score under which the gate opens."
    )
    recover_threshold: float = Field(
        default=0.90, gt=0, le=1, description="Score above which it closes again (hysteresis)."
    )
    min_samples: int = Field(
        default=20, ge=1, description="Scored answers needed before the gate decides."
    )
    window: int = Field(default=100, ge=2, description="Scored answers in the rolling window.")
    route_to_fallback: bool = Field(
        default=False,
        description="While open, send the model's traffic to its fallbacks (probes continue).",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> GateConfig:
        if self.recover_threshold < self.threshold:
            raise ValueError("recover_threshold must be at least threshold")
        if self.min_samples > self.window:
            raise ValueError("min_samples cannot exceed window")
        return self


class AbArm(_Strict):
    model: str = Field(min_length=1, description="The configured model this arm serves from.")
    weight: float = Field(default=1.0, gt=0, description="Relative share of users.")


class AbTestConfig(_Strict):
    """One public model name split between two arms, sticky per user or key."""

    name: str = Field(min_length=1, description="The model name clients send.")
    arms: Annotated[list[AbArm], Field(min_length=2, max_length=2)]
    metric: Literal["quality", "latency", "cost"] = Field(
        default="quality", description="What decides the winner."
    )
    planned_samples: int = Field(
        default=200, ge=2, description="Per arm: no winner is declared before this many."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level.")


class QualityConfig(_Strict):
    """Scores, content classes, the shadow gate and A/B tests."""

    dimensions: DimensionsConfig = Field(default_factory=DimensionsConfig)
    class_weights: dict[ContentClass, dict[Dimension, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_CLASS_WEIGHTS.items()},
        description="Per content class, weights that replace the dimension's own.",
    )
    class_keywords: dict[ContentClass, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_CLASS_KEYWORDS.items()},
        description="Prompt words that point at each content class.",
    )
    embedder: Literal["wordllama", "sentence-transformers"] = Field(
        default="wordllama", description="Embeddings for semantic similarity (both ship local)."
    )
    sentence_transformers_path: str | None = Field(
        default=None, description="A local sentence-transformers model folder (no download)."
    )
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    def weights_for(self, content_class: ContentClass | None) -> dict[Dimension, float]:
        weights = {d: c.weight for d, c in self.dimensions.items()}
        if content_class is not None:
            weights.update(self.class_weights.get(content_class, {}))
        return weights

    def targets(self) -> dict[Dimension, float]:
        return {d: c.target for d, c in self.dimensions.items()}
