"""Tool calling on the embedded engine: OpenAI's ``tools`` and ``tool_choice``, in a
tool-call format this service owns (docs/tools.md).

The bundled model's chat template (plain ChatML) has no tool syntax, so the service writes the
tool definitions into a system turn and asks for calls as one JSON envelope,
``{"tool_calls": [{"name": ..., "arguments": {...}}]}``. With ``tool_choice: "required"`` or a
named function, the output is constrained by a grammar built from the envelope's JSON Schema
(each declared function's name and its ``parameters``): it always parses, and its arguments
validate. With ``"auto"`` the grammar allows either that envelope or plain text that does not
start with ``{``. ``"none"`` (and a request without tools) is a plain chat. Calls come back as
OpenAI ``tool_calls`` (``call_`` ids, ``function.arguments`` as a JSON string) with
``finish_reason: "tool_calls"``; earlier calls and ``tool`` results in the history are
rendered back into the same format. The deprecated ``functions``/``function_call`` are
refused with a 400 that says to send ``tools``/``tool_choice``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vllm_service.api.errors import InvalidRequest
from vllm_service.engine.base import ChatMessage

#: Tools per request, and the JSON size of their parameter schemas together.
MAX_TOOLS = 128
#: Calls in one answer when parallel_tool_calls is on (one when it is off).
MAX_PARALLEL_CALLS = 4
MAX_SCHEMA_BYTES = 64 * 1024
ENVELOPE_KEY = "tool_calls"


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoiceIn = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallIn(BaseModel):
    name: str
    arguments: str


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


def new_call_id() -> str:
    return f"call_{os.urandom(12).hex()}"


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class FunctionCallDelta(BaseModel):
    name: str | None = Field(default=None, exclude_if=lambda v: v is None)
    arguments: str


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(default=None, exclude_if=lambda v: v is None)
    type: Literal["function"] | None = Field(default=None, exclude_if=lambda v: v is None)
    function: FunctionCallDelta


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools ask of the model: which functions, and must it call one."""

    functions: dict[str, FunctionDef]
    #: "auto", "required", or the one function's name that must be called.
    choice: str
    parallel: bool

    @property
    def optional(self) -> bool:
        return self.choice == "auto"

    def schema(self) -> str:
        """The JSON Schema of the call envelope (the grammar is built from it)."""
        names = list(self.functions) if self.choice in ("auto", "required") else [self.choice]
        items = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": self.functions[name].parameters or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for name in names
        ]
        calls: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PARALLEL_CALLS if self.parallel else 1,
            "items": {"anyOf": items},
        }
        envelope = {"type": "object", "properties": {ENVELOPE_KEY: calls}}
        return json.dumps({**envelope, "required": [ENVELOPE_KEY]})

    def system_text(self) -> str:
        lines = ["You can call these functions (JSON Schema of each one's arguments):"]
        for fn in self.functions.values():
            lines.append(
                json.dumps(
                    {"name": fn.name, "description": fn.description or "",
                     "parameters": fn.parameters or {"type": "object"}},
                    ensure_ascii=False,
                )
            )  # fmt: skip
        must = {
            "auto": "To call functions, answer with only this JSON and nothing else",
            "required": "Answer with only this JSON, calling at least one function",
        }.get(self.choice, f"Answer with only this JSON, calling {self.choice}")
        envelope = f'{{"{ENVELOPE_KEY}": [{{"name": "<function>", "arguments": {{...}}}}]}}'
        otherwise = " Otherwise answer normally." if self.optional else ""
        lines.append(f"{must}: {envelope}.{otherwise}")
        return "\n".join(lines)


