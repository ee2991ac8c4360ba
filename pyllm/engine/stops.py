"""Stop strings matched across token boundaries, and never emitted.

Text arrives in deltas (from the incremental detokenizer). A stop string may straddle deltas, so
the checker keeps the whole text and holds back the tail that could still be the start of a stop
string; what it releases is final. When a stop string appears, the text is cut just before it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringChecker:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""  # everything generated so far (cut at a stop once found)
        self._released = 0  # how much of `text` has been handed out
        self.stopped = False

    def add(self, delta: str) -> str:
        """Feed new text; returns the text that is now safe to show."""
        if self.stopped or not delta:
            return ""
        start = max(0, len(self.text) - self._hold)
        self.text += delta
        if self.stops:
            hit = self._find(start)
            if hit is not None:
                self.text = self.text[:hit]
                self.stopped = True
                return self._release(len(self.text))
            return self._release(max(self._released, len(self.text) - self._hold))
        return self._release(len(self.text))

    def flush(self) -> str:
        """At the end of generation: release whatever was held back."""
        return self._release(len(self.text))

    def _find(self, start: int) -> int | None:
        best = None
        for s in self.stops:
            i = self.text.find(s, start)
            if i != -1 and (best is None or i < best):
                best = i
        return best

    def _release(self, upto: int) -> str:
        out = self.text[self._released : upto]
        self._released = max(self._released, upto)
        return out
