"""Tools passed through to an upstream (any OpenAI-compatible server, a vLLM process): the
request's ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the history's calls and
results go upstream as the client sent them; the upstream's calls come back as OpenAI
``tool_calls``, streamed piece by piece as it streams them. The service's own tool-call
format (api/tools.py) is for the embedded engine only.
"""

from __future__ import annotations

import json

from vllm_service.api.protocol import ChatCompletionRequest, ChatMessageIn
from vllm_service.api.tools import FunctionCallOut, ToolCallOut, new_call_id
from vllm_service.engine.base import ChatMessage, ToolCallDelta


def tools_json(body: ChatCompletionRequest) -> str | None:
    """The request's tool fields as the upstream is to get them; None without tools."""
    if body.tools is None:
        return None
    fields = body.model_dump(
        include={"tools", "tool_choice", "parallel_tool_calls"}, exclude_none=True
    )
    return json.dumps(fields)


def upstream_message(m: ChatMessageIn) -> ChatMessage:
    """A history message as it was sent: an assistant's calls and a tool's result kept."""
    calls = None
    if m.tool_calls:
        calls = json.dumps([c.model_dump(exclude_none=True) for c in m.tool_calls])
    return ChatMessage(
        role=m.role, content=m.text(), tool_calls_json=calls, tool_call_id=m.tool_call_id
    )


def merge_calls(pieces: list[ToolCallDelta]) -> list[ToolCallOut]:
    """An answer's calls from their streamed pieces: id and name from the first piece of each
    index, arguments joined in order (an id the upstream left out is made)."""
    ids: dict[int, str] = {}
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    for piece in pieces:
        if piece.id and piece.index not in ids:
            ids[piece.index] = piece.id
        if piece.name and piece.index not in names:
            names[piece.index] = piece.name
        arguments.setdefault(piece.index, []).append(piece.arguments)
    return [
        ToolCallOut(
            id=ids.get(index) or new_call_id(),
            function=FunctionCallOut(name=names.get(index, ""), arguments="".join(parts)),
        )
        for index, parts in sorted(arguments.items())
    ]
