"""Incremental detokenisation that never emits half a character, and stop-string matching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    A byte-level BPE token can end in the middle of a UTF-8 character; decoding it alone gives
    U+FFFD. Like vLLM and nanochat, we hold such a tail back until the next token completes it.
    """

    def __init__(self, tokenizer: Detokenizer, *, prompt_tail: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self.ids: list[int] = list(prompt_tail)
        self._prefix = 0
        self._read = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        prefix_text = self._tok.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        new_text = self._tok.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)
            return delta
        return ""


class StopMatcher:
    """Finds stop strings across deltas and holds back text that might start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add generated text; return what is safe to show now."""
        if self.stopped:
            return ""
        self.text += delta
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.stopped = True
            return self.flush()
        safe_end = max(self._emitted, len(self.text) - self._hold)
        out = self.text[self._emitted : safe_end]
        self._emitted = safe_end
        return out

    def flush(self) -> str:
        """Everything not yet emitted (at the end of generation)."""
        out = self.text[self._emitted :]
        self._emitted = len(self.text)
        return out
