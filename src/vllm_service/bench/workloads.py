"""What a benchmark sends: synthetic prompts, a JSONL file, ShareGPT conversations, repeats.

Every workload is a seeded, endless sequence of requests: two runs with the same seed send the
same requests in the same order. Lengths of synthetic prompts are in words, which the usual
tokenizers turn into roughly as many tokens; the measures use the token counts the server
reports.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Plain English words: synthetic prompts are made of these, so any tokenizer handles them.
_WORDS = (  # noqa: SIM905 (one string reads better than a hundred quoted words)
    "time year people way day man thing woman life child world school state family "
    "student group country problem hand part place case week company system program "
    "question work government number night point home water room mother area money story "
    "fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office "
    "door health person art war history party result change morning reason research girl "
    "guy moment air teacher force education river mountain garden music light stone bread "
    "winter summer ocean forest"
).split()


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload: chat messages or a plain prompt, and its output length."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 128
    reference: str | None = None
    #: Index of the request this one repeats (repeated-prompt workloads), else None.
    repeat_of: int | None = None

    def body(self, model: str, *, ignore_eos: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "stream": True}
        out["stream_options"] = {"include_usage": True}
        if self.messages is not None:
            out["messages"] = self.messages
        else:
            out["prompt"] = self.prompt
        if ignore_eos:
            out["ignore_eos"] = True
        return out


@dataclass(frozen=True, slots=True)
class Length:
    """A length distribution: ``mean`` words/tokens, spread uniformly by ±``spread`` (0..1)."""

    mean: int
    spread: float = 0.0

    def draw(self, rng: random.Random) -> int:
        if self.spread <= 0:
            return self.mean
        low = max(1, round(self.mean * (1 - self.spread)))
        high = max(low, round(self.mean * (1 + self.spread)))
        return rng.randint(low, high)


@dataclass
class Workload:
    """A named, seeded source of requests."""

    name: str
    seed: int = 0
    chat: bool = True
    #: Synthetic lengths (also the output length of file prompts that do not give one).
    input_len: Length = field(default_factory=lambda: Length(128))
    output_len: Length = field(default_factory=lambda: Length(128))
    path: Path | None = None
    #: Share (0..1) of requests that repeat an earlier one (measures the caches).
    repeat_share: float = 0.0

    def requests(self) -> Iterator[BenchRequest]:
        rng = random.Random(self.seed)
        base = self._base(rng)
        sent: list[BenchRequest] = []
        while True:
            if sent and self.repeat_share > 0 and rng.random() < self.repeat_share:
                index = rng.randrange(len(sent))
                original = sent[index]
                yield BenchRequest(
                    original.messages,
                    original.prompt,
                    original.max_tokens,
                    original.reference,
                    repeat_of=index,
                )
                continue
            request = next(base)
            sent.append(request)
            yield request

    def _base(self, rng: random.Random) -> Iterator[BenchRequest]:
        if self.name == "synthetic":
            return self._synthetic(rng)
        if self.path is None:
            raise ValueError(f"the {self.name} workload needs a file (--dataset)")
        items = _load_sharegpt(self.path) if self.name == "sharegpt" else _load_jsonl(self.path)
        if not items:
            raise ValueError(f"{self.path} holds no usable requests")
        return self._from_items(items, rng)

    def _synthetic(self, rng: random.Random) -> Iterator[BenchRequest]:
        while True:
            words = " ".join(rng.choice(_WORDS) for _ in range(self.input_len.draw(rng)))
            text = f"Continue this text: {words}"
            yield self._make(text, self.output_len.draw(rng))

    def _from_items(
        self, items: list[dict[str, Any]], rng: random.Random
    ) -> Iterator[BenchRequest]:
        order = list(range(len(items)))
        while True:
            rng.shuffle(order)
            for i in order:
                item = items[i]
                max_tokens = int(item.get("max_tokens") or self.output_len.draw(rng))
                if "messages" in item:
                    yield BenchRequest(
                        messages=item["messages"],
                        max_tokens=max_tokens,
                        reference=item.get("reference"),
                    )
                else:
                    yield self._make(str(item["prompt"]), max_tokens, item.get("reference"))

    def _make(self, text: str, max_tokens: int, reference: str | None = None) -> BenchRequest:
        if self.chat:
            messages = [{"role": "user", "content": text}]
            return BenchRequest(messages=messages, max_tokens=max_tokens, reference=reference)
        return BenchRequest(prompt=text, max_tokens=max_tokens, reference=reference)


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of {"prompt": ...} or {"messages": [...]}, optional "reference", "max_tokens"."""
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if not isinstance(item, dict) or not ({"prompt", "messages"} & item.keys()):
            raise ValueError(f"{path}:{number}: each line needs 'prompt' or 'messages'")
        items.append(item)
    return items


def _load_sharegpt(path: Path) -> list[dict[str, Any]]:
    """ShareGPT conversations: the first human turn is the prompt; the reply sets the length."""
    data = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for conversation in data:
        turns = conversation.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human":
            continue
        reply = str(turns[1].get("value", ""))
        items.append(
            {
                "prompt": str(turns[0].get("value", "")),
                "reference": reply,
                "max_tokens": max(1, len(reply.split())),
            }
        )
    return items
