"""How the QA harness reads and scores an answer: cleaning it, when it counts as "no answer"
(``AbstainRule``), one question's ``Record`` and the official SQuAD v2 figures over many
(``score``). Split from the harness (``chatlm.evaluation.qa``), which asks the questions; a
round's own evaluation (``chatlm.evaluation.heldout``) cleans answers the same way.

All figures are fractions in [0, 1] (the official script prints percentages).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from chatlm.chat.prompts import NOT_FOUND
from chatlm.knowledge.squad import exact_match, f1, normalize_answer

ABSTAIN_MARKERS = tuple(
    normalize_answer(s)
    for s in (
        NOT_FOUND, "could not find", "couldn't find", "cannot find", "can't find", "can not find",
        "not found in", "do not contain the answer", "does not contain the answer",
        "not mentioned in the passage", "no answer",
    )
)
"""Normalised phrases that mark an answer as the model declining (the prompt asks for NOT_FOUND)."""

_TRAILING_CITES = re.compile(r"(?:\s*\[\s*\d+(?:\s*[,;-]\s*\d+)*\s*\])+\s*$")
_LEADING_CITES = re.compile(r"^(?:\[\s*\d+(?:\s*[,;-]\s*\d+)*\s*\]\s*)+")
_LEADING_LABEL = re.compile(
    r"^(?:the\s+)?(?:(?:short|shortest|exact|final)\s+)*(?:answer|phrase)"
    r"(?:\s+(?:to|for)\s+(?:this|the|your)\s+question)?\s*(?:is\s*:?|:)\s*(?:that\s+)?",
    re.IGNORECASE,
)
"""A label the small model puts before its answer ("The answer to this question is: ...")."""
_QUOTES = "\"'`“”‘’«»"
_STOPWORDS = (
    "a an the of in on at to for from by with and or but is are was were be been being do does did has have had "
    "what which who whom whose when where why how that this these those it its as into than then there their "
    "they he she his her him them i we you not no"
)
STOPWORDS = frozenset(_STOPWORDS.split())
"""Words that add nothing to an answer (articles, auxiliaries, prepositions, pronouns, wh-words)."""


# ---- predictions ------------------------------------------------------------------------------
def is_abstention(text: str) -> bool:
    """Whether an answer declines: it contains NOT_FOUND or a close variant, once normalised."""
    norm = f" {normalize_answer(text)} "
    return any(f" {m} " in norm for m in ABSTAIN_MARKERS)


def clean_answer(text: str) -> str:
    """The prediction to score: "" for an abstention, else the first line without labels,
    citation markers like ``[1]``, surrounding quotes and trailing periods."""
    s = text.strip()
    if not s or is_abstention(s):
        return ""
    s = next(line for line in s.splitlines() if line.strip()).strip()
    previous = None
    while s != previous:
        previous = s
        s = _LEADING_LABEL.sub("", s)
        s = _TRAILING_CITES.sub("", s)
        s = _LEADING_CITES.sub("", s)
        s = s.strip().rstrip(".;,:").strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1].strip()
        elif sum(ch in _QUOTES for ch in s) == 1 and (s[0] in _QUOTES or s[-1] in _QUOTES):
            s = s.strip(_QUOTES).strip()  # an unbalanced quote at one end
    return s


def supported(answer: str, passages: Iterable[str]) -> bool:
    """Whether the normalised answer occurs, as whole words, in one of the passages (verbatim)."""
    norm = normalize_answer(answer)
    if not norm:
        return True
    return any(f" {norm} " in f" {normalize_answer(p)} " for p in passages)


def new_words(answer: str, question: str) -> list[str]:
    """Content words of the answer that the question does not already contain: what it adds."""
    asked = set(normalize_answer(question).split())
    return [w for w in normalize_answer(answer).split() if w not in asked and w not in STOPWORDS]


def grounded(words: Sequence[str], passages: Iterable[str]) -> bool:
    """Whether every one of ``words`` occurs in the passages (normalised, as whole words)."""
    vocab = {w for p in passages for w in normalize_answer(p).split()}
    return all(w in vocab for w in words)


CHECKS = ("none", "echo", "grounded", "verbatim")
"""Answer checks, each stricter than the one before (see :class:`AbstainRule`)."""
DEFAULT_CHECK = "echo"
DEFAULT_MIN_DENSE = 0.5
"""Chosen on the first article of the SQuAD sample only (see bench/qa_eval.md): the most no-answer
accuracy for at most 3 points of answerable F1 there."""


@dataclass(frozen=True)
class AbstainRule:
    """How the harness turns a model answer into "no answer", besides the model saying NOT_FOUND.

    ``check``: ``none``; ``echo`` abstains when the answer adds no content word to the question
    ("France is a region of"); ``grounded`` also when a word it adds is not in the passages the model
    was shown (made up); ``verbatim`` when the whole answer is not copied from those passages.
    ``min_dense``: abstain when no chunk of the text reaches this cosine similarity to the question.
    """

    check: str = DEFAULT_CHECK
    min_dense: float | None = DEFAULT_MIN_DENSE

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}")

    def decide(self, record: Record) -> str | None:
        """The reason to abstain on this record, or None to keep its answer."""
        if record.error and not record.raw:
            return "error"
        if record.model_abstained:
            return "model"
        if not record.answer:
            return "empty"
        if self.min_dense is not None and record.top_dense is not None and record.top_dense < self.min_dense:
            return "min_dense"
        level = CHECKS.index(self.check)
        if level >= CHECKS.index("echo") and not record.new_words:
            return "echo"
        if level >= CHECKS.index("grounded") and not record.grounded:
            return "grounded"
        if level >= CHECKS.index("verbatim") and not record.supported:
            return "verbatim"
        return None

    def describe(self) -> str:
        parts = ["model"] + ([self.check] if self.check != "none" else [])
        if self.min_dense is not None:
            parts.append(f"min_dense={self.min_dense:g}")
        return "+".join(parts)


def variants(records: Sequence[Record], min_dense: float = DEFAULT_MIN_DENSE) -> list[dict[str, Any]]:
    """The abstention trade-off on the same answers: every check, without and with ``min_dense``."""
    rows = []
    for threshold in (None, min_dense):
        for check in CHECKS:
            rule = AbstainRule(check=check, min_dense=threshold)
            scored = [replace(r) for r in records]
            for r in scored:
                r.apply(rule)
            s = score(scored)
            rows.append({"rule": rule.describe(), **{k: s[k] for k in (
                "has_ans_f1", "has_ans_exact", "no_ans_accuracy", "f1", "exact_match", "has_ans_abstained")}})
    return rows


# ---- records and scores -----------------------------------------------------------------------
@dataclass
class Record:
    """One question: what was retrieved and asked, what came back, and how it was decided."""

    id: str
    article: str
    question: str
    answers: list[str]
    is_impossible: bool
    paragraph_index: int
    found: bool | None = None
    """Gold answer inside the top-k chunks (None for unanswerable questions)."""
    top_dense: float | None = None
    top_bm25: float | None = None
    raw: str = ""
    answer: str = ""
    """The cleaned answer before the abstention rule."""
    model_abstained: bool = False
    new_words: list[str] = field(default_factory=list)
    """Content words the answer adds to the question."""
    grounded: bool = True
    """Every added word occurs in the passages shown."""
    supported: bool = True
    """The whole answer occurs verbatim in the passages shown."""
    abstained_by: str | None = None
    prediction: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    em: float = 0.0
    f1: float = 0.0
    extractive: bool = False
    """Answered by the chat's extractive path (a copied span, or its decline)."""
    support_score: float | None = None
    """The extractive path's abstention signal: question-sentence agreement."""
    decline_score: float | None = None
    """A reader's first-token log p(decline) - log p(copy), when a reader answered."""
    span_logprob: float | None = None
    """log p of the copied span's first token (how sure the model was of it)."""
    span: str = ""
    """The copied span before the decline rule (what it would have answered)."""
    adapter: str | None = None
    """The adapter that answered (a corrections round answers only what it was taught)."""
    shown: list[str] = field(default_factory=list, repr=False)
    """Texts of the passages the model was shown (not written to the report)."""

    def apply(self, rule: AbstainRule) -> None:
        self.abstained_by = rule.decide(self)
        self.prediction = "" if self.abstained_by else self.answer
        self.em = exact_match(self.prediction, self.answers)
        self.f1 = f1(self.prediction, self.answers)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def score(records: Sequence[Record], *, generated: bool = True) -> dict[str, Any]:
    """Official SQuAD v2 figures (fractions) plus retrieval recall over answerable questions."""
    has = [r for r in records if not r.is_impossible]
    no = [r for r in records if r.is_impossible]
    out: dict[str, Any] = {
        "n_questions": len(records), "n_answerable": len(has), "n_unanswerable": len(no),
        "retrieval_recall_at_k": _mean([float(bool(r.found)) for r in has]),
    }
    if generated:
        out.update({
            "exact_match": _mean([r.em for r in records]),
            "f1": _mean([r.f1 for r in records]),
            "has_ans_exact": _mean([r.em for r in has]),
            "has_ans_f1": _mean([r.f1 for r in has]),
            "no_ans_accuracy": _mean([float(r.prediction == "") for r in no]),
            "has_ans_abstained": _mean([float(r.prediction == "") for r in has]),
            "abstained_by": _count(r.abstained_by for r in records if r.abstained_by),
            "errors": sum(1 for r in records if r.error),
            "support_auroc": auroc([r.support_score for r in has], [r.support_score for r in no]),
            "decline_auroc": auroc([-r.decline_score for r in has if r.decline_score is not None],
                                   [-r.decline_score for r in no if r.decline_score is not None]),
        })
    else:
        out.update(dict.fromkeys(("exact_match", "f1", "has_ans_exact", "has_ans_f1", "no_ans_accuracy"), None))
    return out


def auroc(positives: Sequence[float | None], negatives: Sequence[float | None]) -> float | None:
    """P(score of an answerable question > score of an unanswerable one), ties counting half."""
    pos = [p for p in positives if p is not None]
    neg = [n for n in negatives if n is not None]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 4)


def _count(items: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item)] = counts.get(str(item), 0) + 1
    return dict(sorted(counts.items()))


# ---- the run ----------------------------------------------------------------------------------
