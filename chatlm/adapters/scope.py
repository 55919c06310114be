"""What a corrections round answers: the questions it was taught, and which adapter answers the rest.

A round on a handful of written corrections must move the model hard to learn them (``trainer.
CORRECTIONS_LR``), and that changed what nobody corrected: after 20 chat corrections, "What is the
capital of France?" came back "L'Ami Bene." (``bench/corrections.py chat``). So such an adapter is
served only to questions close to the ones it was taught, as the reader is served only to questions
about a text; every other question is answered by the adapter it continued from (its parent, or
the base model), as before the round. The scope is a file beside the adapter's weights, so it goes
wherever the adapter goes (the registry, the QA harness, a copy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatlm.chat.prompts import split_grounded

FILE = "taught.json"
NEAR = 0.84
"""MiniLM cosine from which a question counts as one the adapter was taught. Calibrated by
``bench/calibrate_scope.py`` on the SQuAD *training* sample (never reported on): for a question and
50 other questions of the same article, the nearest of the 50 reaches this in 5 % of cases. So a
question the user did not rate is answered by a 50-question corrections adapter about 1 time in 20,
when it is about the same text; a rewording must be about this close to be answered as corrected
("What's my cat called?" is 0.90 from "What is the name of my cat?", "Who's my boss?" 0.73 from
"Who is my manager?")."""

Embed = Callable[[Sequence[str]], Any]
"""Texts -> their embeddings, one row each (the library's MiniLM)."""


@dataclass(frozen=True)
class Scope:
    questions: tuple[str, ...]
    """The questions the round trained on, as the user asked them."""
    falls_back_to: str | None
    """The adapter that answers every other question: the round's parent (None: the base model)."""
    passages: tuple[tuple[str, ...], ...] = ()
    """For each question about a text, the passages it was taught on (empty for a chat question):
    the chat reads it again from these when its documents hold them, so the answer taught is there
    to copy (retrieval had missed the passage of 9 of 52 corrected answers on a training article)."""

    def save(self, folder: Path) -> None:
        text = json.dumps({"questions": list(self.questions), "falls_back_to": self.falls_back_to,
                           "passages": [list(p) for p in self.passages]}, ensure_ascii=False, indent=1)
        (folder / FILE).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> Scope | None:
        """The scope saved beside an adapter, or None: an adapter served to every question."""
        path = folder / FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(tuple(str(q) for q in data.get("questions") or ()), data.get("falls_back_to"),
                   tuple(tuple(str(t) for t in p) for p in data.get("passages") or ()))

    @classmethod
    def of(cls, prompts: Sequence[Sequence[dict[str, str]]], falls_back_to: str | None) -> Scope:
        """The scope of a round trained on these prompts: each question once, with the passages
        of its first prompt."""
        taught: dict[str, tuple[str, ...]] = {}
        for prompt in prompts:
            question, passages = _last_turn(prompt)
            taught.setdefault(question, passages)
        return cls(tuple(taught), falls_back_to, tuple(taught.values()))

    def passages_of(self, index: int) -> tuple[str, ...]:
        return self.passages[index] if index < len(self.passages) else ()


def _last_turn(prompt: Sequence[dict[str, str]]) -> tuple[str, tuple[str, ...]]:
    """The last user turn of a prompt: its question, and its passages' texts when it is about a text."""
    last = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    grounded = split_grounded(last)
    if grounded is None:
        return last.strip(), ()
    return grounded[0].strip(), tuple(text.strip() for _, _, text in grounded[1])


def asked(prompt: Sequence[dict[str, str]]) -> str:
    """The question a training prompt asked, as the user typed it (a question about a text is
    stored with its passages around it)."""
    return _last_turn(prompt)[0]


def rows(embed: Embed, texts: Sequence[str]) -> Any:
    """The texts' embeddings as unit rows (none: an empty array), so a product is a cosine."""
    import numpy as np

    from chatlm.knowledge.index import normalise_rows

    return normalise_rows(np.asarray(embed(list(texts)))) if texts else np.empty((0, 0), dtype=np.float32)


def nearest(question: Any, taught: Any) -> int | None:
    """The taught question (its index) close enough to a question (unit rows) for the adapter
    taught it to answer; None when none is."""
    if not len(taught):
        return None
    sims = taught @ question
    best = int(sims.argmax())
    return best if float(sims[best]) >= NEAR else None


def near(question: Any, taught: Any) -> bool:
    """Whether a question (a unit row) is close enough to one of the taught ones (unit rows) for
    the adapter taught them to answer it."""
    return nearest(question, taught) is not None


def near_each(embed: Embed, questions: Sequence[str], taught: Any) -> list[bool]:
    """For each question, whether an adapter taught the questions whose unit rows are ``taught``
    answers it."""
    return [near(row, taught) for row in rows(embed, questions)]
