"""Offline evaluation: ask an endpoint every item of a dataset, score each answer against its
reference, and report corpus BLEU/chrF (with signatures), the dimensions and the weighted score
per content class; with a second endpoint, a paired comparison of the two.

Answers are asked greedily (temperature 0) so a run is repeatable, unless a temperature is
given for the evaluated endpoints (to score them under the sampling their traffic uses). An
endpoint that fails on an item leaves it unanswered: counted and shown, scored as an empty
answer, never dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2

from vllm_service.config.quality import DIMENSIONS
from vllm_service.quality.dataset import EvalItem
from vllm_service.quality.dimensions import Case
from vllm_service.quality.evaluator import Evaluator, QualityScore
from vllm_service.quality.scores import CorpusScore, corpus_bleu, corpus_chrf


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: str
    model: str
    api_key: str = "unused"
    #: 0: greedy (repeatable). References are always asked greedily.
    temperature: float = 0.0


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    finish_reason: str | None
    seconds: float
    error: str | None = None


def one_line(text: str) -> str:
    """A text on one line: the hypothesis and reference files hold one item per line, and
    BLEU's 13a tokenizer and chrF treat a newline as a space anyway."""
    return " ".join(text.split())


async def ask(client: httpx2.AsyncClient, endpoint: Endpoint, item: EvalItem) -> Reply:
    body: dict[str, Any] = {
        "model": endpoint.model,
        "messages": item.chat,
        "max_tokens": item.max_tokens,
        "temperature": endpoint.temperature,
    }
    if item.response_format is not None:
        body["response_format"] = item.response_format
    started = time.perf_counter()
    try:
        response = await client.post(
            endpoint.url.rstrip("/") + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {endpoint.api_key}"},
        )
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            return Reply("", None, seconds, f"HTTP {response.status_code}: {response.text[:200]}")
        choice = response.json()["choices"][0]
        return Reply(choice["message"].get("content") or "", choice.get("finish_reason"), seconds)
    except (httpx2.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Reply("", None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")


async def ask_all(
    endpoint: Endpoint, items: list[EvalItem], *, concurrency: int, seconds: float
) -> list[Reply]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx2.AsyncClient(timeout=seconds) as client:

        async def one(item: EvalItem) -> Reply:
            async with gate:
                return await ask(client, endpoint, item)

        return list(await asyncio.gather(*(one(item) for item in items)))


@dataclass
class EndpointReport:
    endpoint: Endpoint
    replies: list[Reply]
    scores: list[QualityScore]
    bleu: CorpusScore
    chrf: CorpusScore
    failed: int
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def overall(self) -> list[float]:
        return [s.overall for s in self.scores]


def score_endpoint(
    evaluator: Evaluator,
    endpoint: Endpoint,
    items: list[EvalItem],
    replies: list[Reply],
    references: list[str],
    reference_finishes: list[str | None] | None = None,
) -> EndpointReport:
    finishes = reference_finishes or ["stop"] * len(items)
    scores = [
        evaluator.score(
            Case(
                prompt=item.prompt_text,
                answer=reply.text,
                reference=ref,
                reference_finish_reason=ref_finish,
                finish_reason=reply.finish_reason,
                content_class=item.content_class,
                json_requested=item.response_format is not None,
                json_schema=item.json_schema,
            )
        )
        for item, reply, ref, ref_finish in zip(items, replies, references, finishes, strict=True)
    ]
    hyps = [one_line(r.text) for r in replies]
    refs = [one_line(r) for r in references]
    report = EndpointReport(
        endpoint=endpoint,
        replies=replies,
        scores=scores,
        bleu=corpus_bleu(hyps, refs),
        chrf=corpus_chrf(hyps, refs),
        failed=sum(1 for r in replies if r.error is not None),
    )
    report.by_class = class_means(scores)
    return report


def class_means(scores: list[QualityScore]) -> dict[str, dict[str, float]]:
    """Per content class (and "all"): n, the mean overall and weighted scores, each dimension."""
    groups: dict[str, list[QualityScore]] = {"all": scores}
    for s in scores:
        groups.setdefault(s.content_class, []).append(s)
    out: dict[str, dict[str, float]] = {}
    for name, group in groups.items():
        row = {
            "n": float(len(group)),
            "overall": sum(s.overall for s in group) / len(group),
            "weighted": sum(s.weighted for s in group) / len(group),
        }
        for dim in DIMENSIONS:
            values = [s.dimensions[dim] for s in group if dim in s.dimensions]
            if values:
                row[dim] = sum(values) / len(values)
        out[name] = row
    return out


def item_rows(
    items: list[EvalItem], references: list[str], reports: list[EndpointReport]
) -> list[dict[str, Any]]:
    """Every item with each endpoint's answer and scores (the JSON report)."""
    rows = []
    for i, item in enumerate(items):
        row: dict[str, Any] = {"id": item.id, "prompt": item.prompt_text}
        row["reference"] = references[i]
        for report in reports:
            reply, score = report.replies[i], report.scores[i]
            row[report.endpoint.name] = {
                "answer": reply.text,
                "finish_reason": reply.finish_reason,
                "error": reply.error,
                "seconds": round(reply.seconds, 4),
                "class": score.content_class,
                "overall": score.overall,
                "weighted": score.weighted,
                "dimensions": score.dimensions,
                "sentence_bleu_effective_order": score.sentence_bleu,
                "sentence_chrf": score.sentence_chrf,
                "rouge_l": score.rouge_l,
            }
        rows.append(row)
    return rows


class EvalError(RuntimeError):
    """An evaluation that cannot produce scores (the message says why)."""


@dataclass
class EvalRun:
    items: list[EvalItem]
    references: list[str]
    reports: list[EndpointReport]
    #: Items left out and why (a reference that failed on them).
    warnings: list[str]


async def evaluate(
    evaluator: Evaluator,
    items: list[EvalItem],
    targets: list[Endpoint],
    reference: Endpoint | None,
    concurrency: int,
    seconds: float,
) -> EvalRun:
    """Each target's answers scored against the file's references, or the reference
    endpoint's answers (items it fails on are left out, and said so)."""
    warnings: list[str] = []
    finishes: list[str | None]
    if reference is not None:
        replies = await ask_all(reference, items, concurrency=concurrency, seconds=seconds)
        failed = [i.id for i, r in zip(items, replies, strict=True) if not r.text.strip()]
        if failed:
            warnings.append(
                f"reference endpoint failed on {len(failed)} of {len(items)} items "
                f"({', '.join(map(str, failed[:5]))}): those items are left out"
            )
        kept = [(i, r) for i, r in zip(items, replies, strict=True) if r.text.strip()]
        if not kept:
            raise EvalError("; ".join([*warnings, "the reference endpoint answered no item"]))
        items = [i for i, _ in kept]
        references = [r.text for _, r in kept]
        finishes = [r.finish_reason for _, r in kept]
    else:
        references = [item.reference or "" for item in items]
        finishes = ["stop"] * len(items)
    reports = []
    for target in targets:
        replies = await ask_all(target, items, concurrency=concurrency, seconds=seconds)
        if all(r.error for r in replies):
            raise EvalError(f"{target.url} answered no item: {replies[0].error}")
        reports.append(score_endpoint(evaluator, target, items, replies, references, finishes))
    return EvalRun(items, references, reports, warnings)
