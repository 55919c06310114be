"""Split a knowledge text into overlapping, token-bounded chunks with exact source offsets.

Retrieval works best when a chunk is about one topic, so cuts prefer paragraph breaks, then
sentence ends, and only then fall back to a word boundary. Consecutive chunks inside a
paragraph overlap by up to ``overlap_tokens`` so an answer that straddles a cut is still whole
in one chunk; a cut at a paragraph break needs no overlap. Offsets are kept so the UI can
highlight the source and ``text[c.start:c.end] == c.text`` always holds.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

DEFAULT_MAX_TOKENS = 192
"""Tuned on SQuAD: about 220 MiniLM word-pieces at most, inside its 256 window."""
DEFAULT_OVERLAP_TOKENS = 48
MIN_FILL = 0.5
"""A paragraph or sentence cut is taken only if the chunk keeps this share of ``max_tokens``."""
_MAX_PIECE_CHARS = 40
"""Longer whitespace-free runs (URLs, base64) are split so no unit exceeds the budget."""

_SPACE, _WORD = 1, 2
_ATOM_RE = re.compile(r"\w+|[^\w\s]")
_PARA_RE = re.compile(r"\n[^\S\n]*\n")
_SENT_END_RE = re.compile(r"[.!?…][\"'”’)\]]*(?=\s+[^\s a-z])")


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk: its position in the chunk list and its character span in the source."""

    idx: int
    start: int
    end: int
    text: str


def estimate_tokens(text: str) -> int:
    """Cheap token estimate: words plus punctuation marks (no tokenizer needed).

    Subword tokenizers give somewhat more (about 1.2x for English with MiniLM's WordPiece).
    """
    return len(_ATOM_RE.findall(text))


def _positions(pattern: re.Pattern[str], text: str, *, end: bool = False) -> np.ndarray:
    it = (m.end() if end else m.start() for m in pattern.finditer(text))
    return np.fromiter(it, dtype=np.int64)


@cache
def _bmp_classes() -> np.ndarray:
    """Class of every BMP code point as Python's ``re`` sees it: 0 other, 1 space, 2 word."""
    chars = "".join(map(chr, range(0x10000)))
    table = np.zeros(0x10000, dtype=np.uint8)
    table[[m.start() for m in re.finditer(r"\s", chars)]] = _SPACE
    table[[m.start() for m in re.finditer(r"\w", chars)]] = _WORD
    return table


def _classes(text: str) -> np.ndarray:
    """Per-character class array (see ``_bmp_classes``), vectorised for long texts."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    small = cp < 0x10000
    cls = np.zeros(len(cp), dtype=np.uint8)
    cls[small] = _bmp_classes()[cp[small]]
    if not small.all():
        big, inv = np.unique(cp[~small], return_inverse=True)
        word = np.array([re.match(r"\w", chr(c)) is not None for c in big.tolist()])
        cls[~small] = np.where(word[inv], _WORD, 0)
    return cls


def _units(cls: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of whitespace-free runs, long runs cut into short pieces."""
    piece = max(1, min(_MAX_PIECE_CHARS, max_tokens))
    solid = np.concatenate([[False], cls != _SPACE, [False]]).astype(np.int8)
    edges = np.diff(solid)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    extra = (ends - starts - 1) // piece
    if extra.any():
        first = np.repeat(starts, extra)
        k = np.arange(len(first)) - np.repeat(np.cumsum(extra) - extra, extra) + 1
        cuts = first + k * piece
        starts = np.sort(np.concatenate([starts, cuts]))
        ends = np.sort(np.concatenate([ends, cuts]))
    return starts, ends


def _unit_tokens(
    text: str,
    cls: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    count: Callable[[str], int] | None,
) -> np.ndarray:
    """Tokens per unit; summing them never undercounts a span of whole units."""
    if count is None:  # atoms of _ATOM_RE: a run of word characters, or one other mark
        prev = np.concatenate([[_SPACE], cls[:-1]])
        atom = (cls == 0) | ((cls == _WORD) & (prev != _WORD))
        cum = np.concatenate([[0], np.cumsum(atom)])
        mid_word = atom[starts] == 0  # a piece of a long run that starts inside a word
        return np.maximum(cum[ends] - cum[starts] + mid_word, 1)
    memo: dict[str, int] = {}
    out = np.empty(len(starts), dtype=np.int64)
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        word = text[a:b]
        c = memo.get(word)
        if c is None:
            c = memo[word] = max(1, int(count(word)))
        out[i] = c
    return out


