"""Incremental detokenisation: UTF-8-safe text deltas and stop strings."""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """Turns a growing list of token ids into text deltas.

    A delta never ends inside a multi-byte character (a trailing U+FFFD is held back until the
    next token completes it) nor with text that could be the start of a stop string. When a
    stop string appears, the text is cut right before it and :attr:`stopped` becomes True.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = [s for s in stop_strings if s]
        self._ids: list[int] = []
        self.text = ""
        self.stopped = False

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the text that is now safe to show."""
        self._ids.extend(token_ids)
        full = self._decode()
        cut = self._stop_at(full)
        if cut is not None:
            self.stopped = True
            return self._advance(full[:cut])
        safe = full.rstrip("\ufffd")
        return self._advance(safe[: len(safe) - self._partial_stop(safe)])

    def flush(self) -> str:
        """The held-back remainder at the end of generation."""
        return "" if self.stopped else self._advance(self._decode())

    def _decode(self) -> str:
        return self._tokenizer.decode(self._ids, skip_special_tokens=True)

    def _advance(self, upto: str) -> str:
        if not upto.startswith(self.text):  # a tokenizer rewrote earlier text: show only what is new
            common = 0
            for a, b in zip(upto, self.text, strict=False):
                if a != b:
                    break
                common += 1
            self.text = self.text[:common]
        delta = upto[len(self.text) :]
        self.text = upto if len(upto) >= len(self.text) else self.text
        return delta

    def _stop_at(self, full: str) -> int | None:
        if not self._stops:
            return None
        start = max(0, len(self.text) - max(map(len, self._stops)))
        hits = [i for s in self._stops if (i := full.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
