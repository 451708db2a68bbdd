"""The six quality dimensions, each a pure function of one answer (and its reference) to [0, 1],
or None where it does not apply. What each one measures is in docs/quality.md; each was
checked against hand labels (quality/data/labelled.jsonl, benchmarks/quality_agreement.py).
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from vllm_service.quality.scores import tokens

#: The embedding of a text, unit length (quality/embeddings.py).
Embed = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Case:
    """One answer to score, with what it was asked and what it is compared with."""

    prompt: str
    answer: str
    reference: str | None = None
    finish_reason: str | None = "stop"
    #: How the reference ended: a reference cut at max_tokens expects no more of the answer.
    reference_finish_reason: str | None = "stop"
    content_class: str | None = None
    #: response_format: a JSON object was asked for (json_object or json_schema).
    json_requested: bool = False
    json_schema: dict[str, Any] | None = None
    #: The platform's length range in characters (a post), when one applies.
    length_range: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


# -- semantic similarity ----------------------------------------------------------------------


#: WordLlama's cosine of two paraphrases sits around 0.6-0.9, of unrelated texts under 0.3;
#: the cosine is divided by this so that a paraphrase reaches the 0.85 target (calibrated on
#: the labelled set: docs/quality.md).
SEMANTIC_SCALE = 0.7


def semantic_similarity(case: Case, embed: Embed) -> float | None:
    """Cosine of the answer's and the reference's embeddings, over SEMANTIC_SCALE, in [0, 1]."""
    if case.reference is None or not case.answer.strip() or not case.reference.strip():
        return None if case.reference is None else 0.0
    return _clip(float(np.dot(embed(case.answer), embed(case.reference))) / SEMANTIC_SCALE)


# -- structure --------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+\S", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+\S|^[ \t]*\*\*[^*\n]{2,80}\*\*[ \t]*:?[ \t]*$", re.M)
_WORD_LIMIT = re.compile(
    r"\b(?:in|under|at most|no more than|maximum of|max|within)\s+(\d{1,4})\s+words?\b"
)
_ASKS_LIST = re.compile(r"\b(?:list|bullet|bulleted|steps|enumerate|numbered)\b")
_ASKS_HEADINGS = re.compile(r"\b(?:headings?|sections?|headers?)\b")
_ASKS_CODE = re.compile(
    r"\b(?:write|implement|give me|show)\b[^\n]{0,80}?\b(?:code|function|script|query)"
)


def structure_quality(case: Case) -> float | None:
    """The requested format honoured: JSON (parses, matches the schema), markdown lists or
    headings when asked, a code block when code is asked, and length bounds (the prompt's
    word limit, the platform's range, or within a factor of the reference's length)."""
    prompt = case.prompt.casefold()
    checks: list[float] = []
    if case.json_requested or case.json_schema is not None:
        checks.append(_json_check(case.answer, case.json_schema))
    if _ASKS_LIST.search(prompt):
        checks.append(1.0 if len(_LIST_ITEM.findall(case.answer)) >= 2 else 0.0)
    if _ASKS_HEADINGS.search(prompt):
        checks.append(1.0 if _HEADING.search(case.answer) else 0.0)
    if case.content_class == "code" and _ASKS_CODE.search(prompt):
        checks.append(1.0 if _FENCE.search(case.answer) or _looks_like_code(case.answer) else 0.0)
    checks.append(_length_check(case, prompt))
    return sum(checks) / len(checks)


def _json_check(answer: str, schema: dict[str, Any] | None) -> float:
    text = answer.strip()
    fenced = _FENCE.search(text)
    if fenced and not text.startswith(("{", "[")):
        text = fenced.group(2).strip()
    try:
        value = json.loads(text)
    except ValueError:
        return 0.0
    if schema is None:
        return 1.0
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.5  # valid JSON of the wrong shape
    except jsonschema.SchemaError:
        return 1.0  # the request's schema is not ours to judge
    return 1.0


def _length_check(case: Case, prompt: str) -> float:
    chars = len(case.answer.strip())
    if chars == 0:
        return 0.0
    words = len(case.answer.split())
    limit = _WORD_LIMIT.search(prompt)
    if limit:
        allowed = int(limit.group(1))
        return 1.0 if words <= allowed * 1.1 else _clip(allowed / words)
    if case.length_range is not None:
        low, high = case.length_range
        if low <= chars <= high:
            return 1.0
        return _clip(chars / low) if chars < low else _clip(high / chars)
    if case.reference:
        ratio = chars / max(1, len(case.reference.strip()))
        if 0.4 <= ratio <= 2.5:
            return 1.0
        return _clip(ratio / 0.4) if ratio < 0.4 else _clip(2.5 / ratio)
    return 1.0


_CODE_LINE = re.compile(r"[;{}()=]\s*$|^\s*(def|class|import|SELECT)\b")


def _looks_like_code(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    coded = sum(1 for line in lines if _CODE_LINE.search(line))
    return bool(lines) and coded / len(lines) >= 0.5


# -- technical accuracy -----------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:%|\b)")
_TERM = re.compile(r"`([^`\n]{1,60})`|\b([A-Za-z]+[A-Z0-9_][\w-]*|[A-Z]{2,}[\w-]*)\b")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of each fenced block."""
    return [(m.group(1).casefold(), m.group(2)) for m in _FENCE.finditer(text)]


