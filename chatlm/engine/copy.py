"""Copy-constrained decoding: every token must continue a contiguous, word-aligned span of one of
the given passages, so the answer is a phrase copied from them.

A 135M model composes poor answers but can point: choosing a span of the passage is an easier task
than writing one. The constraint works on token ids only (no torch), so its logic is tested without
a model. Three traps found by measurement are built in: an answer may not start with an article
("The …" is where 60 % of spans would start otherwise); it starts and ends at word boundaries; and
because the first token of a reply carries no leading-space marker while the same word inside a
passage does, every word is also entered through its unspaced tokenisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ARTICLES = frozenset({"the", "a", "an"})
State = frozenset[tuple[int, int, int]]
"""Where the answer so far can continue: ``(kind, index, position)`` with kind 0 a passage (its
next token is ``passages[index][position]``) and kind 1 an entry (the unspaced first word of a
word start, ``entries[index]``)."""


@dataclass(frozen=True)
class _Entry:
    ids: tuple[int, ...]
    passage: int
    resume: int
    """Position in the passage right after the spaced word this entry stands for."""


@dataclass
class CopyConstraint:
    """Built once per answer from the passages' token ids; ``state`` moves with each token."""

    passages: list[list[int]]
    word_start: list[list[bool]]
    """Whether each passage token begins a word (a leading space or the passage's start)."""
    alnum_start: list[list[bool]]
    """Whether each passage token begins with a letter or digit (punctuation may end a span)."""
    entries: list[_Entry]
    eos_ids: frozenset[int]
    no_start: frozenset[tuple[int, int]] = frozenset()
    """(passage, position) of word starts no span may begin at (articles, the question's words)."""
    decline_ids: tuple[int, ...] = ()
    """First tokens a decline may open with (scored by ``score_decline``, never a span's start)."""
    prefer: tuple[int, ...] = ()
    """Passages the answer keeps to (the best-agreeing sentence) unless the model is sure of a span
    that starts elsewhere: a first token outside them with log-probability at least ``sure``."""
    sure: float = float("inf")
    state: State | None = None
    """None before the first token: the answer may start at any word start."""
    _starts: dict[int, set[tuple[int, int, int]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for p, ids in enumerate(self.passages):
            for j, tok in enumerate(ids):
                if (self.word_start[p][j] and self.alnum_start[p][j] and (p, j) not in self.no_start):
                    self._starts.setdefault(tok, set()).add((0, p, j + 1))
        for e, entry in enumerate(self.entries):
            if entry.ids:
                self._starts.setdefault(entry.ids[0], set()).add((1, e, 1))
        self._preferred: frozenset[int] = frozenset(
            tok for tok, where in self._starts.items()
            if {index if kind == 0 else self.entries[index].passage for kind, index, _ in where} & set(self.prefer))

    @classmethod
    def build(cls, passages: Sequence[str], *, encode: Callable[[str], list[int]],
              token_text: Callable[[int], str], eos_ids: Iterable[int],
              avoid_first: Iterable[str] = (), decline: str = "", prefer: Sequence[int] = (),
              sure: float = float("inf")) -> CopyConstraint:
        """Tokenise each passage as it reads inside a prompt (words after the first carry their
        space) and each word once more without its space, for the reply's first token. No span
        starts with an article or with a word of ``avoid_first`` (the question's own words: a span
        that starts by repeating the question is an echo, not an answer)."""
        ids_list, starts, alnums, entries = [], [], [], []
        skipped: set[tuple[int, int]] = set()
        avoid = ARTICLES | {w.lower() for w in avoid_first}
        for p, text in enumerate(passages):
            ids = encode(" " + text.strip())
            pieces = [token_text(t) for t in ids]
            word = [j == 0 or piece[:1].isspace() or pieces[j - 1][-1:].isspace()
                    for j, piece in enumerate(pieces)]
            alnum = [piece.strip()[:1].isalnum() for piece in pieces]
            ids_list.append(ids)
            starts.append(word)
            alnums.append(alnum)
            for j in range(len(ids)):
                if not (word[j] and alnum[j]):
                    continue
                end = j + 1
                while end < len(ids) and not word[end] and pieces[end].strip()[:1].isalnum():
                    end += 1
                text_word = "".join(pieces[j:end]).strip()
                if text_word.lower() in avoid:
                    skipped.add((p, j))
                    continue
                if text_word:
                    entries.append(_Entry(tuple(encode(text_word)), p, end))
        decline_ids = tuple(encode(decline.strip())[:1]) if decline.strip() else ()
        return cls(passages=ids_list, word_start=starts, alnum_start=alnums, entries=entries,
                   eos_ids=frozenset(eos_ids), no_start=frozenset(skipped), decline_ids=decline_ids,
                   prefer=tuple(prefer), sure=sure)

    def first_allowed(self, logprobs: Sequence[float] | Any) -> list[int]:
        """The first step's allowed tokens given the model's unconstrained log-probabilities: the
        starts in the ``prefer`` passages, unless the model is ``sure`` of a start elsewhere."""
        allowed = self.allowed()
        if not self._preferred:
            return allowed
        inside = [t for t in allowed if t in self._preferred]
        outside = [t for t in allowed if t not in self._preferred]
        if not inside or (outside and max(float(logprobs[t]) for t in outside) >= self.sure):
            return allowed
        return inside

    def score_decline(self, logprobs: Sequence[float] | Any) -> float:
        """How much more the model wants to decline than to copy, from the first step's
        log-probabilities over the vocabulary: the decline's first token against every token a span
        may start with (``Generation.decline_score``)."""
        import math

        starts = [t for t in self._starts if t not in self.decline_ids]
        decline = max(float(logprobs[t]) for t in self.decline_ids)
        values = [float(logprobs[t]) for t in starts] or [-math.inf]
        top = max(values)
        copy = top + math.log(sum(math.exp(v - top) for v in values)) if top > -math.inf else -math.inf
        return decline - copy

    def allowed(self) -> list[int]:
        """Token ids that may come next (an end-of-turn id once the span may end here)."""
        if self.state is None:  # the decline's opening token is scored, never a span's start
            return sorted(set(self._starts).difference(self.decline_ids))
        out: set[int] = set()
        can_end = False
        for kind, index, pos in self.state:
            if kind == 1:
                entry = self.entries[index]
                if pos < len(entry.ids):
                    out.add(entry.ids[pos])
                    continue
                kind, index, pos = 0, entry.passage, entry.resume
            ids = self.passages[index]
            if pos < len(ids):
                out.add(ids[pos])
                if self.word_start[index][pos] or not self.alnum_start[index][pos]:
                    can_end = True
            else:
                can_end = True
        if can_end or not out:
            out |= self.eos_ids
        return sorted(out)

    def advance(self, token: int) -> None:
        """Follow the chosen token (an end-of-turn id ends the span; nothing to follow)."""
        if token in self.eos_ids:
            return
        if self.state is None:
            self.state = frozenset(self._starts.get(token, ()))
            return
        nxt: set[tuple[int, int, int]] = set()
        for kind, index, pos in self.state:
            if kind == 1:
                entry = self.entries[index]
                if pos < len(entry.ids):
                    if entry.ids[pos] == token:
                        nxt.add((1, index, pos + 1))
                    continue
                kind, index, pos = 0, entry.passage, entry.resume
            ids = self.passages[index]
            if pos < len(ids) and ids[pos] == token:
                nxt.add((0, index, pos + 1))
        self.state = frozenset(nxt)

