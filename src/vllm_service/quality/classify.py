"""Content classes (viral hook, technical, code, creative) from a prompt's words.

Each class has a keyword list (config ``quality.class_keywords``); a prompt belongs to the class
whose words it contains most, ties broken in the order code, viral_hook, creative, technical,
and a prompt with none is ``technical`` (explanations are the common case). Its accuracy on the
hand-labelled set is reported by benchmarks/quality_agreement.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vllm_service.config.quality import ContentClass

_TIE_ORDER: tuple[ContentClass, ...] = ("code", "viral_hook", "creative", "technical")
DEFAULT_CLASS: ContentClass = "technical"


class Classifier:
    def __init__(self, keywords: Mapping[ContentClass, Sequence[str]]) -> None:
        self._keywords = {c: tuple(w.casefold() for w in words) for c, words in keywords.items()}

    def classify(self, prompt: str) -> ContentClass:
        text = f" {prompt.casefold()} "
        if "```" in text:
            return "code"
        best: ContentClass = DEFAULT_CLASS
        best_hits = 0
        for cls in _TIE_ORDER:
            hits = sum(1 for word in self._keywords.get(cls, ()) if word in text)
            if hits > best_hits:
                best, best_hits = cls, hits
        return best
