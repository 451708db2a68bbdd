"""Turning a sequence's token pieces into the text a client sees.

Bytes become text only once they form whole UTF-8 characters (a token may end inside one),
and text that could be the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TextStep:
    """Text safe to send now, and whether a stop string has just ended the sequence."""

    text: str
    stopped: bool = False


class TextOutput:
    """Incremental UTF-8 decoding plus stop-string detection for one sequence."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self._max_hold = max((len(s) for s in self._stop), default=0)
        self.stopped = False

    def push(self, piece: bytes) -> TextStep:
        """Add one token's bytes; returns the text that can be released."""
        if self.stopped:
            return TextStep("", stopped=True)
        text = self._held + self._decoder.decode(piece)
        if not self._stop:
            self._held = ""
            return TextStep(text)
        cut = self._find_stop(text)
        if cut is not None:
            self._held = ""
            self.stopped = True
            return TextStep(text[:cut], stopped=True)
        hold = self._partial_stop_suffix(text)
        self._held = text[len(text) - hold :] if hold else ""
        return TextStep(text[: len(text) - hold])

    def finish(self) -> str:
        """The sequence ended without a stop string: release everything held."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _find_stop(self, text: str) -> int | None:
        positions = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        return min(positions) if positions else None

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        for length in range(min(len(text), self._max_hold - 1), 0, -1):
            tail = text[-length:]
            if any(s.startswith(tail) for s in self._stop):
                return length
        return 0