def plan_tools(
    tools: list[ToolIn] | None, tool_choice: ToolChoiceIn | None, parallel: bool | None
) -> ToolPlan | None:
    """The request's tools checked and planned; None when the model is not to call any."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
        return None
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"At most {MAX_TOOLS} tools are allowed.", param="tools")
    by_name: dict[str, FunctionDef] = {}
    for tool in tools:
        if tool.function.name in by_name:
            raise InvalidRequest(f"Two tools are named '{tool.function.name}'.", param="tools")
        by_name[tool.function.name] = tool.function
    _check_schemas(by_name)
    if tool_choice is None or tool_choice == "auto":
        choice = "auto"
    elif tool_choice == "none":
        return None
    elif tool_choice == "required":
        choice = "required"
    else:
        assert isinstance(tool_choice, NamedToolChoice)
        choice = tool_choice.function.name
        if choice not in by_name:
            raise InvalidRequest(
                f"'tool_choice' names '{choice[:64]}', which is not one of the tools.",
                param="tool_choice",
            )
    return ToolPlan(by_name, choice, parallel if parallel is not None else True)


def _check_schemas(functions: dict[str, FunctionDef]) -> None:
    import jsonschema

    total = 0
    for fn in functions.values():
        if fn.parameters is None:
            continue
        total += len(json.dumps(fn.parameters))
        if total > MAX_SCHEMA_BYTES:
            raise InvalidRequest(
                f"The tools' parameter schemas exceed {MAX_SCHEMA_BYTES} bytes.", param="tools"
            )
        try:
            jsonschema.Draft202012Validator.check_schema(fn.parameters)
        except jsonschema.SchemaError as exc:
            raise InvalidRequest(
                f"The parameters of tool '{fn.name}' are not a valid JSON Schema: "
                f"{exc.message[:200]}",
                param="tools",
            ) from None
        if fn.parameters.get("type", "object") != "object":
            raise InvalidRequest(
                f"The parameters of tool '{fn.name}' must be an object schema.", param="tools"
            )


def render(messages: list[ChatMessage], calls: list[list[ToolCallIn] | None],
           plan: ToolPlan | None) -> tuple[ChatMessage, ...]:  # fmt: skip
    """The conversation as the model sees it: the tools in a system turn, earlier calls as
    the envelope they were made in, tool results as 'tool' turns."""
    out: list[ChatMessage] = []
    for message, made in zip(messages, calls, strict=True):
        if made:
            envelope = {
                ENVELOPE_KEY: [
                    {"name": c.function.name, "arguments": _arguments(c.function.arguments)}
                    for c in made
                ]
            }
            text = json.dumps(envelope, ensure_ascii=False)
            out.append(ChatMessage(role="assistant", content=(message.content + text).strip()))
        else:
            out.append(message)
    if plan is not None:
        tools = ChatMessage(role="system", content=plan.system_text())
        if out and out[0].role in ("system", "developer"):
            merged = f"{out[0].content}\n\n{tools.content}"
            out[0] = ChatMessage(role=out[0].role, content=merged)
        else:
            out.insert(0, tools)
    return tuple(out)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse(text: str, plan: ToolPlan) -> list[ToolCallOut] | None:
    """The calls in a finished answer, or None when it is plain text (or not a whole call)."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        envelope = json.loads(stripped)
    except ValueError:
        return None
    items = envelope.get(ENVELOPE_KEY) if isinstance(envelope, dict) else None
    if not isinstance(items, list) or not items:
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in plan.functions:
            return None
        arguments = json.dumps(item.get("arguments", {}), ensure_ascii=False)
        calls.append(
            ToolCallOut(
                id=new_call_id(),
                function=FunctionCallOut(name=str(item["name"]), arguments=arguments),
            )
        )
    return calls


class ToolStream:
    """One streamed choice of a request with tools: its text passes on as soon as it cannot
    be a call (it does not start with '{'); a call is held until it ends, then parsed."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.mode: Literal["call", "text"] | None = None if plan.optional else "call"
        self.buffer = ""

    def feed(self, text: str) -> str:
        """What of ``text`` can be sent as content now."""
        if self.mode == "text":
            return text
        self.buffer += text
        if self.mode is None and self.buffer.strip():
            self.mode = "call" if self.buffer.lstrip().startswith("{") else "text"
            if self.mode == "text":
                out, self.buffer = self.buffer, ""
                return out
        return ""

    def finish(self, reason: str) -> tuple[list[ToolCallOut] | None, str]:
        """At the choice's end: its calls, or the text still held (sent as content)."""
        rest, self.buffer = self.buffer, ""
        if self.mode == "call" and reason == "stop":
            calls = parse(rest, self.plan)
            if calls:
                return calls, ""
        return None, rest
