"""SQuAD v2 loading and the official scoring rules, used to benchmark knowledge-text answers.

Scoring follows the official ``evaluate-v2.0.py`` exactly, so figures compare with published ones:
answers are normalised (lower case, no punctuation, no articles, single spaces), exact match and
token F1 take the best gold answer, and a question without an answer is right only when the
prediction is empty.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


@dataclass(frozen=True)
class Question:
    """One question; ``answers`` is empty when ``is_impossible`` (the gold answer is "")."""

    id: str
    question: str
    answers: list[str]
    is_impossible: bool
    paragraph_index: int


@dataclass(frozen=True)
class Article:
    """One Wikipedia article: its paragraphs and the questions asked about them."""

    title: str
    paragraphs: list[str]
    questions: list[Question]

    @property
    def text(self) -> str:
        """The paragraphs joined by blank lines: the article as one knowledge text."""
        return "\n\n".join(self.paragraphs)


def load_squad(path: str | Path) -> list[Article]:
    """Articles of a SQuAD v1.1/v2.0 JSON file; duplicate gold answers are kept once, in order."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    articles = []
    for art in data["data"]:
        paragraphs: list[str] = []
        questions: list[Question] = []
        for p_idx, par in enumerate(art["paragraphs"]):
            paragraphs.append(par["context"])
            for qa in par["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                impossible = bool(qa.get("is_impossible", False))
                questions.append(
                    Question(
                        qa["id"], qa["question"], [] if impossible else answers, impossible, p_idx
                    )
                )
        articles.append(Article(art["title"], paragraphs, questions))
    return articles


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official rule)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def _golds(golds: Sequence[str]) -> list[str]:
    """Official rule: gold answers that normalise to nothing are dropped; none left means ""."""
    kept = [g for g in golds if normalize_answer(g)]
    return kept or [""]


def _exact_one(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def _f1_one(gold: str, pred: str) -> float:
    gold_toks, pred_toks = _tokens(gold), _tokens(pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 if ``pred`` equals any gold answer after normalisation; ``golds=[]`` means no answer."""
    return max(_exact_one(g, pred) for g in _golds(golds))


def f1(pred: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 of ``pred`` against the gold answers (official rule)."""
    return max(_f1_one(g, pred) for g in _golds(golds))


def answer_in_chunks(
    answers: Sequence[str], chunk_texts: Sequence[str], *, normalized: bool = False
) -> bool:
    """Whether any gold answer occurs in any chunk: the usual retrieval-recall test.

    The default compares raw, case-sensitive substrings (as in most SQuAD retrieval papers);
    ``normalized=True`` compares :func:`normalize_answer` forms as whole words instead, which
    forgives case, punctuation and article differences.
    """
    golds = [a for a in answers if a.strip()]
    if normalized:
        golds = [f" {g} " for g in map(normalize_answer, golds) if g]
        chunk_texts = [f" {normalize_answer(c)} " for c in chunk_texts]
    return any(g in c for g in golds for c in chunk_texts)
