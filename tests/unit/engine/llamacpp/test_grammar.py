"""Grammars from JSON Schemas: strings cannot hold raw control characters (JSON forbids them),
and tool_choice "auto" composes the schema's grammar with free text."""

from __future__ import annotations

import json

from vllm_service.engine.llamacpp.grammar import _convert, either_json_or_text

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})


def test_string_characters_exclude_control_characters() -> None:
    grammar = _convert(SCHEMA)
    (char,) = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert char.startswith('char ::= [^"\\\\\\x7F\\x00-\\x1F] |')


def test_auto_is_the_schema_or_text_not_starting_with_a_brace() -> None:
    grammar = either_json_or_text(_convert(SCHEMA))
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines() if " ::= " in line)
    assert rules["root"] == "json-root | free-text"
    assert rules["json-root"] == _convert(SCHEMA).split("root ::= ", 1)[1].splitlines()[0]
    assert rules["free-text"].startswith("[^{]")
