"""Grammars for structured output (``response_format``), bounded before they are built.

llama.cpp's JSON-schema converter writes one grammar rule per repetition: ``minItems:
100000000`` asks for a grammar of gigabytes, a large ``enum`` or many optional properties for
seconds of CPU, and a remote ``$ref`` for a fetch from the server. So a schema is checked
first, cheaply and without building anything: its size, its nesting, its properties per
object, its references (local only), and the lengths it asks for: against what the model can
produce at all (``max_model_len`` tokens: a lower bound beyond that can never be met, an upper
bound beyond it is dropped, since no output reaches it), and against ``max_schema_repeat``,
since the grammar spells out every repetition. Then it is converted once per distinct
schema: the grammar text is cached by the (bounded) schema's text, per engine.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from vllm_service.engine.base import InvalidRequestError, SamplingParams

PARAM = "response_format"
#: Keywords that ask for at least this many items, characters or properties.
_LOWER_BOUNDS = ("minItems", "minLength", "minProperties", "minContains")
_UPPER_BOUNDS = ("maxItems", "maxLength", "maxProperties", "maxContains")


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    """How large a response-format schema may be (LlamaCppOptions holds the configured ones)."""

    max_bytes: int
    max_depth: int
    max_properties: int
    max_repeat: int
    max_grammar_bytes: int
    #: Tokens the model can produce at most: max_model_len.
    max_tokens: int


class _Bounds:
    def __init__(self, limits: SchemaLimits) -> None:
        self.limits = limits

    def refuse(self, what: str, limit_name: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"response_format.json_schema {what} (limit: {limit_name})",
            param=PARAM,
            code="schema_too_large",
        )

    def check(self, node: Any, depth: int) -> Any:
        """The node with upper bounds capped at max_tokens; raises on a bound exceeded."""
        if depth > self.limits.max_depth:
            raise self.refuse(
                f"nests deeper than {self.limits.max_depth} levels", "max_schema_depth"
            )
        if isinstance(node, list):
            return [self.check(item, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                raise InvalidRequestError(
                    f"response_format.json_schema: only local $ref ('#/...') are supported, "
                    f"not {value[:100]!r}",
                    param=PARAM,
                )
            if key in _LOWER_BOUNDS and _is_number(value) and value > self.limits.max_tokens:
                raise self.refuse(
                    f"asks for {key} {value}, more than the model can write "
                    f"({self.limits.max_tokens} tokens)",
                    "max_model_len",
                )
            if key in _UPPER_BOUNDS and _is_number(value) and value > self.limits.max_tokens:
                continue  # no output can reach it: the same schema without the bound
            bounded = key in _LOWER_BOUNDS or key in _UPPER_BOUNDS
            if bounded and _is_number(value) and value > self.limits.max_repeat:
                # The grammar repeats a rule once per item or character asked for.
                raise self.refuse(
                    f"asks for {key} {value}", f"max_schema_repeat {self.limits.max_repeat}"
                )
            too_many = isinstance(value, dict) and len(value) > self.limits.max_properties
            if key == "properties" and too_many:
                raise self.refuse(
                    f"has an object with {len(value)} properties",
                    f"max_schema_properties {self.limits.max_properties}",
                )
            out[key] = self.check(value, depth + 1)
        return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bounded_schema(schema_text: str, limits: SchemaLimits) -> str:
    """The schema, checked against ``limits`` and with its upper bounds capped (JSON text)."""
    if len(schema_text.encode()) > limits.max_bytes:
        raise _Bounds(limits).refuse(
            f"is {len(schema_text.encode())} bytes", f"max_schema_bytes {limits.max_bytes}"
        )
    try:
        schema = json.loads(schema_text)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            "response_format.json_schema is not valid JSON", param=PARAM
        ) from exc
    return json.dumps(_Bounds(limits).check(schema, 0), sort_keys=True)


class GrammarBuilder:
    """Turns a sequence's response format into GBNF: bounded, and cached by schema text."""

    def __init__(self, limits: SchemaLimits, cache_size: int = 256) -> None:
        self.limits = limits
        self._convert = functools.lru_cache(maxsize=cache_size)(_convert)
        #: Schemas refused by a bound (never converted).
        self.refused = 0

    @property
    def conversions(self) -> int:
        """Schemas converted so far (cache misses)."""
        return self._convert.cache_info().misses

    @property
    def cache_hits(self) -> int:
        return self._convert.cache_info().hits

    def for_params(self, params: SamplingParams) -> str | None:
        """The GBNF grammar a sequence's response format needs, if any."""
        if params.json_schema is not None:
            grammar = self.for_json_schema(params.json_schema)
            return either_json_or_text(grammar) if params.json_optional else grammar
        if params.json_object:
            # llama.cpp's JSON grammar is rooted at 'object', as OpenAI's JSON mode promises.
            return str(JSON_GBNF)
        return None

    def for_json_schema(self, schema_text: str) -> str:
        """GBNF accepting exactly the JSON documents valid under the schema (JSON text)."""
        try:
            bounded = bounded_schema(schema_text, self.limits)
        except InvalidRequestError:
            self.refused += 1
            raise
        try:
            grammar = self._convert(bounded)
        except RecursionError as exc:
            self.refused += 1
            raise _Bounds(self.limits).refuse(
                "is too complex to convert", "max_schema_depth"
            ) from exc
        except Exception as exc:  # the converter raises bare Exceptions on unsupported schemas
            raise InvalidRequestError(
                f"response_format.json_schema is not supported: {exc}", param=PARAM
            ) from exc
        if len(grammar) > self.limits.max_grammar_bytes:
            self.refused += 1
            raise _Bounds(self.limits).refuse(
                f"makes a grammar of {len(grammar)} bytes",
                f"max_grammar_bytes {self.limits.max_grammar_bytes}",
            )
        return grammar


#: llama-cpp-python's converter lets a string hold raw control characters (a newline inside
#: "..."), which JSON forbids: the model then writes documents no JSON parser takes. Its own
#: JSON-mode grammar excludes them; so does the converted grammar once this rule is replaced.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _convert(schema_text: str) -> str:
    grammar = str(json_schema_to_gbnf(schema_text))
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR, 1)


def either_json_or_text(grammar: str) -> str:
    """The schema's grammar, or any text that does not start with '{' (its root renamed)."""
    lines = [
        "json-root ::=" + line[len("root ::=") :] if line.startswith("root ::=") else line
        for line in grammar.splitlines()
    ]
    return "\n".join([*lines, "root ::= json-root | free-text", "free-text ::= [^{] [^\\x00]*"])