def _block_valid(language: str, body: str) -> bool | None:
    """Whether a block parses in its language; None for languages not checked here."""
    try:
        if language in {"python", "py", "python3"} or (not language and _is_python(body)):
            compile(body, "<answer>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        elif language == "json":
            json.loads(body)
        elif language in {"yaml", "yml"}:
            yaml.safe_load(body)
        else:
            return None
    except (SyntaxError, ValueError, yaml.YAMLError, RecursionError, MemoryError):
        return False
    return True


_PYTHON_LINE = re.compile(r"^[ \t]*(def |import |from \w+ import|class \w+|print\()", re.M)


def _is_python(body: str) -> bool:
    return bool(_PYTHON_LINE.search(body))


def facts(text: str) -> set[str]:
    """The checkable facts of a text: its numbers and technical terms (code spans, acronyms,
    identifiers with capitals, digits or underscores)."""
    found = {m.group(0).rstrip(".,").replace(",", "") for m in _NUMBER.finditer(text)}
    for m in _TERM.finditer(text):
        term = (m.group(1) or m.group(2) or "").strip().casefold()
        if term:
            found.add(term)
    return {f for f in found if f}


def technical_accuracy(case: Case) -> float | None:
    """Code blocks that parse (Python via compile(), JSON, YAML), and the reference's facts
    (numbers, technical terms) present in the answer; each part counts where it applies."""
    parts: list[float] = []
    results = [_block_valid(lang, body) for lang, body in code_blocks(case.answer)]
    checked = [r for r in results if r is not None]
    if checked:
        parts.append(sum(checked) / len(checked))
    elif case.content_class == "code" and case.answer.strip() and "```" not in case.answer:
        unfenced = _block_valid("python", case.answer) if _is_python(case.answer) else None
        if unfenced is not None:
            parts.append(float(unfenced))
    if case.reference:
        wanted = facts(case.reference)
        if wanted:
            have = facts(case.answer) | set(tokens(case.answer))
            parts.append(len(wanted & have) / len(wanted))
            wrong = _contradicted_numbers(case.answer, wanted)
            if wrong:
                parts.append(0.0)
    return sum(parts) / len(parts) if parts else None


def _contradicted_numbers(answer: str, wanted: set[str]) -> bool:
    """The reference states numbers and the answer states only other numbers."""
    ref_numbers = {w for w in wanted if _NUMBER.fullmatch(w)}
    got = {m.group(0).rstrip(".,").replace(",", "") for m in _NUMBER.finditer(answer)}
    return bool(ref_numbers and got and not ref_numbers & got)


# -- coherence --------------------------------------------------------------------------------


def repeated_ngram_rate(words: list[str], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier one."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(words: list[str], n: int = 2) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def _scripts(text: str) -> Counter[str]:
    """Letters per script (the first word of each letter's Unicode name: LATIN, CYRILLIC...)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "UNKNOWN")
            counts[name.split(" ", 1)[0]] += 1
    return counts


def language_consistency(prompt: str, answer: str) -> float:
    """Share of the answer's letters in the prompt's main script."""
    asked, given = _scripts(prompt), _scripts(answer)
    if not asked or not given:
        return 1.0
    main = asked.most_common(1)[0][0]
    return given[main] / sum(given.values())


def _looped_lines(answer: str) -> float:
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    if len(lines) < 3:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def coherence_score(case: Case) -> float | None:
    """1 minus penalties for degenerate repetition (repeated 3-grams, few distinct bigrams,
    repeated lines), times the share of the answer in the prompt's script."""
    words = tokens(case.answer)
    if not words:
        return 0.0
    if len(words) < 4:
        return language_consistency(case.prompt, case.answer)
    repetition = repeated_ngram_rate(words, 3)
    variety = distinct_n(words, 2)
    loops = _looped_lines(case.answer)
    penalty = max(repetition * 1.5, (1.0 - variety) * 1.5, loops)
    return _clip(1.0 - penalty) * language_consistency(case.prompt, case.answer)


# -- completeness -----------------------------------------------------------------------------

_STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be
    been being it its this that these those there here what which who whom whose how why when
    where can could should would will shall may might must do does did done not no yes so such
    than too very just also into over under about after before between through during each
    other some any all most more many much few own same only both either neither you your we
    our they their them he she his her i me my mine us one two use used using make makes""".split()  # noqa: SIM905
)


def key_terms(text: str) -> set[str]:
    """Content words (no stopwords, 3+ letters), cut to a 6-letter stem."""
    return {w[:6] for w in tokens(text) if len(w) >= 3 and w not in _STOPWORDS}


def completeness(case: Case) -> float | None:
    """Finished normally (a cut-off answer is incomplete), and the reference's key terms
    covered."""
    finish = {"stop": 1.0, "tool_calls": 1.0, "length": 0.4}.get(case.finish_reason or "", 0.7)
    if not case.answer.strip():
        return 0.0
    if not case.reference:
        return finish
    wanted = key_terms(case.reference)
    if not wanted:
        return finish
    coverage = len(wanted & key_terms(case.answer)) / len(wanted)
    return finish * _clip(coverage / 0.6)


# -- engagement -------------------------------------------------------------------------------

_EMOTION = frozenset(
    """amazing incredible love hate fear secret shocking surprising powerful proven simple
    easy free new now never always best worst stop mistake mistakes truth why imagine
    finally struggling dream win lose fail failed success brutal honest hidden wild
    unstoppable game-changer crazy insane mind-blowing""".split()  # noqa: SIM905
)
_CALL_TO_ACTION = re.compile(
    r"\b(?:share|comment|follow|subscribe|click|join|try|save this|repost|tag|reply|dm|"
    r"sign up|learn more|read more|let me know|what do you think)\b"
)
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")


def engagement_score(case: Case) -> float | None:
    """Hook features of a social post: opens with a question, a number or an emotion word, a
    short first line, a call to action, and a length in the platform's range."""
    text = case.answer.strip()
    if not text:
        return 0.0
    first = re.split(r"(?<=[.!?])\s|\n", text, maxsplit=1)[0]
    first_words = tokens(first)
    features = [
        "?" in first or bool(_NUMBER.search(first)),
        bool(set(tokens(text)) & _EMOTION),
        0 < len(first_words) <= 15,
        bool(_CALL_TO_ACTION.search(text.casefold())) or "?" in text[-80:],
        bool(_EMOJI.search(text)) or "!" in text or "#" in text,
    ]
    score = sum(features) / len(features)
    low, high = case.length_range or (40, 600)
    if not low <= len(text) <= high:
        score *= 0.5
    return score
