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

from chatlm.chat.prompts import NOT_FOUND

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
_NOT_AN_END = re.compile(
    r"(?:^|[\s(\"“])(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Mt|Ft|Jr|Sr|Gen|Col|Maj|Lt|Capt|Cmdr|Sgt|Rev|Hon|Gov|Sen|"
    r"Rep|Fr|vs|e\.g|i\.e|cf|approx|ca|[A-Z])\.$")
"""A full stop that ends a title or an initial ("Mr.", "Dr.", "J."), not a sentence: "his daughter,
Dr. Madeleine Swann" is one sentence, or the answer is cut to "his daughter, Dr"."""
COPY_SENTENCES = 1
"""Sentences (best agreement with the question first) the base model's extractive answer may copy from."""
SURE_SPAN = -0.5
"""A reader copies from every sentence of its passages but keeps to the best-agreeing one unless it
is sure of a span elsewhere (its first token's log-probability at least this, p >= 0.6: an answer a
round taught it); and such a span stands although question and sentence agree less than the decline
threshold. Calibrated on the calibration split (``bench/calibrate_reader.py --rule``): the most
permissive value that lowers neither has-answer F1 nor no-answer accuracy there (it raised F1
26.4 -> 28.5)."""
SURE_DECLINE = 2.0
"""A reader declines although the sentence agrees when ``decline_score`` (log p(decline) minus log
p(any span start)) is at least this: a decline it was taught. The lowest value that changes no
answer on the calibration split (``bench/calibrate_reader.py --rule``)."""

TAUGHT_SPAN = SURE_SPAN
TAUGHT_DECLINE = 1.25
"""The same two overrides for a question a corrections round was taught (``chatlm.adapters.scope``):
it declines a little sooner. Calibrated by ``bench/calibrate_taught.py`` on a round on the SQuAD
*training* sample (Spectre: 41 of 51 corrections learnt against 39 with the reader's pair, as many
liked answers kept); 0.75 to 1.25 learnt as many, the value nearest the reader's is kept."""


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
        ends = [m for m in _SENTENCE_END.finditer(text)
                if not _NOT_AN_END.search(text, max(0, m.start() - 12), m.start())]
        for m in [*ends, None]:
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


def declines(support_score: float, threshold: float, *, decline_score: float | None = None,
             span_logprob: float | None = None, sure_span: float = SURE_SPAN,
             sure_decline: float = SURE_DECLINE, taught: bool = False) -> bool:
    """Whether an extractive answer is the decline: question and sentence agree less than the
    calibrated threshold (``CHATLM_ABSTAIN_THRESHOLD``), unless a reader is sure of its span; or a
    reader is sure the text does not say (a decline it was taught). ``decline_score`` is None for
    a model that is not a reader: the agreement alone decides. ``taught``: a question a corrections
    round was taught, judged with ``TAUGHT_SPAN`` and ``TAUGHT_DECLINE``. The one rule the chat
    serves and ``bench/calibrate_reader.py`` and ``bench/calibrate_taught.py`` replay."""
    if taught:
        sure_span, sure_decline = TAUGHT_SPAN, TAUGHT_DECLINE
    agreed = support_score >= threshold
    if decline_score is None:
        return not agreed
    if decline_score >= sure_decline:
        return True
    return not (agreed or (span_logprob is not None and span_logprob >= sure_span))
