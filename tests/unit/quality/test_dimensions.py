"""Each dimension on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_service.quality import dimensions as d
from vllm_service.quality.dimensions import Case


def test_json_requested_parses_and_matches_the_schema() -> None:
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    ok = Case("Give JSON", '{"n": 3}', json_requested=True, json_schema=schema)
    wrong_shape = Case("Give JSON", '{"n": "three"}', json_requested=True, json_schema=schema)
    broken = Case("Give JSON", '{"n": 3', json_requested=True, json_schema=schema)
    assert d.structure_quality(ok) == 1.0
    assert d.structure_quality(broken) == pytest.approx(0.5)  # JSON check 0, length check 1
    assert d.structure_quality(ok) > d.structure_quality(wrong_shape) > d.structure_quality(broken)


def test_a_list_is_checked_when_one_is_asked_for() -> None:
    listed = Case("List three fruits", "- apple\n- pear\n- plum")
    prose = Case("List three fruits", "Apples, pears and plums.")
    assert d.structure_quality(listed) == 1.0
    assert d.structure_quality(prose) == pytest.approx(0.5)
    assert d.structure_quality(Case("Name three fruits", "Apples, pears and plums.")) == 1.0


def test_headings_and_word_limits() -> None:
    assert d.structure_quality(Case("Use section headings", "# Intro\ntext")) == 1.0
    assert d.structure_quality(Case("Use section headings", "just text")) == pytest.approx(0.5)
    long = "word " * 100
    assert d.structure_quality(Case("Answer in under 20 words", "short answer")) == 1.0
    assert d.structure_quality(Case("Answer in under 20 words", long)) == pytest.approx(0.2)


def test_length_against_the_reference_and_the_platform() -> None:
    ref = "x" * 100
    assert d.structure_quality(Case("p", "y" * 100, reference=ref)) == 1.0
    assert d.structure_quality(Case("p", "y" * 1000, reference=ref)) == pytest.approx(0.25)
    assert d.structure_quality(Case("p", "y" * 10, length_range=(40, 280))) == pytest.approx(0.25)
    assert d.structure_quality(Case("p", "")) == 0.0


def test_code_blocks_must_parse() -> None:
    good = "```python\ndef f(x):\n    return x + 1\n```"
    bad = "```python\ndef f(x)\n    return x +\n```"
    assert d.technical_accuracy(Case("code", good)) == 1.0
    assert d.technical_accuracy(Case("code", bad)) == 0.0
    assert d.technical_accuracy(Case("code", '```json\n{"a": 1}\n```')) == 1.0
    assert d.technical_accuracy(Case("code", '```json\n{"a": 1\n```')) == 0.0
    assert d.technical_accuracy(Case("code", "```yaml\na: [1, 2\n```")) == 0.0
    assert d.technical_accuracy(Case("code", "```rust\nfn main() {}\n```")) is None


def test_the_references_facts_must_be_present() -> None:
    ref = "HTTP/2 uses HPACK and TCP port 443 with TLS 1.3."
    full = Case("q", "HTTP/2: HPACK, TCP on 443, TLS 1.3", reference=ref)
    assert d.technical_accuracy(full) == 1.0
    partial = d.technical_accuracy(Case("q", "It uses HPACK.", reference=ref))
    assert partial is not None
    assert 0 < partial < 0.5
    # Other numbers than the reference's: a contradiction, scored down further.
    wrong = d.technical_accuracy(Case("q", "HPACK over TCP on 80 with TLS 1.0", reference=ref))
    assert wrong is not None
    assert wrong < 0.5


def test_repetition_and_loops_lower_coherence() -> None:
    fine = Case("q", "The cache stores answers so that a repeated request is served at once.")
    loop = Case("q", "the cache the cache the cache the cache the cache the cache")
    lines = Case("q", "Buy now.\nBuy now.\nBuy now.\nBuy now.")
    assert d.coherence_score(fine) == 1.0
    assert d.coherence_score(loop) == 0.0
    score = d.coherence_score(lines)
    assert score is not None
    assert score < 0.5


def test_an_answer_in_another_script_is_incoherent() -> None:
    assert d.language_consistency("Explain caching", "Кэш хранит ответы") == 0.0
    assert d.language_consistency("Explain caching", "Caching keeps answers") == 1.0
    assert d.language_consistency("Объясни кэш", "Кэш хранит ответы") == 1.0


def test_ngram_measures() -> None:
    assert d.repeated_ngram_rate(["a", "b", "c", "a", "b", "c"]) == pytest.approx(0.25)
    assert d.distinct_n(["a", "a", "a"], 2) == 0.5


def test_completeness_needs_a_finish_and_the_references_terms() -> None:
    ref = "Redis keeps keys in memory, persists snapshots and replicates to followers."
    full = "Redis holds keys in memory, writes snapshots to disk and replicates to followers."
    assert d.completeness(Case("q", full, reference=ref)) == 1.0
    assert d.completeness(Case("q", full, reference=ref, finish_reason="length")) == 0.4
    partial = d.completeness(Case("q", "Redis is fast.", reference=ref))
    assert partial is not None
    assert partial < 0.5
    assert d.completeness(Case("q", "", reference=ref)) == 0.0


def test_engagement_rewards_hooks() -> None:
    hook = Case("tweet", "Why do 90% of startups fail? It is not the product. Share this! 🚀")
    flat = Case("tweet", "Startups are new companies and sometimes they are not successful.")
    hook_score, flat_score = d.engagement_score(hook), d.engagement_score(flat)
    assert hook_score is not None
    assert flat_score is not None
    assert hook_score == 1.0
    assert flat_score < 0.5
    too_long = Case("tweet", hook.answer + " more" * 200, length_range=(40, 280))
    assert d.engagement_score(too_long) == 0.5


def test_semantic_similarity_is_the_scaled_cosine() -> None:
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.6, 0.8]), "c": np.array([-1.0, 0.0])}
    embed = vectors.__getitem__
    assert d.semantic_similarity(Case("q", "a", reference="a"), embed) == 1.0
    assert d.semantic_similarity(Case("q", "b", reference="a"), embed) == pytest.approx(
        0.6 / d.SEMANTIC_SCALE
    )
    assert d.semantic_similarity(Case("q", "c", reference="a"), embed) == 0.0
    assert d.semantic_similarity(Case("q", "a"), embed) is None
