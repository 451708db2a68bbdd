"""How often the bundled model's tool calls are valid, with tool_choice "auto" (the model may
answer in text; the grammar allows text or a call) and "required" (grammar-constrained to a
call). A fixed set of requests that each want a call; a call is valid when it parses and its
arguments validate against the tool's schema; an answer cut by max_tokens mid-call has none.
Prints numbers; asserts nothing.

    python benchmarks/tool_calls.py [--url http://127.0.0.1:8090/v1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import openai

sys.path.insert(0, str(Path(__file__).parent))
from serve_basics import MODEL, start_configured

WEATHER = {"type": "object", "required": ["city", "unit"],
           "properties": {"city": {"type": "string"},
                          "unit": {"enum": ["celsius", "fahrenheit"]}}}  # fmt: skip
EMAIL = {"type": "object", "required": ["to", "subject", "body"],
         "properties": {"to": {"type": "string"}, "subject": {"type": "string"},
                        "body": {"type": "string"}}}  # fmt: skip
TIMER = {"type": "object", "required": ["minutes"],
         "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 600}}}  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "send_email": EMAIL, "set_timer": TIMER}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": n, "parameters": s}} for n, s in SCHEMAS.items()
]
ASKS = [
    "What's the weather in Paris right now?",
    "Is it cold in Oslo today? Use fahrenheit.",
    "Email bob@example.com that the meeting moved to 3 pm.",
    "Send an email to the team saying the build is green.",
    "Set a timer for 10 minutes.",
    "Remind me in 45 minutes with a timer.",
    "How warm is it in Cairo?",
    "Write to alice@example.com: lunch tomorrow?",
    "Start a 3 minute timer for my tea.",
    "Weather in Tokyo in celsius, please.",
]


def valid(call: Any) -> bool:
    try:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    except (ValueError, KeyError, jsonschema.ValidationError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="A running service (default: start one).")
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        config = {"cache": {"enabled": False}, "observability": {"log_requests": False}}
        proc, base = start_configured("tools", config, Path(tempfile.mkdtemp(prefix="tools-")))
        url = f"{base}/v1"
    client = openai.OpenAI(base_url=url, api_key="unused")
    try:
        for choice, parallel in (("auto", True), ("required", True), ("required", False)):
            calls = good = cut = 0
            for ask in ASKS:
                reply = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": ask}], tools=TOOLS,
                    tool_choice=choice, parallel_tool_calls=parallel, max_tokens=160,
                    temperature=0,
                )  # fmt: skip
                made = reply.choices[0].message.tool_calls or []
                cut += reply.choices[0].finish_reason == "length"
                calls += bool(made)
                good += bool(made) and all(valid(c) for c in made)
            print(f"tool_choice {choice:>8}, parallel {parallel!s:>5}: {calls}/{len(ASKS)} "
                  f"answered with a call, {good}/{len(ASKS)} with a valid one, {cut} cut by "
                  "max_tokens (160)")  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
