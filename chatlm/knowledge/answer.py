"""Extractive answers about loaded texts: which requests get one, the sentence that supports a
copied span, how the reply reads, and how a decline reads. Pure functions (no model, no torch).

A factoid question gets a short span copied from the passages (copy-constrained decoding in the
engine), its citation [n] and the supporting sentence quoted; a request to summarise, explain or
compare gets a free-form grounded answer instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from chatlm.prompts import NOT_FOUND

OPEN_ENDED = re.compile(
    r"^\s*(please\s+)?(summari[sz]e|summary|explain|describe|compare|contrast|discuss|analy[sz]e|"
    r"write|draft|list|outline|tell me (about|more)|give me (an? )?(overview|summary)|"
    r"why|how (do|does|did|can|could|would|should|is|are)\b|what (do|does) .* (think|mean)|"
    r"what are the (main|key)|in what ways|"
    r"(is|are|was|were|do|does|did|can|could|will|would|should|has|have|had)\b)",
    re.IGNORECASE)
FACTOID_START = re.compile(
    r"^\s*(who|whom|whose|what|which|when|where|how (many|much|long|old|far|often|big)|"
    r"in (what|which)|on (what|which)|at (what|which)|from (what|which)|name)\b",
    re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def is_factoid(request: str) -> bool:
    """A question a short phrase of the text answers (who, what, when, how many …), not a request
    for a summary, an explanation or a comparison."""
    text = request.strip()
    if not text or OPEN_ENDED.match(text) or len(text.split()) > 40:
        return False
    return bool(FACTOID_START.match(text)) or text.endswith("?")


def question_words(question: str) -> list[str]:
    """The question's words: a copied span may not start with one (that is an echo)."""
    return sorted({w.lower() for w in re.findall(r"\w+", question)})


@dataclass(frozen=True)
class Support:
    """A sentence of a numbered passage (offsets in the passage's text): where a span is copied from."""

    number: int
    document: str
    sentence: str
    start: int
    end: int


def sentences(passages: Sequence[tuple[int, str, str]]) -> list[Support]:
    """Every sentence of the numbered passages ``(n, document, text)``, with its offsets."""
    out: list[Support] = []
    for number, document, text in passages:
        start = 0
        for m in [*_SENTENCE_END.finditer(text), None]:
            end = m.start() if m is not None else len(text)
            piece = text[start:end]
            if piece.strip():
                lead = len(piece) - len(piece.lstrip())
                out.append(Support(number=number, document=document, sentence=piece.strip(),
                                   start=start + lead, end=start + lead + len(piece.strip())))
            if m is not None:
                start = m.end()
    return out


def find_support(span: str, candidates: Sequence[Support]) -> Support | None:
    """The first candidate sentence that holds ``span``."""
    needle = short_form(span).lower()
    if not needle:
        return None
    return next((c for c in candidates if needle in c.sentence.lower()), None)


def short_form(span: str) -> str:
    """The span as the answer reads: without the sentence's closing punctuation."""
    return span.strip().rstrip(".,;:").strip()


def answer_text(span: str, support: Support) -> str:
    """The reply: the short answer, its citation, and the sentence that proves it."""
    return f"{short_form(span)} [{support.number}]\n\n> “{support.sentence}”"


def decline_text(closest: tuple[int, str, str] | None) -> str:
    """The reply when the text does not say: plainly, with the closest passage to look at."""
    if closest is None:
        return NOT_FOUND
    number, document, text = closest
    snippet = " ".join(text.split())
    snippet = snippet if len(snippet) <= 240 else snippet[:239].rstrip() + "…"
    return f"{NOT_FOUND} The closest passage is [{number}] ({document}):\n\n> “{snippet}”"