def _boundaries(text: str, starts: np.ndarray, ends: np.ndarray) -> tuple[list[int], list[int]]:
    """Unit indices that begin a paragraph, and those that begin a sentence or a line."""
    n = len(starts)

    def after(pos: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(starts, pos, side="right")
        return idx[(idx > 0) & (idx < n)]

    para = np.unique(after(_positions(_PARA_RE, text)))
    lines = after(_positions(re.compile("\n"), text))
    sent_ends = _positions(_SENT_END_RE, text, end=True)
    hit = np.searchsorted(ends, sent_ends)
    ok = hit < n
    hit, sent_ends = hit[ok], sent_ends[ok]
    sent = hit[ends[hit] == sent_ends] + 1
    sent = sent[sent < n]
    sent = sent[starts[sent] > ends[sent - 1]]  # a split long run is not a sentence break
    return para.tolist(), np.unique(np.concatenate([para, lines, sent])).tolist()


def _last_in(sorted_idx: list[int], lo: int, hi: int) -> int | None:
    """Largest value in ``[lo, hi]`` or None."""
    j = bisect_right(sorted_idx, hi) - 1
    return sorted_idx[j] if j >= 0 and sorted_idx[j] >= lo else None


def _first_in(sorted_idx: list[int], lo: int, hi: int) -> int | None:
    """Smallest value in ``[lo, hi)`` or None."""
    j = bisect_left(sorted_idx, lo)
    return sorted_idx[j] if j < len(sorted_idx) and sorted_idx[j] < hi else None


def _pick(*options: int | None) -> int:
    """The first option that exists (the last one always does)."""
    return next(o for o in options if o is not None)


def chunk_text(
    text: str,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    count_tokens: Callable[[str], int] | None = None,
) -> list[ChunkSpan]:
    """Chunks covering every non-whitespace character of ``text``, in order.

    ``count_tokens`` (default :func:`estimate_tokens`) is called per whitespace-separated word
    (memoised; runs over 40 characters are split first) and summed, so with a real tokenizer
    the total is a slight overestimate; pass a counter without special tokens. Each chunk stays
    within ``max_tokens`` unless one such word alone exceeds it.
    """
    if max_tokens < 1 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError("need max_tokens >= 1 and 0 <= overlap_tokens < max_tokens")
    cls = _classes(text)
    starts, ends = _units(cls, max_tokens)
    n = len(starts)
    if n == 0:
        return []
    counts = _unit_tokens(text, cls, starts, ends, count_tokens)
    cum = np.concatenate([[0], np.cumsum(counts)])
    cum_l: list[int] = cum.tolist()
    para, sent = _boundaries(text, starts, ends)
    para_set = set(para)

    chunks: list[ChunkSpan] = []
    s, prev_cut = 0, 0
    while True:
        fit = bisect_right(cum_l, cum_l[s] + max_tokens) - 1  # units [s, fit) fit the budget
        hard = min(n, max(fit, s + 1, prev_cut + 1))
        if hard == n:
            cut = n
        else:
            lo = max(bisect_left(cum_l, cum_l[s] + MIN_FILL * max_tokens), prev_cut + 1, s + 1)
            cut = _pick(_last_in(para, lo, hard), _last_in(sent, lo, hard), hard)
        a, b = int(starts[s]), int(ends[cut - 1])
        chunks.append(ChunkSpan(len(chunks), a, b, text[a:b]))
        if cut == n:
            return chunks
        if cut in para_set or overlap_tokens == 0:
            s = cut
        else:
            first = max(bisect_left(cum_l, cum_l[cut] - overlap_tokens), s + 1)
            nxt = _pick(_first_in(para, first, cut), _first_in(sent, first, cut), first)
            # the next chunk must reach past this cut within its own budget
            s = min(cut, max(nxt, bisect_left(cum_l, cum_l[cut + 1] - max_tokens)))
        prev_cut = cut
